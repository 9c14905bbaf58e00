"""The HTTP/2 server the fakes share: an asyncio.Protocol over the `h2` library, one instance per connection.

It parses requests (HEADERS [+ CONTINUATION], DATA, END_STREAM) and hands each complete one, as an
`H2Request` (method, path, headers, body), to an `H2App`. The app answers with an `H2Response` (status,
headers, body; after `delay_s`, never (`hang`), or by dropping the connection (`drop`)), either at once or
from a coroutine. A coroutine (and a delayed answer) is cancelled when the client gives up: RST_STREAM on
that stream, or the connection going away.

Flow control both ways: received DATA is acknowledged at once; answer bodies go out only as the peer's
windows and frame size allow, the rest when a WINDOW_UPDATE brings credit.

It also measures what arrived on the wire, for the benchmarks: each request's HEADERS (+ CONTINUATION)
frame bytes, 9-byte frame headers included, and the request's position on its connection (the first
request's HPACK block is the large one: the dynamic table starts empty).

Used by fakes/apns.py (APNs speaks HTTP/2 only) and fakes/fcm.py (HTTP/2, and HTTP/1.1 when ALPN says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings

_PREFACE_LEN = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
_HEADERS, _CONTINUATION = 0x1, 0x9
_connection_ids = itertools.count(1)


def next_connection_id() -> int:
    """A connection id unique in this process (shared with the fakes' HTTP/1.1 connections)."""
    return next(_connection_ids)


@dataclass(frozen=True)
class H2Response:
    """An answer. `headers` without `:status`; no body: HEADERS with END_STREAM only."""

    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    delay_s: float = 0.0  # answer this much later (cancelled if the client gives up meanwhile)
    hang: bool = False  # never answer
    drop: bool = False  # abort the connection (TCP reset, no GOAWAY)


@dataclass(eq=False)
class H2Request:
    """One request stream as received."""

    stream_id: int
    headers: dict[str, str]  # as received, pseudo-headers included; names are lower case in HTTP/2
    body: bytearray = field(default_factory=bytearray)
    received_at: float = 0.0  # time.time() when its HEADERS arrived
    headers_frame_bytes: int = 0  # its HEADERS + CONTINUATION frames on the wire, frame headers included
    index: int = 0  # 0 for the first request on its connection, 1 for the second, ...
    answered: bool = False  # the whole answer went out (False when the stream was reset or lost)

    @property
    def method(self) -> str:
        return self.headers.get(":method", "")

    @property
    def path(self) -> str:
        return self.headers.get(":path", "")


class H2App:
    """What an `H2ServerProtocol` reports to. Override `h2_request`; the other hooks are optional."""

    def h2_request(self, conn: H2ServerProtocol, request: H2Request) -> H2Response | Awaitable[H2Response]:
        raise NotImplementedError

    def h2_connection_made(self, conn: H2ServerProtocol) -> None:
        """The TLS handshake is done; before the server's SETTINGS go out."""

    def h2_connection_lost(self, conn: H2ServerProtocol) -> None:
        """After its open streams were closed (`h2_stream_closed`) and its tasks cancelled."""

    def h2_stream_opened(self, conn: H2ServerProtocol, request: H2Request) -> None:
        """A request's HEADERS arrived (its body may follow)."""

    def h2_stream_closed(self, conn: H2ServerProtocol, request: H2Request) -> None:
        """Once per opened stream: answered (`request.answered`), reset by the client, or connection lost."""

    def h2_flow_control_wait(self, conn: H2ServerProtocol, request: H2Request) -> None:
        """An answer body could not go out at once for lack of flow-control credit."""


class H2ServerProtocol(asyncio.Protocol):
    """One HTTP/2 server connection (server side of `h2`), reporting to `app`."""

    def __init__(self, app: H2App, *, max_concurrent_streams: int = 100, max_header_list_size: int = 65536,
                 connection_id: int | None = None) -> None:
        self.app = app
        self.id = next_connection_id() if connection_id is None else connection_id
        self.transport: asyncio.Transport | None = None
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
        })
        self.streams: dict[int, H2Request] = {}  # open: not yet answered in full
        self.pending: dict[int, bytes] = {}  # answer bodies (the rest of them) waiting for credit
        self.tasks: dict[int, asyncio.Future[Any]] = {}  # per stream: the app's coroutine or a delayed answer
        self.requests_seen = 0
        # TLS facts, for the app (server_name is the app's to fill in: SNI needs a context callback).
        self.server_name: str | None = None
        self.alpn: str | None = None
        self.client_cert = False
        # Wire scanner (frame boundaries, to measure HEADERS frames): preface, then 9-byte headers + payloads.
        self._preface_left = _PREFACE_LEN
        self._frame_head = b""
        self._payload_left = 0
        self._header_bytes: dict[int, int] = {}

    # -- connection --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.alpn = sslobj.selected_alpn_protocol()
            self.client_cert = bool(sslobj.getpeercert())
        self.app.h2_connection_made(self)
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        tasks, self.tasks = self.tasks, {}
        for task in tasks.values():
            task.cancel()
        for stream_id in list(self.streams):
            self._finish(stream_id, answered=False)
        self.pending.clear()
        self.app.h2_connection_lost(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.open:
            assert self.transport is not None
            self.transport.write(data)

    # -- receiving ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._scan(data)
        try:
            events = self.h2.receive_data(data)
        except H2Error:
            self.flush()
            self.close()
            return
        for event in events:
            if isinstance(event, RequestReceived) and event.stream_id is not None:
                self._opened(event.stream_id, dict(event.headers or []))  # type: ignore[arg-type]
            elif isinstance(event, DataReceived) and event.stream_id is not None:
                if event.stream_id in self.streams:
                    self.streams[event.stream_id].body += event.data or b""
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            elif isinstance(event, StreamEnded) and event.stream_id in self.streams:
                self._complete(self.streams[event.stream_id])
            elif isinstance(event, StreamReset) and event.stream_id is not None:
                task = self.tasks.pop(event.stream_id, None)
                if task is not None:
                    task.cancel()
                self._finish(event.stream_id, answered=False)
            elif isinstance(event, WindowUpdated):
                self.send_pending()
            elif isinstance(event, ConnectionTerminated):
                self.flush()
                self.close()
                return
        self.flush()

    def _scan(self, data: bytes) -> None:
        """Follow frame boundaries in the raw bytes and add up HEADERS/CONTINUATION frames per stream."""
        i, n = 0, len(data)
        while i < n:
            if self._preface_left:
                step = min(self._preface_left, n - i)
                self._preface_left -= step
            elif self._payload_left:
                step = min(self._payload_left, n - i)
                self._payload_left -= step
            else:
                step = min(9 - len(self._frame_head), n - i)
                self._frame_head += data[i:i + step]
                if len(self._frame_head) == 9:
                    head, self._frame_head = self._frame_head, b""
                    length = int.from_bytes(head[0:3], "big")
                    if head[3] in (_HEADERS, _CONTINUATION):
                        stream_id = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                        self._header_bytes[stream_id] = self._header_bytes.get(stream_id, 0) + 9 + length
                    self._payload_left = length
            i += step

    def _opened(self, stream_id: int, headers: dict[str, str]) -> None:
        request = H2Request(stream_id, headers, received_at=time.time(), index=self.requests_seen,
                            headers_frame_bytes=self._header_bytes.pop(stream_id, 0))
        self.requests_seen += 1
        self.streams[stream_id] = request
        self.app.h2_stream_opened(self, request)

    def _complete(self, request: H2Request) -> None:
        self._header_bytes.pop(request.stream_id, None)  # trailers, if any
        result = self.app.h2_request(self, request)
        if isinstance(result, H2Response):
            self._apply(request, result)
            return
        task = asyncio.ensure_future(result)
        self.tasks[request.stream_id] = task
        task.add_done_callback(functools.partial(self._app_done, request))

    def _app_done(self, request: H2Request, task: asyncio.Future[H2Response]) -> None:
        if self.tasks.get(request.stream_id) is task:
            del self.tasks[request.stream_id]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            asyncio.get_running_loop().call_exception_handler(
                {"message": "the fake's HTTP/2 handler failed", "exception": exc, "protocol": self})
        if self.streams.get(request.stream_id) is not request or not self.open:
            return
        if exc is None:
            self._apply(request, task.result())
        else:
            with contextlib.suppress(H2Error):
                self.h2.reset_stream(request.stream_id, ErrorCodes.INTERNAL_ERROR)
            self._finish(request.stream_id, answered=False)
        self.flush()

    # -- answering ---------------------------------------------------------------------------------

    def _apply(self, request: H2Request, response: H2Response) -> None:
        if response.drop:
            assert self.transport is not None
            self.transport.abort()
        elif response.hang:
            pass
        elif response.delay_s:
            self.tasks[request.stream_id] = asyncio.get_running_loop().create_task(
                self._answer_later(request, response))
        else:
            self.answer(request, response)

    async def _answer_later(self, request: H2Request, response: H2Response) -> None:
        await asyncio.sleep(response.delay_s)
        if self.tasks.get(request.stream_id) is asyncio.current_task():
            del self.tasks[request.stream_id]
        if self.streams.get(request.stream_id) is request and self.open:
            self.answer(request, response)
            self.flush()

    def answer(self, request: H2Request, response: H2Response) -> None:
        """Send `response` on the request's stream now (the body as far as flow control allows)."""
        stream_id = request.stream_id
        headers = [(":status", str(response.status)), *((k.lower(), v) for k, v in response.headers)]
        try:
            self.h2.send_headers(stream_id, headers, end_stream=not response.body)
        except H2Error:  # the client closed the stream meanwhile
            self._finish(stream_id, answered=False)
            return
        if not response.body:
            self._finish(stream_id, answered=True)
            return
        self.pending[stream_id] = response.body
        self.send_pending()
        if stream_id in self.pending:
            self.app.h2_flow_control_wait(self, request)

    def send_pending(self) -> None:
        """Send as much of the waiting answer bodies as the flow-control windows allow."""
        for stream_id, body in list(self.pending.items()):
            try:
                while body:
                    size = min(len(body), self.h2.local_flow_control_window(stream_id),
                               self.h2.max_outbound_frame_size)
                    if size <= 0:
                        break
                    self.h2.send_data(stream_id, body[:size], end_stream=size == len(body))
                    body = body[size:]
            except H2Error:  # the client reset or closed the stream meanwhile
                del self.pending[stream_id]
                self._finish(stream_id, answered=False)
                continue
            if body:
                self.pending[stream_id] = body
            else:
                del self.pending[stream_id]
                self._finish(stream_id, answered=True)
        self.flush()

    def _finish(self, stream_id: int, *, answered: bool) -> None:
        self.pending.pop(stream_id, None)
        request = self.streams.pop(stream_id, None)
        if request is not None:
            request.answered = answered
            self.app.h2_stream_closed(self, request)


__all__ = ["H2App", "H2Request", "H2Response", "H2ServerProtocol", "next_connection_id"]
