"""The ratelimit package's Lua scripts (`lua/`), loaded once at import."""

from __future__ import annotations

from pushauth.store.scripts import Script

RATE_LIMIT = Script.load("pushauth.ratelimit", "rate_limit.lua")
RATE_AUTH_FAILURE = Script.load("pushauth.ratelimit", "rate_auth_failure.lua")
