"""Offline one-time codes (TOTP, issue 20): the RFC 6238 vectors, codes from an independent implementation
(pyotp), seeds sealed at rest, PSKC and CSV import, and the whole life of a method on a real server and a
real Redis: enrollment shown once, activation with one code, verification with a signed assertion, replay,
codes out of the window or of another user, the wrong-code limit, the lockout and the alert."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pyotp
import pytest
import redis.asyncio as aioredis
from support import (
    AdminClient,
    Clock,
    LoginFlow,
    RunningServer,
    assert_error,
    free_port,
    make_settings,
    start_server,
    verify_assertion,
)

from pushauth.cli import main as cli_main
from pushauth.codes import pskc, totp
from pushauth.codes.seal import KekHolder, KekRing, KekStore, SealError
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.keys import KeyStore
from pushauth.errors import KeyStoreError, Unprocessable
from pushauth.phone import Phone

if TYPE_CHECKING:  # only a fixture's type: importing it here would make every test here an integration one
    from testkit.redis_server import RedisServer

ALICE, BOB = "alice@nhs.net", "bob@nhs.net"

# -- RFC 6238 Appendix B -------------------------------------------------------------------------------------

SEEDS = {"SHA1": b"12345678901234567890", "SHA256": b"12345678901234567890123456789012",
         "SHA512": b"1234567890123456789012345678901234567890123456789012345678901234"}
APPENDIX_B = [  # time, SHA1, SHA256, SHA512 (8 digits)
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("at", "sha1", "sha256", "sha512"), APPENDIX_B)
def test_rfc6238_appendix_b(at: int, sha1: str, sha256: str, sha512: str) -> None:
    for algorithm, expected in (("SHA1", sha1), ("SHA256", sha256), ("SHA512", sha512)):
        params = totp.Params(algorithm=algorithm, digits=8)  # type: ignore[arg-type]
        seed = totp.Seed(SEEDS[algorithm])
        assert totp.code_at(seed, at, params) == expected
        assert totp.matching_step(seed, expected, at, params, window=0) == at // 30


@pytest.mark.parametrize(("algorithm", "digits"), [("SHA1", 6), ("SHA256", 6), ("SHA1", 8), ("SHA512", 8)])
def test_codes_from_pyotp_verify_within_the_window_only(algorithm: str, digits: int) -> None:
    seed = totp.Seed.new(algorithm)  # type: ignore[arg-type]
    params = totp.Params(algorithm=algorithm, digits=digits)  # type: ignore[arg-type]
    other = pyotp.TOTP(seed.base32(), digits=digits, digest=algorithm.lower())
    now = 1_767_225_600
    for offset, accepted in ((-60, False), (-30, True), (0, True), (30, True), (60, False)):
        code = other.at(now + offset)
        inside = {other.at(now + s) for s in (-30, 0, 30)}
        if not accepted and code in inside:
            continue  # one in 10^digits: a code two steps away equals one inside the window
        step = totp.matching_step(seed, code, now, params, window=1)
        assert step == ((now + offset) // 30 if accepted else None), offset
    assert totp.matching_step(seed, "12345", now, params, window=1) is None


def test_a_seed_never_prints() -> None:
    seed = totp.Seed.new("SHA1")
    assert seed.base32() not in repr(seed)
    assert seed.base32() not in str(seed)
    assert repr(seed) == "Seed(<20 bytes>)"
    ring = KekRing.new()
    assert all(base64.b64encode(k).decode() not in repr(ring) for k in ring.keys.values())


def test_otpauth_uri_reads_back_in_pyotp() -> None:
    seed = totp.Seed.new("SHA256")
    uri = totp.otpauth_uri(seed, totp.Params(algorithm="SHA256"), issuer="NHSmail", account=ALICE)
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert (parsed.secret, parsed.issuer, parsed.name, parsed.digits) == (seed.base32(), "NHSmail", ALICE, 6)
    assert parsed.now() == totp.code_at(seed, int(__import__("time").time()), totp.Params(algorithm="SHA256"))


# -- sealing -------------------------------------------------------------------------------------------------


def test_sealed_seeds_open_only_for_their_user_and_method() -> None:
    ring = KekRing.new()
    sealed = ring.seal(b"s" * 20, uid="u" * 16, method_id="m1")
    assert b"s" * 20 not in sealed.encode()
    assert base64.b32encode(b"s" * 20).decode() not in sealed
    assert ring.open(sealed, uid="u" * 16, method_id="m1") == b"s" * 20
    for uid, mid in (("v" * 16, "m1"), ("u" * 16, "m2")):
        with pytest.raises(SealError):
            ring.open(sealed, uid=uid, method_id=mid)
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(SealError):
        ring.open(tampered, uid="u" * 16, method_id="m1")
    with pytest.raises(SealError):
        KekRing.new().open(sealed, uid="u" * 16, method_id="m1")


def test_kek_file_is_private_and_rotates(tmp_path: Path) -> None:
    store = KekStore(tmp_path)
    holder = KekHolder(store)
    with pytest.raises(KeyStoreError, match="generate-kek"):
        holder.ring()
    first = store.generate()
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    sealed = first.seal(b"k" * 20, uid="u", method_id="m")
    assert holder.ring().current == first.current
    with pytest.raises(KeyStoreError):
        store.generate()  # never overwritten
    both = store.add_current()
    assert both.current != first.current
    assert set(both.keys) == {first.current, both.current}
    assert holder.ring().current == both.current  # a running server sees the rotation
    assert holder.ring().open(sealed, uid="u", method_id="m") == b"k" * 20
    only = store.drop_old()
    assert set(only.keys) == {both.current}
    with pytest.raises(SealError):
        holder.ring().open(sealed, uid="u", method_id="m")
    os.chmod(store.path, 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        store.load()


# -- PSKC and CSV --------------------------------------------------------------------------------------------

# RFC 6030 section 4, figure 2, verbatim: an HOTP key with a plain-text secret.
RFC6030_FIGURE_2 = """<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0"
    Id="exampleID1"
    xmlns="urn:ietf:params:xml:ns:keyprov:pskc">
    <KeyPackage>
        <DeviceInfo>
            <Manufacturer>Manufacturer</Manufacturer>
            <SerialNo>987654321</SerialNo>
            <UserId>DC=example-bank,DC=net</UserId>
        </DeviceInfo>
        <CryptoModuleInfo>
            <Id>CM_ID_001</Id>
        </CryptoModuleInfo>
        <Key Id="12345678"
            Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp">
            <Issuer>Issuer</Issuer>
            <AlgorithmParameters>
                <ResponseFormat Length="8" Encoding="DECIMAL"/>
            </AlgorithmParameters>
            <Data>
                <Secret>
                    <PlainValue>MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=
                    </PlainValue>
                </Secret>
                <Counter>
                    <PlainValue>0</PlainValue>
                </Counter>
            </Data>
            <UserId>UID=jsmith,DC=example-bank,DC=net</UserId>
        </Key>
    </KeyPackage>
