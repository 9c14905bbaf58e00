"""Replica acknowledgements: a change a client is told about survives the loss of the Redis primary.

Redis replicates asynchronously. Without this, a primary that dies a moment after a phone's "not me" was
acknowledged takes the denial with it: the promoted replica has the prompt still pending, no alert and
no suspension. With `store.replica_acks = N`, each state change a client is answered about is followed,
on the same connection and in the same round trip, by `WAIT N timeout`: Redis answers once N replicas
hold everything this connection wrote (and so everything written before it on that primary: replication
is one ordered stream, so acknowledging an answer also covers the request's earlier replay-cache entry).

WAIT counts the writes of the connection it is sent on, so it must travel with the script: one pipeline
on a single Redis; on Cluster a pipeline whose WAIT is pinned to the node that owns the script's key
(the pipeline sends each node's commands on one connection, in order).

Too few replicas in time (one is down or lagging):

    refuse   StoreUnavailable -> 503. The change is on the primary but was not acknowledged; the client
             sends it again (a phone signs a new request) and finds it done, or, if the primary died,
             makes it on the promoted replica. Nothing acknowledged is lost; writes stop while no
             replica is connected (run two replicas per primary to ride through one failure).
    warn     answer anyway, log `replica_ack_shortfall` and count it: available while a replica is
             down, at the old risk for those changes.

Only the API's answered changes go through here (`Script.__call__(..., acks=...)`); reads, a device
request's gate before a read, and the workers' idempotent writes do not wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import redis.asyncio as aioredis
import structlog

from pushauth import metrics
from pushauth.config import StoreSettings
from pushauth.errors import StoreUnavailable
from pushauth.store.connection import is_cluster

if TYPE_CHECKING:
    from pushauth.store.scripts import ArgT, KeyT

log = structlog.get_logger(__name__)


class ReplicaAcks:
    __slots__ = ("count", "on_shortfall", "timeout_ms")

    def __init__(self, count: int, timeout_ms: int, on_shortfall: Literal["refuse", "warn"]) -> None:
        self.count = count
        self.timeout_ms = timeout_ms
        self.on_shortfall = on_shortfall

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> ReplicaAcks | None:
        if not settings.replica_acks:
            return None
        return cls(settings.replica_acks, settings.replica_ack_timeout_ms, settings.replica_ack_shortfall)

    def __repr__(self) -> str:
        return f"ReplicaAcks({self.count}, {self.timeout_ms} ms, {self.on_shortfall})"

    async def send(self, redis: aioredis.Redis, command: Sequence[ArgT], slot_key: KeyT) -> tuple[Any, Any]:
        """`command` (a script run that `pushauth.store.scripts.Script` built), then WAIT on the same
        connection, in one pipeline: the command's reply and the number of replicas that acknowledged it
        (each an exception if it failed). On Cluster, WAIT goes to the node holding `slot_key`."""
        pipe = redis.pipeline(transaction=False)
        pipe.execute_command(*command)
        if is_cluster(redis):
            node = redis.get_node_from_key(slot_key)  # type: ignore[attr-defined]
            pipe.execute_command("WAIT", self.count, self.timeout_ms, target_nodes=node)
        else:
            pipe.execute_command("WAIT", self.count, self.timeout_ms)
        reply, acked = await pipe.execute(raise_on_error=False)
        return reply, acked

    def settle(self, change: str, reply: Any, acked: Any) -> Any:
        """The reply of a change sent with `send`, once enough replicas hold it (or per `on_shortfall`)."""
        if isinstance(reply, Exception):
            raise reply
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < self.count:
            self._shortfall(change, int(acked))
        return reply

    def _shortfall(self, change: str, acked: int) -> None:
        metrics.REPLICA_ACK_SHORTFALLS.labels(self.on_shortfall).inc()
        log.warning("replica_ack_shortfall", change=change, acked=acked, wanted=self.count,
                    timeout_ms=self.timeout_ms, action=self.on_shortfall)
        if self.on_shortfall == "refuse":
            raise StoreUnavailable(f"{acked} of {self.count} replicas acknowledged the change in time")
