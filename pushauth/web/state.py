"""Typed application state keys (aiohttp `AppKey`), shared by the factory and the handlers."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web

from pushauth.accounts.service import Accounts
from pushauth.alerts.delivery import DeadLetters
from pushauth.alerts.store import AlertStore
from pushauth.audit import Audit
from pushauth.challenges.events import ChallengeEvents
from pushauth.challenges.service import Challenges
from pushauth.codes.service import Codes
from pushauth.config import Settings
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.devices.service import Devices
from pushauth.netaddr import TrustedProxies
from pushauth.operators import Operators
from pushauth.ratelimit.limiter import RateLimiter
from pushauth.runtime import Runtime
from pushauth.web.auth import Credentials

RUNTIME = web.AppKey("runtime", Runtime)  # the composition root the services below come from
REDIS = web.AppKey("redis", aioredis.Redis)
SETTINGS = web.AppKey("settings", Settings)
CREDENTIALS = web.AppKey("credentials", Credentials)
KEYRING = web.AppKey("keyring", KeyRingHolder)
DEVICES = web.AppKey("devices", Devices)
CHALLENGES = web.AppKey("challenges", Challenges)
ALERTS = web.AppKey("alerts", AlertStore)
ACCOUNTS = web.AppKey("accounts", Accounts)
DEAD_LETTERS = web.AppKey("dead_letters", DeadLetters)
AUDIT = web.AppKey("audit", Audit)
PROXIES = web.AppKey("trusted_proxies", TrustedProxies)
LIMITER = web.AppKey("rate_limiter", RateLimiter)
CODES = web.AppKey("codes", Codes)
EVENTS = web.AppKey("events", ChallengeEvents)
OPERATORS = web.AppKey("operators", Operators)  # the console accounts (set up with the console)
