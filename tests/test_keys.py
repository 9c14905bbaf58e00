"""Server signing keys: folder layout, rotation/retirement semantics, load-time checks, no key leaks."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from pathlib import Path

import pytest

from pushauth.crypto import jws
from pushauth.crypto.keys import RING_FILE, KeyRing, KeyStore, ServerKey
from pushauth.errors import KeyStoreError


def rfc7638(jwk: dict[str, str]) -> str:
    """Independent RFC 7638 thumbprint: required EC members, sorted, no whitespace, SHA-256, base64url."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys")


def test_generate_then_load(store: KeyStore) -> None:
    key = store.generate()
    ring = store.load()
    jwks = ring.jwks()["keys"]
    assert len(jwks) == 1
    assert jwks[0]["kid"] == key.kid == ring.current.kid == rfc7638(jwks[0])
    assert jwks[0] == {**jwks[0], "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256"}
    assert "d" not in jwks[0]
    assert mode(store.path) == 0o700
    assert mode(store.path / f"{key.kid}.pem") == 0o600
    assert mode(store.path / RING_FILE) == 0o600
    assert (store.path / f"{key.kid}.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    [info] = store.list()
    assert (info.kid, info.status, info.current, info.retired_at) == (key.kid, "active", True, None)


def test_generate_twice_fails(store: KeyStore) -> None:
    store.generate()
    with pytest.raises(KeyStoreError, match="rotate"):
        store.generate()


def test_load_without_keys_says_generate(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="pushauth keys generate"):
        store.load()
    assert store.list() == []


def test_rotate_keeps_old_key_verifying_until_retired(store: KeyStore) -> None:
    old = store.generate()
    token = jws.sign({"sub": "u1"}, old.key, typ="x", kid=old.kid)
    before = store.fingerprint()
    new = store.rotate()
    assert store.fingerprint() != before

    ring = store.load()
    assert ring.current.kid == new.kid != old.kid
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new.kid, old.kid]
    header = jws.read_header(token, typ="x")
    assert jws.verify(token, ring.verifying_key(header["kid"])) == {"sub": "u1"}

    store.retire(old.kid)
    ring = store.load()
    with pytest.raises(jws.InvalidJWS, match="unknown server key"):
        ring.verifying_key(old.kid)
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new.kid]
    assert not (store.path / f"{old.kid}.pem").exists()
    infos = {i.kid: i for i in store.list()}
    assert infos[old.kid].status == "retired"
    assert infos[old.kid].retired_at is not None
    assert infos[new.kid].status == "active"
    assert infos[new.kid].current

    with pytest.raises(KeyStoreError, match="already retired"):
        store.retire(old.kid)
    with pytest.raises(KeyStoreError, match="keys list"):
        store.retire("nope")


def test_retiring_current_key_fails(store: KeyStore) -> None:
    key = store.generate()
    with pytest.raises(KeyStoreError, match="rotate"):
        store.retire(key.kid)
    assert store.load().current.kid == key.kid


def test_group_readable_pem_is_refused(store: KeyStore) -> None:
    key = store.generate()
    pem = store.path / f"{key.kid}.pem"
    os.chmod(pem, 0o644)
    with pytest.raises(KeyStoreError, match=re.escape(f"chmod 600 {pem}")):
        store.load()


def test_pem_not_matching_its_kid_is_refused(store: KeyStore) -> None:
    old = store.generate()
    new = store.rotate()
    # Put the new key's bytes under the old key's name.
    (store.path / f"{old.kid}.pem").write_bytes((store.path / f"{new.kid}.pem").read_bytes())
    with pytest.raises(KeyStoreError, match="different key"):
        store.load()


def test_missing_pem_is_refused(store: KeyStore) -> None:
    key = store.generate()
    (store.path / f"{key.kid}.pem").unlink()
    with pytest.raises(KeyStoreError, match="missing"):
        store.load()


def test_corrupt_keyring_is_refused(store: KeyStore) -> None:
    store.generate()
    (store.path / RING_FILE).write_text('{"version": 1, "current": "../../etc/passwd", "keys": {}}')
    with pytest.raises(KeyStoreError, match="restore it from a backup"):
        store.load()


def test_repr_and_str_leak_no_private_material(store: KeyStore) -> None:
    key = store.generate()
    ring = store.load()
    d = ring.current.key.as_dict(private=True)["d"]
    assert isinstance(d, str)
    assert len(d) > 20
    for obj in (key, ring, ring.current, KeyRing.ephemeral()):
        assert d not in repr(obj)
        assert d not in str(obj)
    assert repr(key) == f"ServerKey(kid={key.kid!r})"
    assert key.kid in repr(ring)


def test_ephemeral_works_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ring = KeyRing.ephemeral()
    assert list(tmp_path.iterdir()) == []
    [jwk] = ring.jwks()["keys"]
    assert jwk["kid"] == ring.current.kid == rfc7638(jwk)
    token = jws.sign({"n": 1}, ring.current.key, typ="x", kid=ring.current.kid)
    assert jws.verify(token, ring.verifying_key(ring.current.kid)) == {"n": 1}
    assert isinstance(ring.current, ServerKey)
    with pytest.raises(TypeError):
        ring.keys["x"] = ring.current  # type: ignore[index]