</KeyContainer>
"""
# The same key package as a TOTP token (the algorithm URI and time interval RFC 6030 section 10 registers).
_COUNTER = "<Counter>\n                    <PlainValue>0</PlainValue>\n                </Counter>"
RFC6030_TOTP = (RFC6030_FIGURE_2.replace("keyprov:pskc:hotp", "keyprov:pskc:totp")
                .replace(_COUNTER, "<TimeInterval><PlainValue>30</PlainValue></TimeInterval>"))


def test_rfc6030_example_imports_as_totp() -> None:
    [token] = pskc.parse_pskc(RFC6030_TOTP)
    assert (token.serial, token.params) == ("987654321", totp.Params(digits=8))
    assert token.seed.raw() == SEEDS["SHA1"]  # the RFC 4226 / 6238 test key
    assert totp.code_at(token.seed, 59, token.params) == "94287082"


# RFC 4226 appendix D: HOTP values of the test key for counters 0..9 (six digits).
RFC4226_CODES = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871",
                 "520489"]


def test_rfc4226_hotp_vectors_and_the_look_ahead() -> None:
    assert [totp.hotp(SEEDS["SHA1"], c) for c in range(10)] == RFC4226_CODES
    seed, params = totp.Seed(SEEDS["SHA1"]), totp.Params(kind="hotp")
    assert totp.matching_counter(seed, "969429", 0, params, look_ahead=10) == 3
    assert totp.matching_counter(seed, "969429", 4, params, look_ahead=10) is None  # an older counter
    assert totp.matching_counter(seed, "520489", 0, params, look_ahead=9) is None  # beyond the look-ahead
    assert totp.matching_counter(seed, "520489", 0, params, look_ahead=10) == 9


def test_rfc6030_figure_2_imports_as_an_hotp_token() -> None:
    [token] = pskc.parse_pskc(RFC6030_FIGURE_2)
    assert (token.serial, token.params, token.counter) == ("987654321", totp.Params(digits=8, kind="hotp"), 0)
    assert token.seed.raw() == SEEDS["SHA1"]
    assert totp.hotp(token.seed.raw(), 0, digits=8) == "84755224"


# RFC 6030 section 6.1, figure 6: the same token with its secret encrypted (AES-128-CBC) under the
# pre-shared transport key 12345678901234567890123456789012 (hex), and an HMAC-SHA1 over IV and ciphertext
# whose MAC key is itself encrypted under the transport key.
RFC6030_FIGURE_6 = """<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0"
    xmlns="urn:ietf:params:xml:ns:keyprov:pskc"
    xmlns:ds="http://www.w3.org/2000/09/xmldsig#"
    xmlns:xenc="http://www.w3.org/2001/04/xmlenc#">
    <EncryptionKey>
        <ds:KeyName>Pre-shared-key</ds:KeyName>
    </EncryptionKey>
    <MACMethod Algorithm="http://www.w3.org/2000/09/xmldsig#hmac-sha1">
        <MACKey>
            <xenc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>
            <xenc:CipherData>
                <xenc:CipherValue>
    ESIzRFVmd4iZABEiM0RVZgKn6WjLaTC1sbeBMSvIhRejN9vJa2BOlSaMrR7I5wSX
                </xenc:CipherValue>
            </xenc:CipherData>
        </MACKey>
    </MACMethod>
    <KeyPackage>
        <DeviceInfo>
            <Manufacturer>Manufacturer</Manufacturer>
            <SerialNo>987654321</SerialNo>
        </DeviceInfo>
        <CryptoModuleInfo>
            <Id>CM_ID_001</Id>
        </CryptoModuleInfo>
        <Key Id="12345678"
            Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp">
            <Issuer>Issuer</Issuer>
            <AlgorithmParameters>
                <ResponseFormat Length="8" Encoding="DECIMAL"/>
            </AlgorithmParameters>
            <Data>
                <Secret>
                    <EncryptedValue>
                        <xenc:EncryptionMethod
            Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>
                        <xenc:CipherData>
                            <xenc:CipherValue>
    AAECAwQFBgcICQoLDA0OD+cIHItlB3Wra1DUpxVvOx2lef1VmNPCMl8jwZqIUqGv
                            </xenc:CipherValue>
                        </xenc:CipherData>
                    </EncryptedValue>
                    <ValueMAC>Su+NvtQfmvfJzF6bmQiJqoLRExc=
                    </ValueMAC>
                </Secret>
                <Counter>
                    <PlainValue>0</PlainValue>
                </Counter>
            </Data>
        </Key>
    </KeyPackage>
