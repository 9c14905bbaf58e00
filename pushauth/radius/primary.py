# TEMPORARY STUB (not committed): replaced by the radius-primary branch.
from __future__ import annotations

import enum
from typing import Protocol

from pushauth.radius.settings import RadiusSettings


class Verdict(enum.StrEnum):
    OK = "ok"
    WRONG = "wrong"
    UNAVAILABLE = "unavailable"


class PasswordCheck(Protocol):
    name: str

    async def check(self, user: str, password: str) -> Verdict: ...

    async def aclose(self) -> None: ...


class NoCheck:
    name = "none"

    async def check(self, user: str, password: str) -> Verdict:
        return Verdict.OK

    async def aclose(self) -> None:
        return None


class FakeLdap:
    name = "ldap"

    async def check(self, user: str, password: str) -> Verdict:
        return Verdict.OK if password == "right" else Verdict.WRONG  # noqa: S105

    async def aclose(self) -> None:
        return None


def open_checks(settings: RadiusSettings) -> dict[str, PasswordCheck]:
    return {"none": NoCheck(), "ldap": FakeLdap()}
