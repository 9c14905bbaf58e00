"""Settings of the sample login page (`[demo]`; the page itself is pushauth/web/demo_page.py).

Kept out of the web package so that pushauth/config.py, at the bottom of the layers, never imports it.
"""

from __future__ import annotations

import msgspec


class DemoSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Serve /demo/login, a relying party's sign-in page that creates prompts. Anyone who can reach it can
    # send a prompt to any enrolled user, so it is off unless someone is showing pushauth to somebody.
    enabled: bool = False
    # The id of the [[applications]] entry the page signs in to (it acts with that application's rights).
    application: str = ""

    def __post_init__(self) -> None:
        if self.enabled and not self.application:
            raise ValueError("application (an [[applications]] id) is required when the demo page is enabled")
