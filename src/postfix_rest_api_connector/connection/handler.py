"""Connection handling, the same for every mode: read, feed the codec, answer each request in order.

Postfix keeps a connection for many requests and sends the next only after the reply, but a request
may arrive split over reads or several in one read; the codec sorts that out and this loop answers
them one at a time, in order. Limits live here: connections per listener, pipelined requests
waiting, write backpressure, the idle timeout, the read deadline, and the drain on shutdown. A
reload that replaces an endpoint by one of the same mode hands its connections over instead of
closing them (``Successor``): Postfix's next request on them is answered, not lost.

A protocol whose requests carry ids (sasl) gets ``ConcurrentConnection`` instead: the same shell,
but every request is answered on its own, as soon as its answer is known.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from ..core.model import Outcome, PermanentError, Request, TemporaryError
from ..protocols import Decoder, FramingError, ReplyTable
from .tracker import ConnectionTracker

log = logging.getLogger(__name__)

MAX_WAITING = 32
"""Requests decoded but not yet answered before we stop reading; Postfix itself sends one."""
FEED_BYTES = 4096
"""Bytes given to the decoder at a time, and only while fewer than ``MAX_WAITING`` requests
wait: one read (uvloop's reach 256 KiB) of tiny pipelined requests would otherwise become tens
of thousands of request objects at once. The rest waits as bytes."""
MAX_IN_FLIGHT = 32
"""``ConcurrentConnection``: requests of one connection being answered at once; past it, the
next ones wait (and, past ``MAX_WAITING`` of those, reading stops). smtpd sends one at a time."""
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on with a zero timeout: ``close`` sends a TCP reset instead of a FIN."""


@dataclass(frozen=True, slots=True)
class ModeBinding:
    """What a mode plugs into the generic connection (``runtime.endpoint`` builds it from the
    table of modes and the endpoint's service)."""

    new_decoder: Callable[[], Decoder]
    answer_now: Callable[[Request], bytes | None]
    """The reply when it needs no waiting (a malformed request, a cache hit), else ``None``."""
    ask: Callable[[Request], Coroutine[Any, Any, Outcome]]
    """The service's answer, for a request ``answer_now`` left to wait for."""
    reply: ReplyTable
    """The mode's reply table; ``None`` for the request when the error is the connection's."""
    greeting: Callable[[], bytes] | None = None
    """Sent first on every new connection, for a protocol where the server speaks first."""
    concurrent: bool = False
    """Requests are answered independently, as they complete (``ConcurrentConnection``)."""
    close_with_reset: bool = False
    """Close TCP connections with a reset, never a FIN."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-listener limits, in seconds and counts."""

    idle_timeout: float
    read_timeout: float
    max_connections: int


@dataclass(frozen=True, slots=True)
class Successor:
    """The endpoint of the same mode that a reload put in a connection's endpoint's place: what
    the connection goes on with once it has answered what it received before."""

    binding: ModeBinding
    tracker: ConnectionTracker
    limits: Limits


@dataclass(frozen=True, slots=True)
class _Fatal:
    """Answer with this error, then close: framing is lost or the client is too slow."""

    error: PermanentError | TemporaryError


class Connection(asyncio.Protocol):
    """One client connection; one request in flight at a time, replies in request order."""

    def __init__(self, binding: ModeBinding, tracker: ConnectionTracker, limits: Limits) -> None:
        self._binding = binding
        self._decoder = binding.new_decoder()
        self._tracker = tracker
        self._limits = limits
        self._read_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[Request | _Fatal] = deque()
        self._unfed = b""
        """Bytes received but not yet given to the decoder (``FEED_BYTES``)."""
        self._in_flight: asyncio.Task[None] | None = None
        self._last_activity = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._draining = False
        self._successor: Successor | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if len(self._tracker.open) >= self._limits.max_connections:
            log.warning(
                "refusing a connection: max-connections (%d) reached", len(self._tracker.open)
            )
            self._write(self._binding.reply(None, TemporaryError("too many connections")))
            self._close()
            return
        self._tracker.add(self)
        self._idle_timer = self._loop.call_later(self._limits.idle_timeout, self._check_idle)
        if self._binding.greeting is not None:
            self._write(self._binding.greeting())
            self._watch_read_deadline(False)  # a handshake the client owes has a deadline too

    def data_received(self, data: bytes) -> None:
        self._unfed = self._unfed + data if self._unfed else data
        self._feed()
        if self._in_flight is None:
            self._answer_next()

    def _feed(self) -> None:
        """Decode received bytes, ``FEED_BYTES`` at a time, while fewer than ``MAX_WAITING``
        requests wait; stop reading while bytes are left over."""
        progressed = False
        while self._unfed and len(self._waiting) < MAX_WAITING:
            chunk, self._unfed = self._unfed[:FEED_BYTES], self._unfed[FEED_BYTES:]
            try:
                requests = self._decoder.feed(chunk)
            except FramingError as error:
                self._waiting.extend(error.completed)
                self._queue_fatal(PermanentError(f"malformed request: {error}"))
                return
            if requests:
                progressed = True
                self._waiting.extend(requests)
                self._last_activity = self._loop.time()
        self._watch_read_deadline(progressed)
        if self._unfed or len(self._waiting) >= MAX_WAITING:
            self._pause_reading()

    def eof_received(self) -> bool:
        """Half-closed by the client: answer what it sent, then close."""
        self._successor = None
        self.drain()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._tracker.remove(self)
        for timer in (self._idle_timer, self._read_deadline, self._write_deadline):
            if timer is not None:
                timer.cancel()
        # A request in flight is left to finish (bounded by request-timeout): its API call may be
        # shared with other connections' lookups of the same key; its answer is dropped.
        self._waiting.clear()
        self._unfed = b""

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._pause_reading()
        self._write_deadline = self._loop.call_later(
            self._limits.read_timeout, self._on_write_stalled
        )

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        if self._in_flight is None:
            self._answer_next()

    # control from the listener

    def drain(self) -> None:
        """Stop reading; close once every request already received is answered."""
        self._draining = True
        self._pause_reading()
        if not self._busy():
            self._drained()

    def hand_over(self, successor: Successor) -> None:
        """Answer what was received, as ``drain`` does, then go on with ``successor`` instead of
        closing: a client's request sent just after its last answer would meet a closed
        connection."""
        self._successor = successor
        self.drain()

    def abort(self) -> None:
        if self._transport is not None:
            self._reset_on_close()
            self._transport.abort()

    def _busy(self) -> bool:
        """Requests received and not yet answered."""
        return self._in_flight is not None or bool(self._waiting) or bool(self._unfed)

    # the request loop

    def _answer_next(self) -> None:
        """Answer waiting requests in order: at once where possible, else one task at a time.

        Stops while the client is not reading its replies; resume_writing() picks up again.
        """
        while not self._writing_paused:
            if len(self._waiting) < MAX_WAITING and self._unfed:
                self._feed()
            if not self._waiting:
                if self._draining:
                    self._drained()
                else:
                    self._maybe_resume_reading()
                return
            request = self._waiting.popleft()
            if isinstance(request, _Fatal):
                log.info("closing connection: %s", request.error.reason)
                self._write(self._binding.reply(None, request.error))
                self._close()
                return
            reply = self._binding.answer_now(request)
            if reply is None:
                self._in_flight = self._loop.create_task(self._answer_later(request))
                return
            self._write(reply)
            self._last_activity = self._loop.time()

    async def _answer_later(self, request: Request) -> None:
        """Writes the reply as soon as it is known, in this task's own step (a done callback
        would wait for the loop's next round, behind every other connection's reads)."""
        try:
            reply = self._binding.reply(request, await self._binding.ask(request))
            self._in_flight = None
            if self._transport is None or self._transport.is_closing():
                return
            self._write(reply)
            self._last_activity = self._loop.time()
            self._answer_next()
        except asyncio.CancelledError:
            self._in_flight = None
            raise
        except Exception:
            self._in_flight = None
            log.exception("closing connection after an internal error")
            self._close()

    def _give_up(self, error: PermanentError | TemporaryError) -> None:
        """Stop reading; answer what came before, then this error, then close."""
        self._queue_fatal(error)
        if self._in_flight is None:
            self._answer_next()

    def _queue_fatal(self, error: PermanentError | TemporaryError) -> None:
        """This error after what came before; nothing received later is decoded or answered."""
        if any(isinstance(request, _Fatal) for request in self._waiting):
            return
        self._unfed = b""
        self._waiting.append(_Fatal(error))
        self.drain()

    def _watch_read_deadline(self, progressed: bool) -> None:
        """A request that has started must be complete within ``read_timeout`` (slow clients):
        the deadline runs from the first bytes of the request now partial, so it starts again
        whenever one completes. Bytes received but not yet decoded are no client's slowness."""
        partial = self._decoder.has_partial and not self._unfed
        if self._read_deadline is not None and (progressed or not partial):
            self._read_deadline.cancel()
            self._read_deadline = None
        if partial and self._read_deadline is None:
            self._read_deadline = self._loop.call_later(
                self._limits.read_timeout, self._on_read_deadline
            )

    def _on_write_stalled(self) -> None:
        """The client has read none of its replies for ``read_timeout``: free the slot."""
        self._write_deadline = None
        log.info("aborting a connection whose client reads no replies")
        self.abort()

    def _on_read_deadline(self) -> None:
        self._read_deadline = None
        self._give_up(TemporaryError("request not completed within read-timeout"))

    def _write(self, reply: bytes) -> None:
        assert self._transport is not None
        self._transport.write(reply)

    def _drained(self) -> None:
        """Everything received before ``drain`` is answered: close, or move to the successor
        (unless it is itself draining: a shutdown came after the reload)."""
        successor, self._successor = self._successor, None
        if (
            successor is None
            or successor.tracker.draining
            or self._transport is None
            or self._transport.is_closing()
        ):
            self._close()
            return
        self._tracker.remove(self)
        self._binding, self._tracker, self._limits = (
            successor.binding,
            successor.tracker,
            successor.limits,
        )
        self._tracker.add(self)
        self._draining = False
        self._maybe_resume_reading()

    def _close(self) -> None:
        """After the replies already written have gone out."""
        if self._transport is not None and not self._transport.is_closing():
            self._reset_on_close()
            self._transport.close()

    def _reset_on_close(self) -> None:
        assert self._transport is not None
        if not self._binding.close_with_reset:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)

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
            and not self._unfed
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
        idle_timeout = self._limits.idle_timeout
        if not self._busy() and idle_for >= idle_timeout:
            log.debug("closing connection idle for %.0f s", idle_for)
            self._close()
            return
        delay = max(idle_timeout - idle_for, 0.0) or idle_timeout
        self._idle_timer = self._loop.call_later(delay, self._check_idle)


