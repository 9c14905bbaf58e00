"""The RADIUS front: `pushauth radius`, push approval for VPNs, Citrix gateways and SSH (README: "Protect a
VPN or SSH with RADIUS")."""
