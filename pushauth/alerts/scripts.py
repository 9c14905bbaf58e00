"""The alerts package's Lua scripts (`lua/`), loaded once at import."""

from __future__ import annotations

from pushauth.store.scripts import Script

ACK_ALERT = Script.load("pushauth.alerts", "ack_alert.lua")
