"""The devices package's Lua scripts (`lua/`), loaded once at import."""

from __future__ import annotations

from pushauth.store.scripts import Script

DEVICE_GATE = Script.load("pushauth.devices", "device_gate.lua")
REGISTER_DEVICE = Script.load("pushauth.devices", "register_device.lua")
REVOKE_DEVICE = Script.load("pushauth.devices", "revoke_device.lua")
REVOKE_BY_DEVICE = Script.load("pushauth.devices", "revoke_by_device.lua")
ENROLL_MODE = Script.load("pushauth.devices", "enroll_mode.lua")
UPDATE_PUSH_TOKEN = Script.load("pushauth.devices", "update_push_token.lua")
PAUSE_PROMPTS = Script.load("pushauth.devices", "pause_prompts.lua")
