"""Server signing keys: ES256 (P-256) keys in a folder, with rotation.

Layout of the folder (default `keys/`):

    <kid>.pem       PKCS8 private key, mode 0600, one per *active* key
    keyring.json    {"version": 1, "current": kid, "keys": {kid: {"created_at", "status", "retired_at"?}}}
    .lock           flock target that serialises generate/rotate/retire

`kid` is the RFC 7638 thumbprint of the public key, so a file can be checked against its name and a kid
can never silently point at a different key. Rotation is two-phase on purpose: `rotate` makes a new key
current while old keys stay active (tokens they signed keep verifying); `retire` later removes an old key
once nothing it signed can still be in flight. Retired keys stay listed in keyring.json as an audit trail,
but their PEM is deleted because a private key nobody needs is only a liability.

Every file is written to a temp file in the same folder, fsynced and `os.replace`d, and the write order
keeps keyring.json from ever naming an active key whose PEM is missing: a crash leaves at worst an
orphan file, never a ring that will not load.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from pushauth.crypto.jws import ALG, InvalidJWS, thumbprint
from pushauth.errors import KeyStoreError

RING_FILE = "keyring.json"
LOCK_FILE = ".lock"
_VERSION = 1
# A SHA-256 thumbprint in base64url: also what makes a kid safe to use as a file name.
_KID = re.compile(r"[A-Za-z0-9_-]{43}")
_STATUSES = ("active", "retired")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, repr=False)
class ServerKey:
    """One signing key. `key` holds the private scalar, so repr/str show the kid only: a key object that
    ends up in a log line or a traceback must not leak the key."""

    kid: str
    key: ECKey
    created_at: datetime

    def public_jwk(self) -> dict[str, str]:
        """The public half as published in the JWKS (explicit members, so `d` can never slip in)."""
        pub = self.key.as_dict(private=False)
        return {"kty": "EC", "crv": "P-256", "x": str(pub["x"]), "y": str(pub["y"]),
                "kid": self.kid, "use": "sig", "alg": ALG}

    def __repr__(self) -> str:
        return f"ServerKey(kid={self.kid!r})"


@dataclass(frozen=True)
class KeyInfo:
    """What `pushauth keys list` shows; no key material, so it is safe to print."""

    kid: str
    status: str
    created_at: datetime
    retired_at: datetime | None
    current: bool


@dataclass(frozen=True, repr=False)
class KeyRing:
    """Immutable snapshot used by a running server: sign with `current`, verify with any active key.
    A reload builds a new ring and swaps the reference, so a request never sees a half-updated ring."""

    current: ServerKey
    keys: Mapping[str, ServerKey]

    def __post_init__(self) -> None:
        if self.keys.get(self.current.kid) is not self.current:
            raise ValueError("KeyRing.keys must contain the current key")
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """Public JWKS, current key first, then the others newest first."""
        others = sorted((k for k in self.keys.values() if k is not self.current),
                        key=lambda k: (k.created_at, k.kid), reverse=True)
        return {"keys": [k.public_jwk() for k in (self.current, *others)]}

    def verifying_key(self, kid: str) -> ECKey:
        """Key for a token header's kid. Unknown and retired kids fail the same way as a bad signature."""
        found = self.keys.get(kid)
        if found is None:
            raise InvalidJWS("unknown server key")
        return found.key

    @classmethod
    def ephemeral(cls) -> KeyRing:
        """One fresh in-memory key for the embedded demo and tests; nothing touches the disk."""
        key = ECKey.generate_key("P-256", private=True)
        server_key = ServerKey(thumbprint(key), key, _now())
        return cls(server_key, {server_key.kid: server_key})

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current.kid!r}, keys={sorted(self.keys)!r})"