</KeyContainer>
"""
RFC6030_PSK = bytes.fromhex("12345678901234567890123456789012")


def test_rfc6030_figure_6_opens_with_its_pre_shared_key() -> None:
    [token] = pskc.parse_pskc(RFC6030_FIGURE_6, RFC6030_PSK)
    assert token.seed.raw() == SEEDS["SHA1"]
    assert (token.serial, token.params.kind, token.counter) == ("987654321", "hotp", 0)


@pytest.mark.parametrize(("psk", "document", "why"), [
    (None, RFC6030_FIGURE_6, "pre-shared key"),
    (bytes(16), RFC6030_FIGURE_6, "transport key"),  # the wrong one: its MAC key or the MAC fails
    (RFC6030_PSK[:8], RFC6030_FIGURE_6, "needs 16"),
    (RFC6030_PSK, RFC6030_FIGURE_6.replace("Su+NvtQf", "Su+NvtQe"), "fails its MAC"),  # a changed file
    (RFC6030_PSK, RFC6030_FIGURE_6.replace("AAECAwQF", "AAECAwQG"), "fails its MAC"),
    (RFC6030_PSK, RFC6030_FIGURE_6.replace("<ValueMAC>Su+NvtQfmvfJzF6bmQiJqoLRExc=\n                    "
                                           "</ValueMAC>", ""), "ValueMAC"),
    (RFC6030_PSK, RFC6030_FIGURE_6.replace("hmac-sha1", "hmac-md5"), "MACMethod"),
    (RFC6030_PSK, RFC6030_FIGURE_6.replace("<ds:KeyName>Pre-shared-key</ds:KeyName>", "<DerivedKey/>"),
     "password"),
])
def test_an_encrypted_pskc_that_does_not_open_is_refused(psk: bytes | None, document: str, why: str) -> None:
    with pytest.raises(Unprocessable, match=why):
        pskc.parse_pskc(document, psk)


@pytest.mark.parametrize(("document", "why"), [
    ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
     '<KeyContainer xmlns="urn:ietf:params:xml:ns:keyprov:pskc">&e;</KeyContainer>', "DTD"),
    ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
     '<KeyContainer xmlns="urn:ietf:params:xml:ns:keyprov:pskc">&b;</KeyContainer>', "DTD"),
    ("<KeyContainer", "well-formed"),
    ('<KeyContainer xmlns="urn:other"/>', "root element"),
    (RFC6030_TOTP.replace("<KeyPackage>", "<EncryptionKey><ds:KeyName xmlns:ds='x'>Pre-shared-key"
                          "</ds:KeyName></EncryptionKey><KeyPackage>", 1), "encrypted"),
    (RFC6030_TOTP.replace("<PlainValue>MTIz", "<EncryptedValue>MTIz").replace(
        "</PlainValue>\n                </Secret>", "</EncryptedValue>\n                </Secret>"),
     "encrypted"),
])
def test_hostile_or_encrypted_pskc_is_refused(document: str, why: str) -> None:
    with pytest.raises(Unprocessable, match=why):
        pskc.parse_pskc(document)


def test_csv_import() -> None:
    seed = totp.Seed.new("SHA1")
    tokens = pskc.parse_csv(f"serial,seed\n# a comment\nT-1,{seed.base32().lower()},{BOB}\n"
                            f"T-2, {seed.base32()} \n")
    assert [(t.serial, t.user) for t in tokens] == [("T-1", BOB), ("T-2", None)]
    assert tokens[0].seed.raw() == seed.raw()
    with pytest.raises(Unprocessable, match="line 1"):
        pskc.parse_csv("T-3,not base32!\n")


# -- on a real server ----------------------------------------------------------------------------------------

CODES = {"attempts": 5, "window_s": 900}


@pytest.fixture
async def server(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    running = await start_server(make_settings(redis_url, free_port(), quiet_detection=False, codes=CODES,
                                               containment={"lockout_after_failures": 8}), keyring)
    yield running
    await running.close()


@pytest.fixture
def rp(http: aiohttp.ClientSession, server: RunningServer) -> LoginFlow:
    return LoginFlow(http, server.url)


@pytest.fixture
def admin(http: aiohttp.ClientSession, server: RunningServer) -> AdminClient:
    return AdminClient(http, server.url)


async def enroll(admin: AdminClient, clock: Clock, user: str = ALICE) -> tuple[str, pyotp.TOTP]:
    """An authenticator app enrolled and activated: its method id and the app (pyotp)."""
    status, body = await admin.call("POST", f"/v1/users/{user}/otp-methods", {"name": "FreeOTP"})
    assert status == 201, body
    app = pyotp.parse_uri(body["uri"])
    assert isinstance(app, pyotp.TOTP)
    status, activated = await admin.call("POST", f"/v1/users/{user}/otp-methods/{body['id']}/activate",
                                         {"code": app.at(clock.now())})
    assert (status, activated["status"]) == (200, "active"), activated
    clock.advance(30)  # the activation spent this step
    return str(body["id"]), app


async def verify(rp: LoginFlow, user: str, code: str) -> tuple[int, dict[str, Any]]:
    return await rp.call("POST", "/v1/codes/verify", {"user": user, "code": code})


async def test_an_app_code_signs_in_once_with_an_assertion(rp: LoginFlow, admin: AdminClient, clock: Clock,
                                                            http: aiohttp.ClientSession) -> None:
    clock.freeze()
    method, app = await enroll(admin, clock)
    code = app.at(clock.now())
    status, body = await verify(rp, ALICE, code)
    assert (status, body["valid"], body["method"], body["amr"]) == (200, True, method, ["otp"]), body
    async with http.get(rp.url + "/.well-known/jwks.json") as resp:
        jwks = await resp.json()
    claims = verify_assertion(body["assertion"], jwks)
    assert (claims["sub"], claims["aud"], claims["result"], claims["amr"], claims["jti"]) == (
        ALICE, "webmail", "approved", ["otp"], body["id"])
    # the same code again, even a few seconds later: refused (replay), and said no more than "invalid"
    clock.advance(5)
    assert await verify(rp, ALICE, code) == (200, {"valid": False, "user": ALICE, "reason": "invalid"})
    # the previous step's code is inside the window but older than the one used: refused too
    assert (await verify(rp, ALICE, app.at(clock.now() - 30)))[1]["valid"] is False
    # the next step's code works
    clock.advance(30)
    assert (await verify(rp, ALICE, app.at(clock.now())))[1]["valid"] is True
    whats = [e["why"] for e in await admin.audit(ALICE) if e["what"] in ("otp_used", "otp_refused")]
    assert whats == ["valid", "replayed", "replayed", "valid"]  # newest first: the trail tells replays apart


async def test_a_code_two_steps_away_or_of_another_user_is_refused(rp: LoginFlow, admin: AdminClient,
                                                                    clock: Clock) -> None:
    clock.freeze()
    _, alice = await enroll(admin, clock, ALICE)
    _, bob = await enroll(admin, clock, BOB)
    for code in (alice.at(clock.now() + 60), alice.at(clock.now() - 60), bob.at(clock.now())):
        if code == alice.at(clock.now()):
            continue  # one in a million: the other code happens to be Alice's current one
        assert (await verify(rp, ALICE, code))[1] == {"valid": False, "user": ALICE, "reason": "invalid"}
    assert (await verify(rp, ALICE, alice.at(clock.now() + 30)))[1]["valid"] is True  # within the window


async def test_activation_needs_a_valid_code_and_a_pending_method_signs_nobody_in(
        rp: LoginFlow, admin: AdminClient, clock: Clock) -> None:
    clock.freeze()
    status, body = await admin.call("POST", f"/v1/users/{ALICE}/otp-methods")
    assert status == 201, body
    app = pyotp.parse_uri(body["uri"])
    assert isinstance(app, pyotp.TOTP)
    assert body["secret"] == app.secret
    assert body["qr_svg"].startswith("data:image/svg+xml")
    assert (await verify(rp, ALICE, app.at(clock.now())))[1]["reason"] == "not_enrolled"
    wrong = "000000" if app.at(clock.now()) != "000000" else "111111"
    status, refused = await admin.call("POST", f"/v1/users/{ALICE}/otp-methods/{body['id']}/activate",
                                       {"code": wrong})
    assert_error(status, refused, 422, "invalid_code")
    status, refused = await admin.call("POST", f"/v1/users/{ALICE}/otp-methods/{body['id']}/activate",
                                       {"code": "12"})
    assert_error(status, refused, 422, "invalid_code")
    [listed] = (await admin.user(ALICE))["otp_methods"]
    assert (listed["id"], listed["status"], listed["kind"]) == (body["id"], "pending", "app")
    clock.advance(900)
    status, refused = await admin.call("POST", f"/v1/users/{ALICE}/otp-methods/{body['id']}/activate",
                                       {"code": app.at(clock.now())})
    assert_error(status, refused, 409, "expired")


async def test_too_many_wrong_activation_codes_discard_the_pending_method(
        rp: LoginFlow, admin: AdminClient, clock: Clock) -> None:
    """`codes.activation_attempts` (5) wrong codes: the 5th discards the method (409), and then even its
    right code activates nothing: enroll again."""
    clock.freeze()
    status, body = await admin.call("POST", f"/v1/users/{ALICE}/otp-methods")
    assert status == 201, body
    app = pyotp.parse_uri(body["uri"])
    assert isinstance(app, pyotp.TOTP)
    path = f"/v1/users/{ALICE}/otp-methods/{body['id']}/activate"
    wrong = "000000" if app.at(clock.now()) != "000000" else "111111"
    for tries_left in (4, 3, 2, 1):
        status, refused = await admin.call("POST", path, {"code": wrong})
        assert_error(status, refused, 422, "invalid_code")
        assert f"({tries_left} tries left)" in refused["message"]
    status, refused = await admin.call("POST", path, {"code": wrong})
    assert_error(status, refused, 409, "discarded")
    assert (await admin.user(ALICE))["otp_methods"] == []
    status, refused = await admin.call("POST", path, {"code": app.at(clock.now())})
    assert status == 404, refused
    assert (await verify(rp, ALICE, app.at(clock.now())))[1]["reason"] == "not_enrolled"


async def test_a_seed_is_never_readable_back(rp: LoginFlow, admin: AdminClient, clock: Clock,
                                             redis_url: str) -> None:
    clock.freeze()
    method, app = await enroll(admin, clock)
    raw = base64.b32decode(app.secret + "=" * (-len(app.secret) % 8))
    shown = [await admin.user(ALICE), (await admin.call("GET", f"/v1/users/{ALICE}/otp-methods"))[1],
             await admin.audit(ALICE), await admin.alerts()]
    assert app.secret not in str(shown)
    assert app.secret.lower() not in str(shown)
    assert [m["id"] for m in shown[1]["methods"]] == [method]
    async with aioredis.Redis.from_url(redis_url) as client:
        async for key in client.scan_iter(count=1000):
            kind = await client.type(key)
            if kind == b"hash":
                values = list(await client.hvals(key))
            elif kind == b"stream":
                values = [v for _, entry in await client.xrange(key) or [] for v in (entry or {}).values()]
            else:
                continue
            for value in values:
                assert raw not in value, key
                assert app.secret.encode() not in value.upper(), key
    status, _ = await admin.call("POST", f"/v1/users/{ALICE}/otp-methods/{method}/activate",
                                 {"code": "123456"})
    assert status == 409  # active already: nothing more to see


async def test_wrong_codes_are_rate_limited_alerted_and_lock(rp: LoginFlow, admin: AdminClient,
                                                             clock: Clock) -> None:
    clock.freeze()
    _, app = await enroll(admin, clock)
    right = app.at(clock.now())
    wrong = [c for c in ("000000", "111111", "222222", "333333", "444444", "555555", "666666") if c != right]
    for code in wrong[:5]:
        assert (await verify(rp, ALICE, code))[1]["reason"] == "invalid"
    status, body = await verify(rp, ALICE, right)  # at the limit even a right code waits
    assert_error(status, body, 429, "rate_limited")
    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"]) == ("otp_guessing", "high"), alert
    assert (await admin.user(ALICE))["consecutive_failures"] == 5
    # once the window has moved on, three more wrong codes in a row make eight: the lockout
    clock.advance(901)
    for code in wrong[:3]:
        assert (await verify(rp, ALICE, code))[1]["valid"] is False
    view = await admin.user(ALICE)
    assert (view["locked"], view["locked_reason"]) == (True, "failures"), view
    status, body = await verify(rp, ALICE, app.at(clock.now()))
    assert (status, body["reason"], "user_message" in body) == (200, "locked", True)
    # the security team unlocks: the next code signs in
    status, _ = await admin.call("POST", f"/v1/users/{ALICE}/unlock")
    assert status == 200
    clock.advance(30)
    assert (await verify(rp, ALICE, app.at(clock.now())))[1]["valid"] is True


async def test_a_right_code_restarts_the_lockout_count(rp: LoginFlow, admin: AdminClient,
                                                                   clock: Clock) -> None:
    """A right code resets the lockout count as an approval does."""
    clock.freeze()
    _, app = await enroll(admin, clock)
    for _ in range(2):
        for code in ("000000", "999999"):
            if code != app.at(clock.now()):
                await verify(rp, ALICE, code)
        assert (await verify(rp, ALICE, app.at(clock.now())))[1]["valid"] is True
        clock.advance(30)
    assert (await admin.user(ALICE))["consecutive_failures"] == 0


async def test_a_suspended_users_code_is_refused_until_the_team_lifts_it(
        rp: LoginFlow, admin: AdminClient, clock: Clock, http: aiohttp.ClientSession) -> None:
    """A "not me" suspends the account: its codes are refused as its prompts are, and the refusal spends
    nothing (the same code works once the security team lifts the suspension)."""
    clock.freeze()
    phone = await Phone.enroll(await rp.enroll_uri(ALICE), session=http)
    _, app = await enroll(admin, clock)
    created = await rp.create(ALICE)
    assert await phone.deny(created["id"], reason="not_me") == "denied"
    assert (await admin.user(ALICE))["suspended"] is True
    status, body = await verify(rp, ALICE, app.at(clock.now()))
    assert (status, body["valid"], body["reason"]) == (200, False, "suspended"), body
    assert body["user_message"]
    status, _ = await admin.call("POST", f"/v1/users/{ALICE}/unlock")
    assert status == 200
    status, body = await verify(rp, ALICE, app.at(clock.now()))
    assert (status, body["valid"]) == (200, True), body
    whats = [(e["what"], e["why"]) for e in await admin.audit(ALICE) if e["what"].startswith("otp_")][:2]
    assert whats == [("otp_used", "valid"), ("otp_refused", "suspended")]


async def test_a_pause_stops_prompts_but_not_codes(rp: LoginFlow, admin: AdminClient, clock: Clock,
                                                   http: aiohttp.ClientSession) -> None:
    """PROTOCOL.md 17.4: a phone's pause (a holiday) refuses prompts; a code, which prompts nobody and is a
    second factor of its own, still signs in."""
    clock.freeze()
    phone = await Phone.enroll(await rp.enroll_uri(ALICE), session=http)
    _, app = await enroll(admin, clock)
    await phone.pause(3600)
    status, body = await rp.call("POST", "/v1/challenges", {"user": ALICE})
    assert_error(status, body, 403, "suspended")
    status, body = await verify(rp, ALICE, app.at(clock.now()))
    assert (status, body["valid"]) == (200, True), body


async def test_a_user_without_codes_is_not_counted(rp: LoginFlow, admin: AdminClient) -> None:
    for _ in range(8):
        assert (await verify(rp, BOB, "123456"))[1] == {"valid": False, "user": BOB, "reason": "not_enrolled"}
    status, body = await admin.call("GET", f"/v1/users/{BOB}")
    assert status == 404 or not body["locked"]


async def test_pskc_and_csv_tokens_import_and_sign_in(rp: LoginFlow, admin: AdminClient,
                                                       clock: Clock) -> None:
    clock.freeze()
    status, body = await admin.call("POST", "/v1/otp-methods/import", {
        "format": "pskc", "data": RFC6030_TOTP, "assignments": {"987654321": ALICE}})
    assert status == 201, body
    [imported] = body["imported"]
    assert (imported["serial"], imported["user"], imported["status"]) == ("987654321", ALICE, "pending")
    token = pyotp.TOTP(base64.b32encode(SEEDS["SHA1"]).decode(), digits=8)
    status, _ = await admin.call("POST", f"/v1/users/{ALICE}/otp-methods/{imported['id']}/activate",
                                 {"code": token.at(clock.now())})
    assert status == 200
    clock.advance(30)
    assert (await verify(rp, ALICE, token.at(clock.now())))[1]["valid"] is True
    seed = totp.Seed.new("SHA1")
    status, body = await admin.call("POST", "/v1/otp-methods/import",
                                    {"format": "csv", "data": f"HW-1,{seed.base32()},{BOB}\n"})
    assert status == 201, body
    status, body = await admin.call("POST", "/v1/otp-methods/import", {"format": "csv",
                                                                       "data": f"HW-2,{seed.base32()}\n"})
    assert_error(status, body, 422, "invalid_import")
    status, body = await admin.call("POST", "/v1/otp-methods/import", {"format": "pskc", "psk": "00" * 16,
                                                                       "data": RFC6030_FIGURE_6})
    assert_error(status, body, 422, "invalid_import")  # the wrong transport key: nothing imported
    assert [m["kind"] for m in (await admin.user(BOB))["otp_methods"]] == ["hardware"]


async def test_an_hotp_token_from_an_encrypted_pskc_signs_in_once_per_press(
        rp: LoginFlow, admin: AdminClient, clock: Clock) -> None:
    """RFC 6030 figure 6 imported with its transport key; then the codes of RFC 4226 appendix D (eight
    digits here, as the file says): each counter once, never an older one, at most hotp_look_ahead ahead."""
    clock.freeze()
    status, body = await admin.call("POST", "/v1/otp-methods/import", {
        "format": "pskc", "data": RFC6030_FIGURE_6, "psk": RFC6030_PSK.hex(),
        "assignments": {"987654321": BOB}})
    assert status == 201, body
    [imported] = body["imported"]
    token = pyotp.HOTP(base64.b32encode(SEEDS["SHA1"]).decode(), digits=8)
    status, body = await admin.call("POST", f"/v1/users/{BOB}/otp-methods/{imported['id']}/activate",
                                    {"code": token.at(0)})
    assert status == 200, body
    [method] = (await admin.user(BOB))["otp_methods"]
    assert (method["type"], method["status"]) == ("hotp", "active")
    assert (await verify(rp, BOB, token.at(0)))[1]["valid"] is False, "the activation code is spent"
    assert (await verify(rp, BOB, token.at(1)))[1]["valid"] is True
    assert (await verify(rp, BOB, token.at(1)))[1]["valid"] is False, "a replayed press"
    assert (await verify(rp, BOB, token.at(5)))[1]["valid"] is True, "three presses lost on the way"
    assert (await verify(rp, BOB, token.at(3)))[1]["valid"] is False, "an older press"
    assert (await verify(rp, BOB, token.at(6 + 10)))[1]["valid"] is False, "beyond the look-ahead"
    assert (await verify(rp, BOB, token.at(6)))[1]["valid"] is True
    status, body = await admin.call("POST", "/v1/otp-methods/import", {
        "format": "csv", "data": "HW-9,JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP,x@nhs.net\n",
        "psk": RFC6030_PSK.hex()})
    assert_error(status, body, 422, "invalid_import")


async def test_revoked_method_and_bad_requests(rp: LoginFlow, admin: AdminClient, clock: Clock) -> None:
    clock.freeze()
    method, app = await enroll(admin, clock)
    status, body = await admin.call("DELETE", f"/v1/users/{BOB}/otp-methods/{method}")
    assert_error(status, body, 404, "not_found")  # not Bob's
    status, body = await admin.call("DELETE", f"/v1/users/{ALICE}/otp-methods/{method}")
    assert (status, body["status"]) == (200, "revoked")
    assert (await verify(rp, ALICE, app.at(clock.now())))[1]["reason"] == "not_enrolled"
    status, body = await rp.call("POST", "/v1/codes/verify", {"user": ALICE})
    assert_error(status, body, 422, "invalid")
    status, body = await admin.call("POST", "/v1/codes/verify", {"user": ALICE, "code": "123456"})
    assert_error(status, body, 403)


async def test_rotate_kek_reseals_every_seed_and_a_running_server_follows(
        redis_url: str, tmp_path: Path, http: aiohttp.ClientSession, clock: Clock) -> None:
    clock.freeze()
    keys = tmp_path / "keys"
    KeyStore(keys).generate()
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nredis_url = "{redis_url}"\n[keys]\npath = "{keys}"\n')
    assert cli_main(["-c", str(config), "keys", "generate-kek"]) == 0
    old = KekStore(keys).load().current
    settings = make_settings(redis_url, free_port(), keys={"ephemeral": False, "path": str(keys)})
    running = await start_server(settings, KeyRingHolder.from_settings(settings.keys))
    try:
        admin, rp = AdminClient(http, running.url), LoginFlow(http, running.url)
        method, app = await enroll(admin, clock)
        # the CLI runs its own event loop and Redis client, as it would in a shell beside the server
        rotate = ["-c", str(config), "keys", "rotate-kek", "--grace-s", "0.1"]
        assert await asyncio.to_thread(cli_main, rotate) == 0
        ring = KekStore(keys).load()
        assert ring.current != old
        assert set(ring.keys) == {ring.current}  # the old key is gone from the file
        async with aioredis.Redis.from_url(redis_url, decode_responses=True) as client:
            uid = (await admin.user(ALICE))["otp_methods"][0]["id"][1:17]
            sealed = await client.hget(f"pa:{{{uid}}}:otp:{method}", "seed")
        assert str(sealed).startswith(f"v1.{ring.current}.")
        assert (await verify(rp, ALICE, app.at(clock.now())))[1]["valid"] is True
    finally:
        await running.close()


async def test_without_a_kek_a_phone_registers_without_codes_and_check_warns(
        redis_url: str, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """No keys/kek.json: a phone asking for offline codes is registered all the same (its enrollment code is
    not wasted on a 503 it never learns its device id from), told there are none, and works; /readyz and
    `pushauth check` warn until `pushauth keys generate-kek` has run."""
    keys = tmp_path / "keys"
    KeyStore(keys).generate()
    settings = make_settings(redis_url, free_port(), keys={"ephemeral": False, "path": str(keys)})
    running = await start_server(settings, KeyRingHolder.from_settings(settings.keys))
    try:
        rp, admin = LoginFlow(http, running.url), AdminClient(http, running.url)
        async with http.get(running.url + "/readyz") as resp:
            [warning] = (await resp.json())["warnings"]
        assert "pushauth keys generate-kek" in warning
        assert str(keys / "kek.json") in warning
        uri = await rp.enroll_uri(ALICE)
        phone = await Phone.enroll(uri, session=http, offline_codes=True)
        assert (bool(phone.device_id), phone.has_offline_codes) == (True, False)
        assert phone.offline_codes_unavailable  # the answer said so
        assert await phone.pending() == []  # registered and active: its signed calls work
        assert (await admin.user(ALICE))["otp_methods"] == []
        # a second phone of the same user: pending, and no seed stored for later either
        second = await Phone.enroll(await rp.enroll_uri(ALICE), session=http, offline_codes=True)
        assert (second.status, second.offline_codes_unavailable) == ("pending_approval", True)
        assert (await admin.user(ALICE))["otp_methods"] == []
        assert cli_main(["-c", str(_config(tmp_path, redis_url, keys)), "keys", "generate-kek"]) == 0
        async with http.get(running.url + "/readyz") as resp:
            assert "warnings" not in await resp.json()
        third = await Phone.enroll(await rp.enroll_uri(BOB), session=http, offline_codes=True)
        # the running server follows the new file
        assert (third.has_offline_codes, third.offline_codes_unavailable) == (True, False)
    finally:
        await running.close()


def _config(tmp_path: Path, redis_url: str, keys: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nredis_url = "{redis_url}"\n[keys]\npath = "{keys}"\n')
    return config


async def test_a_reseal_never_overwrites_a_seed_that_changed_or_a_method_that_went(redis_url: str) -> None:
    """The rotation's compare-and-set: a method revoked (or re-sealed by someone else) between the sweep's
    read and its write is left as it is, and a revoked method is not brought back as a bare seed."""
    from pushauth.codes import scripts as lua

    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as client:
        key = "pa:{reseal-test}:otp:t1"
        await client.hset(key, mapping={"seed": "v1.new-by-someone", "st": "active"})
        assert await lua.reseal_seed(client, key, old="v1.read-before", new="v1.rotated") is False
        assert await client.hget(key, "seed") == "v1.new-by-someone"
        assert await lua.reseal_seed(client, key, old="v1.new-by-someone", new="v1.rotated") is True
        assert await client.hget(key, "seed") == "v1.rotated"
        gone = "pa:{reseal-test}:otp:t2"
        assert await lua.reseal_seed(client, gone, old="v1.read-before", new="v1.rotated") is False
        assert await client.exists(gone) == 0
        await client.delete(key)


async def test_a_pushauth_phone_shows_codes_offline_until_it_is_revoked(
        rp: LoginFlow, admin: AdminClient, clock: Clock, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock.freeze()
    phone = await Phone.enroll(await rp.enroll_uri(ALICE), session=http, offline_codes=True)
    assert phone.has_offline_codes
    phone.save(tmp_path / "phone.json")
    reloaded = Phone.load(tmp_path / "phone.json")  # the code survives in the phone's own state
    assert reloaded.offline_code() == phone.offline_code()
    [method] = (await admin.user(ALICE))["otp_methods"]
    assert (method["kind"], method["status"], method["device"]) == ("phone", "active", phone.device_id)
    status, body = await verify(rp, ALICE, phone.offline_code())
    assert (status, body["valid"], body["method"]) == (200, True, method["id"]), body
    # a further phone waits for approval: no seed until then (it could otherwise skip the approval)
    second = await Phone.enroll(await rp.enroll_uri(ALICE), session=http, offline_codes=True)
    assert (second.status, second.has_offline_codes) == ("pending_approval", False)
    # the lost phone is revoked: its codes end with it
    status, _ = await admin.call("DELETE", f"/v1/users/{ALICE}/devices/{phone.device_id}")
    assert status == 200
    clock.advance(30)
    assert (await verify(rp, ALICE, phone.offline_code()))[1] == {"valid": False, "user": ALICE,
                                                                   "reason": "invalid"}
    methods = {m["device"]: m for m in (await admin.user(ALICE))["otp_methods"]}
    assert methods[phone.device_id]["status"] == "device_revoked", \
        "the view must not call a revoked phone's codes active"
    assert methods[second.device_id]["status"] == "pending"  # its seed waits for the approval
    # a phone that does not ask gets no seed
    plain = await Phone.enroll(await rp.enroll_uri(BOB), session=http)
    assert not plain.has_offline_codes


async def test_a_phone_approved_on_another_gets_its_seed_once_when_active(
        rp: LoginFlow, admin: AdminClient, clock: Clock, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A further phone that asked for offline codes while it waited for approval gets its seed from its
    activation once approved: that answer only, and then its codes sign in."""
    clock.freeze()
    first = await Phone.enroll(await rp.enroll_uri(ALICE), session=http, offline_codes=True)
    second = await Phone.enroll(await rp.enroll_uri(ALICE), session=http, offline_codes=True)
    assert (second.status, second.has_offline_codes) == ("pending_approval", False)
    waiting = await second.activation()
    assert (waiting["status"], "otp" in waiting) == ("pending_approval", False)
    assert not second.has_offline_codes
    assert second.approval_number is not None
    await first.approve_new_phone(second.approval_number)
    approved = await second.activation()
    assert approved["status"] == "active"
    assert set(approved["otp"]) == {"secret", "algorithm", "digits", "period"}
    assert second.has_offline_codes
    status, again = await second.signed_request("GET", "/v1/device/activation")
    assert (status, again) == (200, {"status": "active"})  # once: a second read gets no seed
    second.save(tmp_path / "second.json")
    second = Phone.load(tmp_path / "second.json", session=http)
    methods = {m["device"]: m for m in (await admin.user(ALICE))["otp_methods"]}
    assert methods[second.device_id]["status"] == "active"
    assert first.offline_code() != second.offline_code()  # a seed of its own
    status, body = await verify(rp, ALICE, second.offline_code())
    assert (status, body["valid"], body["method"]) == (200, True, methods[second.device_id]["id"]), body
    activated = [e for e in await admin.audit(ALICE) if e["what"] == "otp_activated"]
    assert [(e["who"], e["details"]["device_id"]) for e in activated] == [("device", second.device_id)]


