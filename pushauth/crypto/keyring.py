"""The server's signing keys as seen by a running server: loaded at start, reloaded when `keys/` changes.

Several server instances share one keys folder. After `pushauth keys rotate` on any of them (or a deploy
that copies a new folder), each instance notices the changed keyring within `reload_interval_s` and
starts signing with the new key, while still verifying tokens made with the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from pushauth.config import KeySettings
from pushauth.crypto.keys import KeyRing, KeyStore
from pushauth.errors import KeyStoreError

log = structlog.get_logger(__name__)


class KeyRingHolder:
    def __init__(self, ring: KeyRing, store: KeyStore | None = None) -> None:
        self.ring = ring
        self._store = store
        self._fingerprint = store.fingerprint() if store else ""

    def __call__(self) -> KeyRing:
        return self.ring

    @classmethod
    def from_settings(cls, settings: KeySettings) -> KeyRingHolder:
        if settings.ephemeral:
            return cls(KeyRing.ephemeral())
        store = KeyStore(Path(settings.path))
        return cls(store.load(), store)

    def reload_if_changed(self) -> bool:
        if self._store is None:
            return False
        try:
            fp = self._store.fingerprint()
            if fp == self._fingerprint:
                return False
            ring = self._store.load()
        except KeyStoreError as exc:
            # Keep signing with the keys we have: a half-copied folder must not take the service down.
            log.error("keyring_reload_failed", error=str(exc))
            return False
        self.ring, self._fingerprint = ring, fp
        log.info("keyring_reloaded", current=ring.current.kid, keys=sorted(ring.keys))
        return True

    @contextlib.asynccontextmanager
    async def watching(self, interval_s: float) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await asyncio.to_thread(self.reload_if_changed)
                except Exception:  # the watcher must outlive any one bad read of the folder
                    log.exception("keyring_watch_failed")

        task = asyncio.create_task(loop()) if self._store else None
        try:
            yield
        finally:
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
