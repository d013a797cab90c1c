"""Connection handling, the same for every mode: read, feed the codec, answer each request in order.

Postfix keeps a connection for many requests and sends the next only after the reply, but a request
may arrive split over reads or several in one read; the codec sorts that out and this loop answers
them one at a time, in order. Limits live here: pipelined requests waiting, write backpressure,
the idle timeout, and the drain on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from .codecs import Decoder, FramingError
from .model import LookupRequest, Malformed, PolicyRequest

log = logging.getLogger(__name__)

Request = LookupRequest | PolicyRequest | Malformed

MAX_WAITING = 32
"""Requests decoded but not yet answered before we stop reading; Postfix itself sends one."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """What a mode plugs into the generic connection."""

    new_decoder: Callable[[], Decoder]
    answer: Callable[[Request], Coroutine[Any, Any, bytes]]
    reject: Callable[[str], bytes]
    """The error reply sent before closing a connection whose framing is lost."""


@dataclass(frozen=True, slots=True)
class _Fatal:
    reason: str


class ConnectionTracker:
    """The open connections of one listener, so that shutdown can drain them."""

    def __init__(self) -> None:
        self.open: set[Connection] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    def add(self, connection: Connection) -> None:
        self.open.add(connection)
        self._all_closed.clear()

    def remove(self, connection: Connection) -> None:
        self.open.discard(connection)
        if not self.open:
            self._all_closed.set()

    async def drain(self, grace: float) -> None:
        """Answer what each connection has received, then close; abort the rest after ``grace``."""
        for connection in list(self.open):
            connection.drain()
        try:
            await asyncio.wait_for(self._all_closed.wait(), grace)
        except TimeoutError:
            log.warning("%d connection(s) still busy at the shutdown deadline", len(self.open))
            for connection in list(self.open):
                connection.abort()


class Connection(asyncio.Protocol):
    """One client connection; one request in flight at a time, replies in request order."""

    def __init__(self, exchange: Exchange, tracker: ConnectionTracker, idle_timeout: float) -> None:
        self._exchange = exchange
        self._decoder = exchange.new_decoder()
        self._tracker = tracker
        self._idle_timeout = idle_timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[Request | _Fatal] = deque()
        self._in_flight: asyncio.Task[bytes] | None = None
        self._last_activity = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._draining = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._tracker.add(self)
        self._idle_timer = self._loop.call_later(self._idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        try:
            requests = self._decoder.feed(data)
        except FramingError as error:
            self._waiting.append(_Fatal(str(error)))
            self._draining = True
            self._pause_reading()
        else:
            if not requests:
                return
            self._waiting.extend(requests)
            self._last_activity = self._loop.time()
            if len(self._waiting) >= MAX_WAITING:
                self._pause_reading()
        if self._in_flight is None:
            self._answer_next()

    def eof_received(self) -> bool:
        """Half-closed by the client: answer what it sent, then close."""
        self.drain()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._tracker.remove(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._in_flight is not None:
            self._in_flight.cancel()
        self._waiting.clear()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._maybe_resume_reading()

    # control from the listener

    def drain(self) -> None:
        """Stop reading; close once every request already received is answered."""
        self._draining = True
        self._pause_reading()
        if self._in_flight is None and not self._waiting:
            self._close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # the request loop

    def _answer_next(self) -> None:
        if not self._waiting:
            if self._draining:
                self._close()
            else:
                self._maybe_resume_reading()
            return
        request = self._waiting.popleft()
        if isinstance(request, _Fatal):
            log.info("closing connection: %s", request.reason)
            self._write(self._exchange.reject(request.reason))
            self._close()
            return
        task = self._loop.create_task(self._exchange.answer(request))
        task.add_done_callback(self._on_answered)
        self._in_flight = task

    def _on_answered(self, task: asyncio.Task[bytes]) -> None:
        self._in_flight = None
        if task.cancelled() or self._transport is None or self._transport.is_closing():
            return
        error = task.exception()
        if error is not None:
            log.error("closing connection after an internal error", exc_info=error)
            self._close()
            return
        self._write(task.result())
        self._last_activity = self._loop.time()
        self._answer_next()

    def _write(self, reply: bytes) -> None:
        assert self._transport is not None
        self._transport.write(reply)

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self._reading_paused
            and not self._draining
            and not self._writing_paused
            and len(self._waiting) < MAX_WAITING
            and self._transport is not None
            and not self._transport.is_closing()
        ):
            self._reading_paused = False
            self._transport.resume_reading()

    def _check_idle(self) -> None:
        """Close after ``idle_timeout`` without a complete request; a busy connection is not idle.

        Activity is counted per request, not per byte, so a client trickling bytes cannot hold a
        connection open forever.
        """
        idle_for = self._loop.time() - self._last_activity
        if self._in_flight is None and not self._waiting and idle_for >= self._idle_timeout:
            log.debug("closing connection idle for %.0f s", idle_for)
            self._close()
            return
        delay = max(self._idle_timeout - idle_for, 0.0) or self._idle_timeout
        self._idle_timer = self._loop.call_later(delay, self._check_idle)
