"""TOTP seeds at rest: AES-256-GCM under a key-encryption key (KEK) kept beside the signing keys.

    keys/kek.json   {"version": 1, "current": kid, "keys": {kid: {"key": <base64 32 bytes>, "created_at"}}}
                    mode 0600, never committed (keys/.gitignore), written temp-file + fsync + os.replace

A sealed seed is the text `v1.<kid>.<base64url(nonce 12 bytes || ciphertext || tag)>`. The additional
authenticated data is `pushauth-otp-seed:v1:<uid>:<method id>`: a sealed seed copied onto another user's
method (or another method of the same user) does not open, so write access to Redis alone cannot move a
token from one account to another. `kid` is the first 16 hex digits of SHA-256 of the key: it says which
key opens a seed while a rotation is re-encrypting them, and nothing about the key.

Rotation (`pushauth keys rotate-kek`): a new key becomes current while the old ones stay in the file; every
seed is re-encrypted under it (pushauth/codes/service.py `reseal_all`); then the old keys are dropped. A
crash in between leaves a file that still opens every seed. Servers notice a changed file (its inode, mtime
and size) on their next use of a seed.

With `keys.ephemeral` (tests, the demo) the KEK is random and held in memory only, one per process (the
server and a RADIUS front in one process share it): seeds sealed by one process cannot be opened by
another, as signing keys made that way cannot be verified by another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pushauth.config import KeySettings
from pushauth.errors import KeyStoreError

KEK_FILE = "kek.json"
_VERSION = 1
_PREFIX = "v1"


class SealError(KeyStoreError):
    """A sealed seed that does not open: unknown key, tampered, or moved to another user or method."""


def _kid(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def _aad(uid: str, method_id: str) -> bytes:
    return f"pushauth-otp-seed:v1:{uid}:{method_id}".encode()


@dataclass(frozen=True, repr=False)
class KekRing:
    """The KEKs: `current` seals, every key opens. repr names the kids only."""

    current: str
    keys: dict[str, bytes]

    @classmethod
    def new(cls) -> KekRing:
        key = secrets.token_bytes(32)
        return cls(_kid(key), {_kid(key): key})

    def seal(self, secret: bytes, *, uid: str, method_id: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self.keys[self.current]).encrypt(nonce, secret, _aad(uid, method_id))
        blob = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
        return f"{_PREFIX}.{self.current}.{blob}"

    def open(self, sealed: str, *, uid: str, method_id: str) -> bytes:
        version, _, rest = sealed.partition(".")
        kid, _, blob = rest.partition(".")
        if version != _PREFIX or kid not in self.keys:
            raise SealError(f"a seed sealed under an unknown key-encryption key ({kid or '?'})")
        try:
            raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
            return AESGCM(self.keys[kid]).decrypt(raw[:12], raw[12:], _aad(uid, method_id))
        except (InvalidTag, ValueError, binascii.Error):
            raise SealError("a sealed seed does not open (tampered, or not this user's method)") from None

    def kid_of(self, sealed: str) -> str:
        return sealed.split(".", 2)[1] if sealed.count(".") >= 2 else ""

    def __repr__(self) -> str:
        return f"KekRing(current={self.current!r}, keys={sorted(self.keys)!r})"


class KekStore:
    """`keys/kek.json` on disk."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / KEK_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def stamp(self) -> tuple[int, int, int]:
        # every write is an os.replace: a new inode, so even a same-size write in the same tick is seen
        st = self.path.stat()
        return st.st_ino, st.st_mtime_ns, st.st_size

    def load(self) -> KekRing:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise KeyStoreError(f"no key-encryption key for TOTP seeds ({self.path}): run "
                                "`pushauth keys generate-kek`") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyStoreError(f"{self.path} is readable by group or others: chmod 600 {self.path}")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            keys = {kid: base64.b64decode(entry["key"], validate=True)
                    for kid, entry in data["keys"].items()}
            ring = KekRing(str(data["current"]), keys)
        except (OSError, ValueError, KeyError, TypeError, binascii.Error):
            raise KeyStoreError(f"{self.path} is not a key-encryption key file") from None
        if data.get("version") != _VERSION or ring.current not in keys or any(
                len(k) != 32 or _kid(k) != kid for kid, k in keys.items()):
            raise KeyStoreError(f"{self.path} is inconsistent (a key's id does not match it, or the current "
                                "key is missing)")
        return ring

    def save(self, ring: KekRing, created: dict[str, str] | None = None) -> None:
        created = created or {}
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data: dict[str, Any] = {"version": _VERSION, "current": ring.current, "keys": {
            kid: {"key": base64.b64encode(key).decode("ascii"), "created_at": created.get(kid, now)}
            for kid, key in ring.keys.items()}}
        tmp = self.path.with_name(f".{KEK_FILE}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def created_at(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {kid: str(entry.get("created_at", "")) for kid, entry in data["keys"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def generate(self) -> KekRing:
        if self.exists():
            raise KeyStoreError(f"{self.path} exists already: use `pushauth keys rotate-kek`")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ring = KekRing.new()
        self.save(ring)
        return ring

    def add_current(self) -> KekRing:
        """Phase one of a rotation: a new current key, the old ones kept so every seed still opens."""
        old = self.load()
        fresh = KekRing.new()
        ring = KekRing(fresh.current, {**old.keys, **fresh.keys})
        self.save(ring, self.created_at())
        return ring

    def drop_old(self) -> KekRing:
        """Phase two, once every seed is sealed under the current key."""
        ring = self.load()
        only = KekRing(ring.current, {ring.current: ring.keys[ring.current]})
        self.save(only, self.created_at())
        return only


_EPHEMERAL: list[KekRing] = []


def _process_ring() -> KekRing:
    if not _EPHEMERAL:
        _EPHEMERAL.append(KekRing.new())
    return _EPHEMERAL[0]


class KekHolder:
    """The KEKs a running server uses: loaded on first use (a server without TOTP methods needs no KEK
    file), and reloaded when the file changes (a rotation by the CLI, or on another host)."""

    def __init__(self, store: KekStore | None, ring: KekRing | None = None) -> None:
        self._store = store
        self._ring = ring
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: KeySettings) -> KekHolder:
        if settings.ephemeral:
            return cls(None, _process_ring())
        return cls(KekStore(Path(settings.path)))

    def ring(self) -> KekRing:
        if self._store is None:
            assert self._ring is not None
            return self._ring
        with self._lock:
            try:
                stamp = self._store.stamp()
            except FileNotFoundError:
                stamp = None
            if self._ring is None or stamp != self._stamp:
                self._ring = self._store.load()
                self._stamp = stamp
            return self._ring
