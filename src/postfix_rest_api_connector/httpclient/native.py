"""An HTTP/1.1 keep-alive client on the event loop itself, for plain ``http://`` targets.

Why not pyreqwest here: it runs each request on its own runtime thread, and for the small,
one-at-a-time requests Postfix causes, handing a request over and waking the loop for the answer
cost more CPU than the request itself (``docs/performance.md``). Here a request is one ``send``
and, as a rule, one read on the loop's thread. TLS, proxies and user info in the URL stay with
pyreqwest (``httpclient.open_client`` chooses).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from socket import SOCK_STREAM
from typing import Any, cast
from urllib.parse import urlsplit

from pyreqwest.http import Url

from .base import (
    ClientSettings,
    ConnectError,
    ConnectionClosed,
    HttpError,
    InvalidResponse,
    RequestTimeout,
    ResponseTooLarge,
)
from .codec import (
    BodyTooLarge,
    HttpProtocolError,
    HttpResponse,
    ResponseIncomplete,
    ResponseParser,
    encode_request,
)

IDLE_TIMEOUT = 90.0
"""Seconds an idle connection is kept, as reqwest does; servers usually close theirs sooner."""
MAX_IDLE = 1024
"""Enough idle connections that steady load opens no new ones."""
_FORM_HEADER = b"Content-Type: application/x-www-form-urlencoded\r\n"
TICK = 0.05
"""Seconds between deadline checks: a timeout fires at most twice this late."""
FALLBACK_DELAY = 0.3
"""Seconds before the next address is tried alongside (hyper waits 300 ms too)."""


class _StaleConnection(HttpError):
    """A reused connection ended before any byte of the answer, most likely closed by the
    server while idle: a GET is sent once more on a new connection, a POST fails."""


class _Deadlines:
    """Request deadlines in slots of ``TICK`` seconds, checked by one timer while any is pending.

    Why: a timer per request (``call_at`` and ``cancel``) costs more on uvloop than the rest of
    the request's bookkeeping, and a request timeout needs no millisecond precision.
    """

    __slots__ = ("_slots", "_timer")

    def __init__(self) -> None:
        self._slots: dict[int, set[_Connection]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, connection: _Connection, deadline: float) -> int:
        slot = int(deadline / TICK) + 1
        pending = self._slots.get(slot)
        if pending is None:
            pending = self._slots[slot] = set()
        pending.add(connection)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(TICK, self._expire)
        return slot

    def remove(self, connection: _Connection, slot: int) -> None:
        pending = self._slots.get(slot)
        if pending is not None:
            pending.discard(connection)
            if not pending:
                del self._slots[slot]

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        try:
            for slot in [slot for slot in self._slots if slot * TICK <= now]:
                for connection in self._slots.pop(slot):
                    connection.time_out()
        finally:
            self._timer = loop.call_later(TICK, self._expire) if self._slots else None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._slots.clear()


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    __slots__ = (
        "_client",
        "_deadlines",
        "_parser",
        "_slot",
        "_transport",
        "_waiter",
        "closed",
        "idle_since",
    )

    def __init__(self, client: NativeClient, deadlines: _Deadlines) -> None:
        self._client = client
        self._deadlines = deadlines
        self._transport: asyncio.Transport | None = None
        self._parser: ResponseParser | None = None
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._slot = 0
        """The deadline slot of the request in flight; 0 when none is."""
        self.idle_since: float | None = None
        """Loop time of the last answer; ``None`` until the first, so a fresh connection is never
        taken for a stale one."""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def send(
        self, loop: asyncio.AbstractEventLoop, payload: bytes, deadline: float, max_body: int
    ) -> asyncio.Future[HttpResponse]:
        assert self._transport is not None
        if self.closed or self._transport.is_closing():
            # closed by the API between connecting and now: nothing was sent
            waiter = loop.create_future()
            waiter.set_exception(ConnectionClosed("API closed the connection before the request"))
            return waiter
        waiter = self._waiter = loop.create_future()
        self._parser = ResponseParser(max_body)
        self._slot = self._deadlines.add(self, deadline)
        self._transport.write(payload)
        return waiter

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self._drop()  # bytes nobody asked for: the connection is out of step
            return
        try:
            response = parser.feed(data)
        except BodyTooLarge:
            self._fail(ResponseTooLarge("API answer exceeds max-response-bytes"))
        except HttpProtocolError as error:
            self._fail(InvalidResponse(str(error)))
        else:
            if response is not None:
                self._finish(response, parser.reusable)

    def eof_received(self) -> bool:
        self.closed = True
        parser = self._parser
        if parser is not None:
            try:
                response = parser.feed_eof()
            except ResponseIncomplete as error:
                self._fail(self._closed_early(error.started))
            else:
                self._finish(response, reusable=False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._client.forget(self)
        if self._parser is not None:
            self._fail(self._closed_early(self._parser.started))

    def _closed_early(self, started: bool) -> HttpError:
        if not started and self.idle_since is not None:
            return _StaleConnection()
        return ConnectionClosed("API closed the connection before answering")

    def time_out(self) -> None:
        self._slot = 0  # already taken off the deadlines
        self._fail(RequestTimeout("API did not answer in time"))

    def _end_request(self) -> asyncio.Future[HttpResponse] | None:
        waiter, self._waiter, self._parser = self._waiter, None, None
        if self._slot:
            self._deadlines.remove(self, self._slot)
            self._slot = 0
        return waiter

    def _finish(self, response: HttpResponse, reusable: bool) -> None:
        waiter = self._end_request()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if reusable:
            self._client.release(self)
        else:
            self._drop()

    def _fail(self, error: HttpError) -> None:
        waiter = self._end_request()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._drop()

    def carries(self, waiter: asyncio.Future[HttpResponse]) -> bool:
        return self._waiter is waiter

    def close(self) -> None:
        """Drops the connection at once; a request it carries fails with ``ConnectionClosed``."""
        if self._waiter is None:
            self._drop()
        else:
            self._fail(ConnectionClosed("the connection was closed by the connector"))

    def _drop(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()


_Pending = Coroutine[Any, Any, HttpResponse]
_AddressInfo = tuple[Any, Any, Any, Any, Any]
"""One ``getaddrinfo`` entry: family, type, protocol, canonical name, address."""


class NativeClient:
    """Keep-alive connections to one ``http://`` target, reused last-in first-out."""

    def __init__(self, settings: ClientSettings) -> None:
        # pyreqwest's URL parser, so that both engines send the same Host and path
        parts = urlsplit(str(Url(settings.target)))
        if (
            parts.scheme != "http"
            or parts.hostname is None
            or parts.username is not None
            or parts.password is not None
        ):
            raise ValueError("the native client serves plain http:// targets without user info")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._post_target = parts.path.encode("ascii") + (
            b"?" + parts.query.encode("ascii") if parts.query else b""
        )
        self._get_prefix = self._post_target + (b"&" if parts.query else b"?")
        headers = [
            ("Host", _host_header(parts.hostname, parts.port)),
            ("User-Agent", settings.user_agent),
            ("Accept", "application/json" if settings.accept_json else "*/*"),
            ("Accept-Encoding", "identity"),  # bodies are read as they come: no compression
            *([("X-Auth-Token", settings.token)] if settings.token is not None else []),
        ]
        self._headers = b"".join(_header_line(name, value) for name, value in headers)
        self._timeout = settings.timeout
        self._max_body = settings.max_body_bytes
        self._idle: list[_Connection] = []
        self._connections: set[_Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._deadlines = _Deadlines()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def get(self, query: str, request_id: str, budget: float | None) -> _Pending:
        target = self._get_prefix + query.encode("ascii")
        payload = encode_request(b"GET", target, self._request_headers(request_id), None)
        return self._exchange(payload, budget, idempotent=True)

    def post_form(self, body: bytes, request_id: str, budget: float | None) -> _Pending:
        headers = self._request_headers(request_id) + _FORM_HEADER
        payload = encode_request(b"POST", self._post_target, headers, body)
        return self._exchange(payload, budget, idempotent=False)

    def _request_headers(self, request_id: str) -> bytes:
        return b"%sX-Request-Id: %s\r\n" % (self._headers, request_id.encode("ascii"))

    async def _exchange(
        self, payload: bytes, budget: float | None, idempotent: bool
    ) -> HttpResponse:
        """A GET that finds its pooled connection closed by the API is sent once more, on a new
        connection; a POST is not (RFC 9112 9.3.1: it may have been acted on), and neither is
        anything else: the endpoint's ``retries`` decide."""
        loop = self._loop or self._bind_loop()
        deadline = loop.time() + (self._timeout if budget is None else budget)
        connection = self._take_idle(loop.time()) or await self._connect(deadline)
        while True:
            waiter = connection.send(loop, payload, deadline, self._max_body)
            try:
                return await waiter
            except _StaleConnection:
                if not idempotent:
                    raise ConnectionClosed("API closed the connection before answering") from None
                idempotent = False  # once
                connection = await self._connect(deadline)
            except asyncio.CancelledError:
                # Only while it still carries this request: once answered, the connection may
                # already be back in the pool and carrying another request.
                if connection.carries(waiter):
                    connection.close()
                raise

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """The loop is looked up once: on Python 3.11 each lookup is a ``getpid`` system call."""
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _take_idle(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed and now - cast(float, connection.idle_since) < IDLE_TIMEOUT:
                return connection
            connection.close()
        return None

    async def _connect(self, deadline: float) -> _Connection:
        if self._closed:
            raise ConnectionClosed("the client is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await loop.getaddrinfo(self._host, self._port, type=SOCK_STREAM)
                if not addresses:
                    raise ConnectError("API host has no address")
                connection = await self._first_to_connect(loop, addresses)
        except TimeoutError:
            raise RequestTimeout("API did not answer in time") from None
        except (OSError, UnicodeError, ValueError) as error:
            # UnicodeError: a host name the resolver's IDNA codec refuses
            raise ConnectError(
                getattr(error, "strerror", None) or "API could not be reached"
            ) from None
        if self._closed:
            connection.close()
            raise ConnectionClosed("the client is closed")
        self._connections.add(connection)
        return connection

    async def _first_to_connect(
        self, loop: asyncio.AbstractEventLoop, addresses: Sequence[_AddressInfo]
    ) -> _Connection:
        """Happy eyeballs, simply (RFC 8305 section 5): the addresses in the resolver's order,
        each started ``FALLBACK_DELAY`` after the one before or as soon as it fails, none cut
        short; the first connection made wins and any other is closed."""
        attempts: set[asyncio.Task[_Connection]] = set()
        waiting = list(addresses)
        error: BaseException = OSError("no address could be reached")
        try:
            while True:
                if waiting:
                    family, _, _, _, address = waiting.pop(0)
                    attempts.add(
                        loop.create_task(self._connect_to(loop, family, address[0], address[1]))
                    )
                done, attempts = await asyncio.wait(
                    attempts,
                    timeout=FALLBACK_DELAY if waiting else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                connected = [attempt.result() for attempt in done if attempt.exception() is None]
                for attempt in done:
                    error = attempt.exception() or error
                for extra in connected[1:]:
                    extra.close()  # two made it in the same round: one is enough
                if connected:
                    return connected[0]
                if not attempts and not waiting:
                    raise error
        finally:
            for attempt in attempts:
                attempt.cancel()
                attempt.add_done_callback(_close_if_connected)

    async def _connect_to(
        self, loop: asyncio.AbstractEventLoop, family: int, host: Any, port: Any
    ) -> _Connection:
        _, connection = await loop.create_connection(
            lambda: _Connection(self, self._deadlines), host, port, family=family
        )
        return connection

    def release(self, connection: _Connection) -> None:
        """A connection whose answer is complete goes back to the idle list, newest last."""
        if self._closed or len(self._idle) >= MAX_IDLE:
            connection.close()
            return
        loop = self._loop or self._bind_loop()
        connection.idle_since = loop.time()
        self._idle.append(connection)
        if self._sweep is None:
            self._sweep = loop.call_later(IDLE_TIMEOUT, self._drop_expired)

    def forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)

    def _drop_expired(self) -> None:
        """Closes idle connections unused for ``IDLE_TIMEOUT``: the oldest are first in the list,
        and the next sweep is due when the oldest left expires."""
        loop = asyncio.get_running_loop()
        idle, now, expired = self._idle, loop.time(), 0
        while expired < len(idle) and (
            idle[expired].closed or now - cast(float, idle[expired].idle_since) >= IDLE_TIMEOUT
        ):
            idle[expired].close()
            expired += 1
        del idle[:expired]
        self._sweep = None
        if idle:
            due = cast(float, idle[0].idle_since) + IDLE_TIMEOUT - now
            self._sweep = loop.call_later(due, self._drop_expired)

    async def close(self) -> None:
        """Every connection closes now, failing what it carries; later requests fail at once."""
        self._closed = True
        self._deadlines.cancel()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._idle.clear()
        for connection in list(self._connections):
            connection.close()


def _host_header(hostname: str, port: int | None) -> str:
    """From the parsed host and port only: nothing of any user info can reach it."""
    host = f"[{hostname}]" if ":" in hostname else hostname
    return host if port is None else f"{host}:{port}"


def _close_if_connected(attempt: asyncio.Task[_Connection]) -> None:
    """A losing attempt that connected all the same is closed, never leaked."""
    if not attempt.cancelled() and attempt.exception() is None:
        attempt.result().close()


def _header_line(name: str, value: str) -> bytes:
    """Refuses what would split or end the header block: the token comes from a file. Sent as
    UTF-8, as pyreqwest sends it."""
    if any((ord(char) < 32 and char != "\t") or ord(char) == 127 for char in value):
        raise ValueError(f"the {name} header value contains a control character")
    return f"{name}: {value}\r\n".encode()