async def test_phone_seeds_can_be_turned_off(redis_url: str, keyring: KeyRingHolder,
                                             http: aiohttp.ClientSession) -> None:
    running = await start_server(make_settings(redis_url, free_port(), codes={"phone_seeds": False}), keyring)
    try:
        phone = await Phone.enroll(await LoginFlow(http, running.url).enroll_uri(ALICE), session=http,
                                   offline_codes=True)
        assert not phone.has_offline_codes
        assert (await AdminClient(http, running.url).user(ALICE))["otp_methods"] == []
    finally:
        await running.close()


async def test_redis_down_fails_closed(private_redis: RedisServer, keyring: KeyRingHolder,
                                       http: aiohttp.ClientSession, clock: Clock) -> None:
    clock.freeze()
    running = await start_server(make_settings(private_redis.url, free_port()), keyring)
    try:
        rp, admin = LoginFlow(http, running.url), AdminClient(http, running.url)
        _, app = await enroll(admin, clock)
        private_redis.kill()
        status, body = await verify(rp, ALICE, app.at(clock.now()))
        assert_error(status, body, 503, "unavailable")  # never a sign-in without the replay cache
        private_redis.restart()
        for _ in range(50):  # reconnects by itself; the code was never spent
            status, body = await verify(rp, ALICE, app.at(clock.now()))
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert body["valid"] is True, body
    finally:
        await running.close()


async def test_an_import_is_all_or_nothing(admin: AdminClient) -> None:
    status, _ = await admin.call("PUT", "/v1/users/mailbox@nhs.net/policy", {"shared": True})
    assert status == 200
    one, two = totp.Seed.new("SHA1"), totp.Seed.new("SHA1")
    status, body = await admin.call("POST", "/v1/otp-methods/import", {
        "format": "csv", "data": f"HW-1,{one.base32()},{BOB}\nHW-2,{two.base32()},mailbox@nhs.net\n"})
    assert_error(status, body, 403, "shared_account")
    status, body = await admin.call("GET", f"/v1/users/{BOB}/otp-methods")
    assert (status, body["methods"]) == (200, [])
