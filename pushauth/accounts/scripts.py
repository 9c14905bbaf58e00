"""The accounts package's Lua scripts (`lua/`), loaded once at import."""

from __future__ import annotations

from pushauth.store.scripts import Script

UNLOCK_USER = Script.load("pushauth.accounts", "unlock_user.lua")
USER_BLOCKS = Script.load("pushauth.accounts", "user_blocks.lua")
LOCK_USER = Script.load("pushauth.accounts", "lock_user.lua")
ISSUE_ACCESS_CODE = Script.load("pushauth.accounts", "issue_access_code.lua")
VERIFY_ACCESS_CODE = Script.load("pushauth.accounts", "verify_access_code.lua")
SET_POLICY = Script.load("pushauth.accounts", "set_policy.lua")
