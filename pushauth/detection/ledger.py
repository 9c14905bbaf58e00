"""The Python side of the ledger (`lua/ledger.lua`): the calling convention every script that includes it
shares, and the shape of its replies.

Such a script takes KEYS[1] = the user hash (it routes the call to the user's slot; every other key is
built from UP and shares its hash tag) and ARGV[1..6] = `LedgerCall.argv()`, then its own arguments by
name (its wrapper builds them). It answers {result, NOTES, detail...}: NOTES are the "<alert id>|<version>"
pairs to hand to the alert stream (`pushauth.alerts.store.AlertStore.announce`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pushauth.store.scripts import ArgT

R = TypeVar("R", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class LedgerCall:
    user_prefix: str  # UP: "<prefix>:{<uid>}:", what the ledger builds the user's keys from
    now: int  # NOW: integer Unix seconds
    config: str  # CFG: `rules.ledger_config` as JSON
    alert_id: str  # AID: a fresh alert id, used if an event opens a new incident
    user: str  # USER: the canonical user name ('' = read it from the user hash)
    channel: str  # CHAN: the pub/sub channel that wakes waiting login flows

    def argv(self) -> list[ArgT]:
        return [self.user_prefix, self.now, self.config, self.alert_id, self.user, self.channel]


@dataclass(frozen=True, slots=True)
class LedgerReply(Generic[R]):
    """A ledger script's answer: its result word as an enum, the alert notes, and what follows."""

    result: R
    notes: list[str]
    detail: list[Any]

    @classmethod
    def decode(cls, results: type[R], reply: list[Any]) -> LedgerReply[R]:
        return cls(results(reply[0]), list(reply[1]), list(reply[2:]))
