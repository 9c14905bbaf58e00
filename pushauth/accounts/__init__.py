"""Accounts: user names (`users`), sign-in policy (`policy`) and what the security team does to an account:
lock, unlock, access codes, policy changes, the user view (`service`, `lua/`)."""
