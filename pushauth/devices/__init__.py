"""Devices: enrollment, a phone's registration and approval, push tokens, revocation, and the request gate
every signed phone request passes (`service`, `lua/`)."""
