"""The fake Entra ID (testkit/fakes/entra.py) against the published EAM provider contract.

Its hints verify against its own JWKS and carry the contract's claims; its authorization request is the
contract's parameter list; its redirect URI records form posts; and its validation of a provider's answer
accepts a correct ID token (signed here with an RSA key served from a tiny JWKS endpoint) and refuses each
thing the contract rules out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet, OctKey, RSAKey

from testkit.fakes.entra import (
    AMR_VALUES,
    ENTRA_REDIRECT_URI,
    EntraRejected,
    FakeEntra,
    SigningKey,
    fetch_provider_metadata,
)

TENANT = "aaaabbbb-0000-cccc-1111-dddd2222eeee"
CLIENT_ID = "00001111-aaaa-2222-bbbb-3333cccc4444"
SUB = "mBfcvuhSHkDWVgV72x2ruIYdSsPSvcj2R0qfc6mGEAA"
NONCE = "nonce-1f2e3d"


@pytest.fixture
async def entra() -> AsyncIterator[FakeEntra]:
    async with FakeEntra(TENANT, CLIENT_ID) as fake:
        yield fake


class Provider:
    """A stand-in EAM provider: an RSA key (with its certificate) served as a JWKS, and a discovery doc."""

    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.jwks: dict[str, Any] = {"keys": [self.key.jwk()]}
        self.port = 0

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}/eam"

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/eam/keys"

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": CLIENT_ID, "sub": SUB, "nonce": NONCE,
                                  "iat": now, "exp": now + 300, "acr": "possessionorinherence",
                                  "amr": ["swk"]}
        claims.update(changes)
        return {name: value for name, value in claims.items() if value is not None}

    def token(self, **changes: Any) -> str:
        return self.key.sign(self.claims(**changes))


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    prov = Provider()

    async def keys(_: web.Request) -> web.Response:
        return web.json_response(prov.jwks)

    async def discovery(_: web.Request) -> web.Response:
        return web.json_response({
            "issuer": prov.issuer, "authorization_endpoint": f"{prov.issuer}/authorize",
            "jwks_uri": prov.jwks_url, "scopes_supported": ["openid"],
            "response_types_supported": ["id_token"],
            "response_modes_supported": ["form_post"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"], "claim_types_supported": ["normal"]})

    app = web.Application()
    app.router.add_get("/eam/keys", keys)
    app.router.add_get("/eam/.well-known/openid-configuration", discovery)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    prov.port = int(runner.addresses[0][1])
    yield prov
    await runner.cleanup()


async def fetch_keyset(url: str) -> KeySet:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        return KeySet.import_key_set(await resp.json())


def payload(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return decoded


# -- the hint ------------------------------------------------------------------------------------------------


async def test_hint_verifies_against_the_fakes_jwks_and_carries_the_contract_claims(entra: FakeEntra) -> None:
    hint = entra.hint(SUB, "testuser2@contoso.com", oid="aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb")
    token = jwt.decode(hint, await fetch_keyset(entra.jwks_url), algorithms=["RS256"])
    assert token.header == {"typ": "JWT", "alg": "RS256", "kid": entra.signing_key.kid}
    claims = token.claims
    assert claims["iss"] == entra.issuer == f"https://login.microsoftonline.com/{TENANT}/v2.0"
    assert claims["aud"] == CLIENT_ID
    assert claims["sub"] == SUB
    assert claims["tid"] == TENANT
    assert claims["oid"] == "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"
    assert claims["preferred_username"] == "testuser2@contoso.com"
    assert claims["ver"] == "2.0"
    assert {"name", "iat", "nbf", "exp"} <= claims.keys()
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] > claims["iat"]


async def test_published_keys_are_rsa_with_x5t_and_x5c_as_entra_publishes_them(entra: FakeEntra) -> None:
    entra.rotate()
    async with aiohttp.ClientSession() as session, session.get(entra.jwks_url) as resp:
        keys = (await resp.json())["keys"]
    assert len(keys) == 2
    for jwk in keys:
        assert set(jwk) == {"kty", "use", "kid", "x5t", "n", "e", "x5c"}
        assert (jwk["kty"], jwk["use"]) == ("RSA", "sig")
        assert jwk["kid"] == jwk["x5t"]
        der = base64.b64decode(jwk["x5c"][0])
        thumbprint = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()  # noqa: S324
        assert jwk["x5t"] == thumbprint
        cert_key = x509.load_der_x509_certificate(der).public_key()
        assert isinstance(cert_key, rsa.RSAPublicKey)
        assert RSAKey.import_key(cert_key).as_dict()["n"] == jwk["n"]
        assert jwk["e"] == "AQAB"
    # After a rotation the new key signs; the old one stays published.
    assert jwt.decode(entra.hint(SUB, "u@contoso.com"), await fetch_keyset(entra.jwks_url)).header["kid"] \
        == keys[1]["kid"]


async def test_hint_knobs_for_the_negative_cases(entra: FakeEntra) -> None:
    keys = await fetch_keyset(entra.jwks_url)
    # Another tenant: a genuine Entra signature, another issuer and tid.
    other = jwt.decode(entra.hint(SUB, "u@fabrikam.com", tid="ffffffff-9999-8888-7777-666666666666"), keys)
    assert other.claims["iss"] == "https://login.microsoftonline.com/ffffffff-9999-8888-7777-666666666666/v2.0"
    assert other.claims["tid"] == "ffffffff-9999-8888-7777-666666666666"
    # Stale: issued an hour ago and long expired.
    stale = jwt.decode(entra.hint(SUB, "u@contoso.com", issued_ago=3600, expires_in=60), keys).claims
    assert stale["iat"] <= time.time() - 3600
    assert stale["exp"] < time.time() - 3000
    # Another audience.
    elsewhere = entra.hint(SUB, "u@contoso.com", aud="someone-else")
    assert jwt.decode(elsewhere, keys).claims["aud"] == "someone-else"
    # A key not in the JWKS, under the published kid: only the signature check refuses it.
    forged = entra.hint(SUB, "u@contoso.com", foreign_key=True)
    assert json.loads(base64.urlsafe_b64decode(forged.split(".")[0] + "==")) ["kid"] == entra.signing_key.kid
    with pytest.raises(BadSignatureError):
        jwt.decode(forged, keys, algorithms=["RS256"])


# -- the authorization request -------------------------------------------------------------------------------


async def test_authorization_params_are_the_contracts(entra: FakeEntra) -> None:
    hint = entra.hint(SUB, "u@contoso.com")
    params = entra.authorization_params(hint, nonce=NONCE, state="st-1")
    assert set(params) == {"scope", "response_type", "response_mode", "client_id", "redirect_uri", "nonce",
                           "state", "id_token_hint", "claims", "client-request-id"}
    assert params["scope"] == "openid"
    assert params["response_type"] == "id_token"
    assert params["response_mode"] == "form_post"
    assert params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == entra.redirect_uri
    assert entra.redirect_uri == f"{entra.url}/common/federation/externalauthprovider"
    assert entra.redirect_uri.endswith(ENTRA_REDIRECT_URI.removeprefix("https://login.microsoftonline.com"))
    assert (params["nonce"], params["state"], params["id_token_hint"]) == (NONCE, "st-1", hint)
    assert json.loads(params["claims"]) == {"id_token": {
        "acr": {"essential": True, "values": ["possessionorinherence"]},
        "amr": {"essential": True, "values": ["face", "fido", "fpt", "hwk", "iris", "otp", "pop", "retina",
                                              "sc", "sms", "swk", "tel", "vbm"]}}}
    assert len(params["client-request-id"]) == 36


async def test_start_page_form_posts_the_request_to_the_provider(entra: FakeEntra) -> None:
    params = entra.authorization_params(entra.hint(SUB, "u@contoso.com"), nonce=NONCE, state="a&b\"c")
    url = entra.start_url("https://mfa.example/authorize", params)
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        page = await resp.text()
    assert resp.status == 200
    assert '<form method="POST" name="hiddenform" action="https://mfa.example/authorize">' in page
    assert '<input type="hidden" name="state" value="a&amp;b&quot;c">' in page
    assert f'<input type="hidden" name="id_token_hint" value="{params["id_token_hint"]}">' in page


# -- the redirect URI ----------------------------------------------------------------------------------------


async def test_redirect_uri_records_form_posts(entra: FakeEntra, provider: Provider) -> None:
    token = provider.token()
    async with aiohttp.ClientSession() as session:
        async with session.post(entra.redirect_uri, data={"id_token": token, "state": "st-1"}) as resp:
            assert resp.status == 200
        async with session.get(entra.redirect_uri) as resp:
            assert resp.status == 405
    assert entra.received == [{"id_token": token, "state": "st-1"}]
    assert await entra.next_post() == {"id_token": token, "state": "st-1"}
    claims = await entra.validate_post(entra.received[0], provider_issuer=provider.issuer,
                                       provider_jwks_url=provider.jwks_url, hint_sub=SUB, nonce=NONCE,
                                       state="st-1")
    assert claims["amr"] == ["swk"]
    for form, state, check in (({"id_token": token, "state": "other"}, "st-1", "state"),
                               ({"id_token": token}, "st-1", "state"),
                               ({"id_token": token, "state": "st-1"}, None, "state"),
                               ({"state": "st-1"}, "st-1", "id_token"),
                               ({"error": "access_denied", "state": "st-1"}, "st-1", "error")):
        with pytest.raises(EntraRejected) as exc:
            await entra.validate_post(form, provider_issuer=provider.issuer,
                                      provider_jwks_url=provider.jwks_url, hint_sub=SUB, nonce=NONCE,
                                      state=state)
        assert exc.value.check == check


# -- validation of the provider's answer ---------------------------------------------------------------------


async def test_validate_response_accepts_a_correct_token(entra: FakeEntra, provider: Provider) -> None:
    for method in AMR_VALUES:
        claims = await entra.validate_response(provider.token(amr=[method]), provider_issuer=provider.issuer,
                                               provider_jwks_url=provider.jwks_url, hint_sub=SUB, nonce=NONCE)
        assert (claims["acr"], claims["amr"]) == ("possessionorinherence", [method])


def _other_key_same_kid(provider: Provider) -> str:
    return SigningKey.generate().sign(provider.claims(), kid=provider.key.kid)


def _alg(provider: Provider, alg: str) -> str:
    header = {"typ": "JWT", "alg": alg, "kid": provider.key.kid}
    if alg.startswith("HS"):
        # The RSA public key's n as an HMAC secret: the classic algorithm-confusion forgery.
        secret = provider.jwks["keys"][0]["n"].encode()
        return jwt.encode(header, provider.claims(), OctKey.import_key(secret), algorithms=[alg])
    return jwt.encode(header, provider.claims(), RSAKey.import_key(provider.key.private), algorithms=[alg])


def _unsigned(provider: Provider) -> str:
    head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(provider.claims()).encode()).rstrip(b"=").decode()
    return f"{head}.{body}."


NOW = int(time.time())
REFUSALS: list[tuple[str, Callable[[Provider], str], str]] = [
    ("wrong sub", lambda p: p.token(sub="someone-else"), "sub"),
    ("no nonce", lambda p: p.token(nonce=None), "nonce"),
    ("wrong nonce", lambda p: p.token(nonce="replayed"), "nonce"),
    ("two amr values", lambda p: p.token(amr=["swk", "pop"]), "amr"),
    ("amr as a string", lambda p: p.token(amr="swk"), "amr"),
    ("no amr", lambda p: p.token(amr=None), "amr"),
    ("amr not in Entra's list", lambda p: p.token(amr=["mfa"]), "amr"),
    ("amr of a knowledge method", lambda p: p.token(amr=["pwd"]), "amr"),
    ("wrong acr", lambda p: p.token(acr="knowledge"), "acr"),
    ("acr as a list", lambda p: p.token(acr=["possessionorinherence"]), "acr"),
    ("no acr", lambda p: p.token(acr=None), "acr"),
    ("bad signature", _other_key_same_kid, "signature"),
    ("unknown kid", lambda p: SigningKey.generate().sign(p.claims()), "kid"),
    ("wrong aud", lambda p: p.token(aud="another-client"), "aud"),
    ("aud list with another azp", lambda p: p.token(aud=[CLIENT_ID, "x"], azp="x"), "aud"),
    ("wrong iss", lambda p: p.token(iss=p.issuer + "/"), "iss"),
    ("expired", lambda p: p.token(iat=NOW - 900, exp=NOW - 600), "exp"),
    ("issued in the future", lambda p: p.token(iat=NOW + 900, exp=NOW + 1200), "iat"),
    ("no exp", lambda p: p.token(exp=None), "exp"),
    ("RS512", lambda p: _alg(p, "RS512"), "alg"),
    ("PS256", lambda p: _alg(p, "PS256"), "alg"),
    ("HS256 with the public key", lambda p: _alg(p, "HS256"), "alg"),
    ("alg none", _unsigned, "alg"),
    ("not a JWS", lambda p: "not.a-token", "format"),
]


@pytest.mark.parametrize(("make", "check"), [(make, check) for _, make, check in REFUSALS],
                         ids=[name for name, _, _ in REFUSALS])
async def test_validate_response_refuses(entra: FakeEntra, provider: Provider,
                                         make: Callable[[Provider], str], check: str) -> None:
    with pytest.raises(EntraRejected) as exc:
        await entra.validate_response(make(provider), provider_issuer=provider.issuer,
                                      provider_jwks_url=provider.jwks_url, hint_sub=SUB, nonce=NONCE)
    assert exc.value.check == check, str(exc.value)


async def test_validate_response_requires_x5c_in_the_jwks(entra: FakeEntra, provider: Provider) -> None:
    token = provider.token()
    provider.jwks["keys"][0].pop("x5c")
    with pytest.raises(EntraRejected, match=r"x5c: .*no x5c"):
        await entra.validate_response(token, provider_issuer=provider.issuer,
                                      provider_jwks_url=provider.jwks_url, hint_sub=SUB, nonce=NONCE)
    # A certificate for another key than n/e is refused too.
    provider.jwks["keys"][0]["x5c"] = SigningKey.generate().jwk()["x5c"]
    with pytest.raises(EntraRejected, match=r"x5c: .*another key"):
        await entra.validate_response(token, provider_issuer=provider.issuer,
                                      provider_jwks_url=provider.jwks_url, hint_sub=SUB, nonce=NONCE)


async def test_provider_metadata_is_checked(provider: Provider) -> None:
    meta = await fetch_provider_metadata(f"{provider.issuer}/.well-known/openid-configuration")
    assert meta["jwks_uri"] == provider.jwks_url
    with pytest.raises(EntraRejected, match="discovery"):
        await fetch_provider_metadata(f"{provider.issuer}/.well-known/openid-configuration?x=1")
