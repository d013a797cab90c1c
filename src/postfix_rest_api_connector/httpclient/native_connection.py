"""One keep-alive connection of the native client, and the deadlines of the requests it carries.

The connection is an asyncio protocol that carries one request at a time: it writes the request,
feeds every read to the response parser and resolves the request's future with the response or
an ``HttpError``; a complete response that allows it returns the connection to its pool.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

from .base import ConnectionClosed, HttpError, InvalidResponse, RequestTimeout, ResponseTooLarge
from .codec import (
    BodyTooLarge,
    HttpProtocolError,
    HttpResponse,
    ResponseIncomplete,
    ResponseParser,
)

TICK = 0.05
"""Seconds between deadline checks: a timeout fires at most twice this late."""


class StaleConnection(HttpError):
    """A reused connection ended before any byte of the answer, most likely closed by the
    server while idle: a GET is sent once more on a new connection, a POST fails."""


class Pool(Protocol):
    """Where a connection goes back once its answer is complete."""

    def release(self, connection: PooledConnection) -> None: ...

    def forget(self, connection: PooledConnection) -> None: ...


class Deadlines:
    """Request deadlines in slots of ``TICK`` seconds, checked by one timer while any is pending.

    Why: a timer per request (``call_at`` and ``cancel``) costs more on uvloop than the rest of
    the request's bookkeeping, and a request timeout needs no millisecond precision.
    """

    __slots__ = ("_slots", "_timer")

    def __init__(self) -> None:
        self._slots: dict[int, set[PooledConnection]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, connection: PooledConnection, deadline: float) -> int:
        slot = int(deadline / TICK) + 1
        pending = self._slots.get(slot)
        if pending is None:
            pending = self._slots[slot] = set()
        pending.add(connection)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(TICK, self._expire)
        return slot

    def remove(self, connection: PooledConnection, slot: int) -> None:
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


class PooledConnection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    __slots__ = (
        "_deadlines",
        "_parser",
        "_pool",
        "_slot",
        "_transport",
        "_waiter",
        "closed",
        "idle_since",
    )

    def __init__(self, pool: Pool, deadlines: Deadlines) -> None:
        self._pool = pool
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
        self._pool.forget(self)
        if self._parser is not None:
            self._fail(self._closed_early(self._parser.started))

    def _closed_early(self, started: bool) -> HttpError:
        if not started and self.idle_since is not None:
            return StaleConnection()
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
            self._pool.release(self)
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