class KeyStore:
    """The keys folder. Only the CLI changes it; servers `load` it and poll `fingerprint` to reload."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- changes (under the lock) ---------------------------------------------------------------------

    def generate(self) -> ServerKey:
        """Create the first key. Refuses if a ring exists, because replacing it would invalidate every
        token in flight; adding a key is what `rotate` is for."""
        with self._locked(exclusive=True):
            if (self.path / RING_FILE).exists():
                raise KeyStoreError(f"server keys already exist in {self.path}: use `pushauth keys rotate`")
            new = self._new_key()
            entry = {"created_at": _rfc3339(new.created_at), "status": "active"}
            self._write_ring({"version": _VERSION, "current": new.kid, "keys": {new.kid: entry}})
            return new

    def rotate(self) -> ServerKey:
        """Add a key and make it current. Older keys stay active so their tokens keep verifying."""
        with self._locked(exclusive=True):
            doc = self._read_ring()
            new = self._new_key()  # PEM first: keyring.json must never name a missing file
            doc["keys"][new.kid] = {"created_at": _rfc3339(new.created_at), "status": "active"}
            doc["current"] = new.kid
            self._write_ring(doc)
            return new

    def retire(self, kid: str) -> None:
        """Stop accepting tokens signed by `kid` and delete its private key; the entry stays for audit."""
        with self._locked(exclusive=True):
            doc = self._read_ring()
            entry = doc["keys"].get(kid)
            if entry is None:
                raise KeyStoreError(f"no key {kid!r} in {self.path}: see `pushauth keys list`")
            if entry["status"] == "retired":
                raise KeyStoreError(f"key {kid} is already retired")
            if kid == doc["current"]:
                raise KeyStoreError(f"key {kid} is the current signing key: run `pushauth keys rotate` first")
            entry.update(status="retired", retired_at=_rfc3339(_now()))
            self._write_ring(doc)  # ring first: a crash leaves an orphan PEM, not an active key without one
            (self.path / f"{kid}.pem").unlink(missing_ok=True)
            self._fsync_dir()

    # -- reads ----------------------------------------------------------------------------------------

    def list(self) -> list[KeyInfo]:
        """Every key ever made here, oldest first; empty if no ring exists yet."""
        if not (self.path / RING_FILE).exists():
            return []
        doc = self._read_ring()
        infos = [KeyInfo(kid, e["status"], _parse_ts(e["created_at"]),
                         _parse_ts(e["retired_at"]) if "retired_at" in e else None, kid == doc["current"])
                 for kid, e in doc["keys"].items()]
        return sorted(infos, key=lambda i: (i.created_at, i.kid))

    def load(self) -> KeyRing:
        """Load and check every active key. Takes a shared lock when it can (a read-only mount has no
        writer to wait for) so it never sees a ring whose retired PEM was deleted mid-read."""
        with self._locked(exclusive=False):
            doc = self._read_ring()
            keys = {kid: self._load_pem(kid, _parse_ts(e["created_at"]))
                    for kid, e in doc["keys"].items() if e["status"] == "active"}
        return KeyRing(keys[doc["current"]], keys)

    def fingerprint(self) -> str:
        """Changes whenever keyring.json is replaced (inode, mtime, size), so a server can poll it cheaply
        and reload only on change. Every change goes through os.replace, which gives a new inode."""
        try:
            st = os.stat(self.path / RING_FILE)
        except FileNotFoundError:
            return "absent"
        except OSError as exc:
            raise KeyStoreError(f"cannot stat {self.path / RING_FILE}: {exc.strerror}") from exc
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    # -- internals ------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        lock = self.path / LOCK_FILE
        fd: int | None = None
        if exclusive:
            try:
                self.path.mkdir(mode=0o700, parents=True)
                os.chmod(self.path, 0o700)  # mkdir's mode is filtered by the umask
            except FileExistsError:
                pass  # an existing folder is the operator's; only the files in it must be private
            except OSError as exc:
                raise KeyStoreError(f"cannot create {self.path}: {exc.strerror}") from exc
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise KeyStoreError(f"cannot lock {lock}: {exc.strerror}; is {self.path} writable?") from exc
        else:
            # No lock file (never generated here, or a mount without it) means no writer to wait for.
            with suppress(OSError):
                fd = os.open(lock, os.O_RDONLY)
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            if fd is not None:
                os.close(fd)

    def _read_ring(self) -> dict[str, Any]:
        ring = self.path / RING_FILE
        try:
            doc = json.loads(ring.read_bytes())
        except FileNotFoundError:
            raise KeyStoreError(f"no server keys in {self.path}: run `pushauth keys generate`") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot read {ring}: {exc.strerror}; check its owner and mode") from exc
        except ValueError as exc:
            raise KeyStoreError(f"{ring} is not valid JSON: restore it from a backup") from exc
        fix = f"{ring} is inconsistent; restore it from a backup"
        if (not isinstance(doc, dict) or doc.get("version") != _VERSION
                or not isinstance(doc.get("keys"), dict)):
            raise KeyStoreError(f"{fix} (expected version {_VERSION} with a keys object)")
        for kid, e in doc["keys"].items():
            if not (_KID.fullmatch(kid) and isinstance(e, dict) and e.get("status") in _STATUSES
                    and isinstance(e.get("created_at"), str) and isinstance(e.get("retired_at", ""), str)):
                raise KeyStoreError(f"{fix} (bad entry for key {kid!r})")
        current = doc["keys"].get(doc.get("current"))
        if current is None or current["status"] != "active":
            raise KeyStoreError(f"{fix} (current key {doc.get('current')!r} is missing or not active)")
        return doc

    def _load_pem(self, kid: str, created_at: datetime) -> ServerKey:
        pem = self.path / f"{kid}.pem"
        try:
            st = os.stat(pem)
            if st.st_mode & 0o077:
                raise KeyStoreError(f"{pem} is accessible to group/others "
                                    f"(mode {stat.filemode(st.st_mode)}): chmod 600 {pem}")
            data = pem.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(f"key {kid} is active but {pem} is missing: restore it from a backup, "
                                f"or rotate and `pushauth keys retire {kid}`") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot read {pem}: {exc.strerror}; check its owner and mode") from exc
        try:
            key = ECKey.import_key(data)
        except (JoseError, ValueError, TypeError) as exc:
            raise KeyStoreError(f"{pem} is not an unencrypted EC private key in PEM: "
                                "restore it from a backup") from exc
        if key.curve_name != "P-256" or not key.is_private:
            raise KeyStoreError(f"{pem} must be a P-256 private key: restore it from a backup")
        if thumbprint(key) != kid:
            raise KeyStoreError(f"{pem} holds a different key than its name says (replaced or renamed?): "
                                f"restore the original file")
        return ServerKey(kid, key, created_at)

    def _new_key(self) -> ServerKey:
        key = ECKey.generate_key("P-256", private=True)
        kid = thumbprint(key)
        self._atomic_write(f"{kid}.pem", key.as_pem(private=True))
        return ServerKey(kid, key, _now())

    def _write_ring(self, doc: dict[str, Any]) -> None:
        self._atomic_write(RING_FILE, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")

    def _atomic_write(self, name: str, data: bytes) -> None:
        tmp = self.path / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise KeyStoreError(f"cannot write {self.path / name}: {exc.strerror}") from exc
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        """Make the rename itself durable, not just the file contents. Best effort: some filesystems
        refuse fsync on a directory, and the data itself is already on disk."""
        with suppress(OSError):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _parse_ts(value: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise KeyStoreError(f"bad timestamp {value!r} in {RING_FILE}: restore it from a backup") from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