class ConcurrentConnection(Connection):
    """For a protocol whose requests carry ids (sasl): each request is answered on its own, as
    soon as its answer is known, up to ``MAX_IN_FLIGHT`` at once; replies the codec can give at
    once still leave in request order. A reply of no bytes resets the connection: that is how
    such a protocol says "try again later" (and what becomes of the other answers still owed).
    """

    def __init__(self, binding: ModeBinding, tracker: ConnectionTracker, limits: Limits) -> None:
        super().__init__(binding, tracker, limits)
        self._answering: set[asyncio.Task[None]] = set()

    def _busy(self) -> bool:
        return bool(self._answering) or super()._busy()

    def _answer_next(self) -> None:
        """Start on every waiting request while fewer than ``MAX_IN_FLIGHT`` are being answered;
        stops while the client is not reading its replies, as the ordered loop does."""
        while not self._writing_paused and len(self._answering) < MAX_IN_FLIGHT:
            if len(self._waiting) < MAX_WAITING and self._unfed:
                self._feed()
            if not self._waiting:
                if not self._draining:
                    self._maybe_resume_reading()
                elif not self._answering:
                    self._drained()
                return
            request = self._waiting[0]
            if isinstance(request, _Fatal):
                if self._answering:
                    return  # what came before it is answered first; the last one comes back
                log.info("closing connection: %s", request.error.reason)
                self._write(self._binding.reply(None, request.error))
                self._close()
                return
            self._waiting.popleft()
            reply = self._binding.answer_now(request)
            if reply is None:
                task = self._loop.create_task(self._answer_alone(request))
                self._answering.add(task)
                continue
            self._send(reply)
            self._last_activity = self._loop.time()

    async def _answer_alone(self, request: Request) -> None:
        """The reply once the service has answered; other requests go on meanwhile. Once the
        client has gone, the answer is dropped (the call is never cancelled: see ``Connection``)."""
        try:
            reply = self._binding.reply(request, await self._binding.ask(request))
            if self._transport is None or self._transport.is_closing():
                return
            self._send(reply)
            self._last_activity = self._loop.time()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("closing connection after an internal error")
            self._close()
        finally:
            current = asyncio.current_task()
            if current is not None:
                self._answering.discard(current)  # before the next: this one is done
        if self._transport is not None and not self._transport.is_closing():
            self._answer_next()

    def _send(self, reply: bytes) -> None:
        if reply:
            self._write(reply)
        else:
            log.debug("resetting the connection: the protocol's temporary failure")
            self._close()
