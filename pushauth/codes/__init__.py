"""Offline one-time codes (TOTP, RFC 6238): the arithmetic (`totp`), seeds sealed at rest (`seal`),
hardware-token files (`pskc`), settings (`settings`), the service every front calls (`service`) and its
Lua (`scripts`, `lua/`). PROTOCOL.md section 17."""
