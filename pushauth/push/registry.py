"""Building the configured providers (the push worker's cleanup context owns them)."""

from __future__ import annotations

from pushauth.config import PushSettings
from pushauth.push.base import PushProvider


def open_providers(settings: PushSettings) -> dict[str, PushProvider]:
    """The enabled providers by name ("fcm", "apns"). Each reads its credentials once, here; a bad
    credential file is a ConfigError at start, not a failure at the first push."""
    providers: dict[str, PushProvider] = {}
    if settings.fcm.enabled:
        from pushauth.push.fcm import FcmProvider  # imported lazily: firebase-admin is heavy

        providers["fcm"] = FcmProvider.from_settings(settings.fcm)
    if settings.apns.enabled:
        from pushauth.push.apns import ApnsProvider

        providers["apns"] = ApnsProvider.from_settings(settings.apns)
    return providers


async def close_providers(providers: dict[str, PushProvider]) -> None:
    for provider in providers.values():
        await provider.aclose()
