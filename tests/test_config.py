"""Settings: the documented example file, environment overrides, errors that name the key, and the
challenge settings a real server honours (number digits, number matching off)."""

from __future__ import annotations

import re
import tomllib
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from support import API_KEY, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.config import Settings, from_mapping, load_settings
from pushauth.crypto import jws
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.secrets import sha256_hex
from pushauth.errors import ConfigError
from pushauth.phone import CHALLENGE_TYP, Phone

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
USER = "heidi@nhs.net"


# -- config.example.toml --------------------------------------------------------------------------------


def _leaf_fields(struct: type[msgspec.Struct], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, name) of every value setting of `struct` and of the structs nested in it, also inside
    list[...] (the [[applications]] tables). Nested structs themselves are TOML tables, not `name =`."""
    for field in msgspec.structs.fields(struct):
        dotted = f"{prefix}{field.name}"
        nested = [tp for tp in (field.type, *typing.get_args(field.type))
                  if isinstance(tp, type) and issubclass(tp, msgspec.Struct)]
        if not nested:
            yield dotted, field.name
        for tp in nested:
            yield from _leaf_fields(tp, dotted + ".")


def _sections(text: str) -> dict[str, str]:
    """Text of each table of the example, commented-out tables ([[applications]]) included."""
    headers = list(re.finditer(r"^[ \t]*(?:#[ \t]*)?\[\[?([a-z_]+)\]\]?[ \t]*$", text, re.MULTILINE))
    ends = [h.start() for h in headers[1:]] + [len(text)]
    return {h.group(1): text[h.end():end] for h, end in zip(headers, ends, strict=True)}


def test_every_setting_is_documented_in_the_example() -> None:
    sections = _sections(EXAMPLE.read_text(encoding="utf-8"))
    assert set(sections) == {f.name for f in msgspec.structs.fields(Settings)}
    fields = list(_leaf_fields(Settings))
    assert len(fields) > 20
    missing = [dotted for dotted, name in fields
               if not re.search(rf"^[ \t]*(#[ \t]*)?{re.escape(name)}[ \t]*=",
                                sections[dotted.split(".")[0]], re.MULTILINE)]
    assert not missing, f"not documented as `name =` in their table in config.example.toml: {missing}"


def test_example_parses_to_the_defaults() -> None:
    assert load_settings(EXAMPLE, env={}) == Settings()
    # Key by key, so a wrong value in the example names itself.
    def check(defaults: object, values: dict[str, Any], where: str) -> None:
        for key, value in values.items():
            if isinstance(value, dict):  # a nested table such as [push.fcm]
                check(getattr(defaults, key), value, f"{where}{key}.")
            else:
                assert getattr(defaults, key) == value, f"{where}{key}"

    check(Settings(), tomllib.loads(EXAMPLE.read_text(encoding="utf-8")), "")


def test_commented_application_block_is_valid_when_uncommented() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    block = re.search(r"^# \[\[applications\]\]\n((?:# .*\n)+)", text, re.MULTILINE)
    assert block is not None
    toml = "[[applications]]\n" + "".join(line[2:] + "\n" for line in block.group(1).splitlines())
    toml = toml.replace("<64 hex digits>", sha256_hex(API_KEY))
    settings = from_mapping(tomllib.loads(toml))
    assert [a.id for a in settings.applications] == ["webmail"]


# A commented example table: its header, then its `name = value` lines, each behind "# " and nothing more.
_EXAMPLE_BLOCK = re.compile(r"^# (\[\[?[a-z_.]+\]\]?)[ \t]*\n((?:# [a-z_0-9]+ = .*\n)+)", re.MULTILINE)


def _uncomment(text: str, blocks: list[re.Match[str]]) -> str:
    """`text` with `blocks` uncommented where they stand, as a user would edit the file."""
    for block in sorted(blocks, key=lambda m: m.start(), reverse=True):
        lines = block.group(0).splitlines(keepends=True)
        text = text[:block.start()] + "".join(line[2:] for line in lines) + text[block.end():]
    return text.replace("<64 hex digits>", sha256_hex(API_KEY))


def _example_blocks() -> list[re.Match[str]]:
    return list(_EXAMPLE_BLOCK.finditer(EXAMPLE.read_text(encoding="utf-8")))


def test_example_blocks_are_found() -> None:
    headers = [m.group(1) for m in _example_blocks()]
    assert headers == ["[[applications]]", "[[admin.tokens]]", *["[[alerts.sinks]]"] * 5,
                       "[[policy.enforcement]]", "[[radius.clients]]", "[[oidc.keycloak.realms]]",
                       "[[oidc.clients]]"], headers


@pytest.mark.parametrize("index", range(len(_example_blocks())),
                         ids=[f"{m.group(1)}@{m.group(2).splitlines()[0][2:]}" for m in _example_blocks()])
def test_each_commented_example_is_valid_uncommented_where_it_stands(index: int, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(_uncomment(EXAMPLE.read_text(encoding="utf-8"), [_example_blocks()[index]]),
                      encoding="utf-8")
    load_settings(config, env={})


def test_every_commented_example_at_once_is_valid_uncommented(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(_uncomment(EXAMPLE.read_text(encoding="utf-8"), _example_blocks()), encoding="utf-8")
    settings = load_settings(config, env={})
    assert [a.id for a in settings.applications] == ["webmail"]
    assert [s.name for s in settings.alerts.sinks] == ["soar", "soc-slack", "soc-teams", "siem", "soc-mail"]
    assert [(r.date, r.applications, r.users) for r in settings.policy.enforcement] == [
        ("2024-06-30", ["webmail"], ["*@trust.nhs.net"])]
    # The rest of [policy] is still [policy]'s, not swallowed by the table above it.
    assert settings.policy.max_pause_s == 2592000
    assert settings.policy.access_code_ttl_s == 3600
    [client] = settings.radius.clients
    assert (client.name, client.application, client.mode, client.primary) == ("vpn-1", "vpn", "auto", "ldap")
    assert settings.radius.problems({a.id for a in settings.applications}) == [
        "radius client 'vpn-1': no application 'vpn' in [[applications]]",
        'a client uses primary = "ldap": set [radius.ldap] url and user_dn']


# -- environment ----------------------------------------------------------------------------------------


def test_env_overrides_with_types() -> None:
    settings = load_settings(None, env={
        "PUSHAUTH_STORE__REDIS_URL": "redis://redis.internal:6379/2",
        "PUSHAUTH_SERVER__PORT": "9000",
        "PUSHAUTH_CHALLENGES__NUMBER_MATCHING": "false",
        "PUSHAUTH_STORE__SOCKET_TIMEOUT_S": "0.5",
        "PUSHAUTH_LOGGING__LEVEL": "debug",
        "OTHER_VARIABLE": "ignored",
    })
    assert settings.store.redis_url == "redis://redis.internal:6379/2"
    assert settings.server.port == 9000
    assert type(settings.server.port) is int
    assert settings.challenges.number_matching is False
    assert settings.store.socket_timeout_s == 0.5
    assert settings.logging.level == "debug"
    assert settings.challenges.number_digits == 2  # untouched


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pushauth.toml"
    path.write_text('[server]\nport = 8001\nhost = "10.1.2.3"\n', encoding="utf-8")
    settings = load_settings(path, env={"PUSHAUTH_SERVER__PORT": "9000"})
    assert (settings.server.port, settings.server.host) == (9000, "10.1.2.3")
    # PUSHAUTH_CONFIG names the file when no path is given.
    assert load_settings(None, env={"PUSHAUTH_CONFIG": str(path)}).server.port == 8001


def test_env_with_a_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings(None, env={"PUSHAUTH_SERVER__PORT": "eighty"})


def test_the_cli_admin_token_variable_is_not_a_setting() -> None:
    settings = load_settings(None, env={"PUSHAUTH_ADMIN_TOKEN": "token-for-the-enroll-command",
                                        "PUSHAUTH_SERVER__PORT": "9000"})
    assert settings.server.port == 9000


# -- errors name the key ----------------------------------------------------------------------------------

APP = {"id": "webmail", "name": "Webmail", "api_key_sha256": [sha256_hex("k1")]}


@pytest.mark.parametrize(("data", "names"), [
    pytest.param({"server": {"prot": 8080}}, ["server", "`prot`"], id="unknown-key"),
    pytest.param({"nonsense": {}}, ["`nonsense`"], id="unknown-section"),
    pytest.param({"store": {"socket_timeout_s": "slow"}}, ["store.socket_timeout_s", "float"],
                 id="wrong-type"),
    pytest.param({"server": {"port": "http"}}, ["server.port", "int"], id="wrong-type-int"),
    pytest.param({"challenges": {"number_digits": 9}}, ["challenges", "number_digits"], id="digits-9"),
    pytest.param({"challenges": {"max_ttl_s": 601}}, ["challenges", "max_ttl_s"], id="max-ttl-601"),
    pytest.param({"server": {"base_url": "https://auth.example.nhs.uk/"}}, ["server", "base_url"],
                 id="base-url-trailing-slash"),
    pytest.param({"applications": [{**APP, "api_key_sha256": ["not-a-digest"]}]},
                 ["applications[0]", "api_key_sha256"], id="bad-api-key-sha256"),
    pytest.param({"applications": [{**APP, "api_key_sha256": [sha256_hex("k1").upper()]}]},
                 ["applications[0]", "api_key_sha256"], id="upper-case-sha256"),
    pytest.param({"applications": [APP, {**APP, "name": "Again", "api_key_sha256": [sha256_hex("k2")]}]},
                 ["application ids", "unique"], id="duplicate-app-ids"),
    pytest.param({"logging": {"level": "loud"}}, ["logging.level"], id="bad-enum"),
])
def test_bad_settings_name_the_key(data: dict[str, Any], names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(data)
    for name in names:
        assert name in str(info.value), str(info.value)


@pytest.mark.parametrize("interval", [0, -1])
def test_reload_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ConfigError, match="reload_interval_s"):
        from_mapping({"keys": {"reload_interval_s": interval}})


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_settings(path, env={})
    assert str(path) in str(info.value)


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 80\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_settings(path, env={})
    assert str(path) in str(info.value)


def test_bad_value_in_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "pushauth.toml"
    path.write_text("[challenges]\nnumber_digits = 9\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="number_digits"):
        load_settings(path, env={})


# -- challenge settings on a real server ----------------------------------------------------------------


MakeServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def make_server(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[MakeServer]:
    started: list[RunningServer] = []

    async def make(**sections: Any) -> RunningServer:
        running = await start_server(make_settings(redis_url, free_port(), **sections), keyring)
        started.append(running)
        return running

    yield make
    for running in started:
        await running.close()


async def test_six_digit_numbers(make_server: MakeServer, http: aiohttp.ClientSession) -> None:
    running = await make_server(challenges={"number_digits": 6})
    login = LoginFlow(http, running.url)
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
    numbers = [(await login.create(USER))["number"] for _ in range(5)]
    assert all(re.fullmatch(r"[0-9]{6}", n) for n in numbers), numbers

    created = await login.create(USER)
    ch = await phone.fetch(created["id"])
    assert ch.number_matching is True
    # The two-digit prefix of the number is not enough: it is a wrong number, which denies.
    assert await phone.approve(ch, number=created["number"][:2]) == "denied"
    assert (await login.status(created["id"]))["reason"] == "wrong_number"

    created = await login.create(USER)
    assert await phone.approve(created["id"], number=created["number"]) == "approved"
    assert (await login.status(created["id"]))["status"] == "approved"


async def test_number_matching_off(make_server: MakeServer, http: aiohttp.ClientSession) -> None:
    running = await make_server(challenges={"number_matching": False})
    login = LoginFlow(http, running.url)
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
    created = await login.create(USER)
    assert "number" not in created
    assert created["status"] == "pending"

    ch = await phone.fetch(created["id"])
    assert ch.number_matching is False
    assert jws.verify(ch.token, jws.import_public_jwk(
        (await _jwks(http, running.url))["keys"][0]))["number_matching"] is False
    assert jws.read_header(ch.token, typ=CHALLENGE_TYP)["alg"] == "ES256"

    assert await phone.approve(ch) == "approved"  # no number sent
    seen = await login.status(created["id"])
    assert seen["status"] == "approved"
    assert seen["device"] == phone.device_id


async def _jwks(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/.well-known/jwks.json") as resp:
        return dict(await resp.json())
