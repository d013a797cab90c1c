"""The shared tier's read path: ``MGET`` commands pipelined on one connection of its own, their
replies parsed by hiredis (the C parser of the Redis protocol that redis-py uses too).

Every lookup that misses the in-process tier reads the shared one, so this path is the tier's
cost per request. Through redis-py's client a command costs about 55 us of CPU (its connection
pool, command wrapper and stream reader); written on one connection and parsed in the protocol's
own callback it costs about 12 (docs/performance.md). Everything else (locks, stores, messages,
the subscription, the probe) stays on redis-py: it is rarer, and needs more of the protocol.

One connection carries every batch in flight, replies in order. A batch without its reply
within ``timeout`` closes the connection, failing every batch on it (their replies could no
longer be matched), and the next batch connects again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import hiredis

MAX_UNPARSED_BYTES = 16 * 1024 * 1024
"""Bytes of a reply still being received: entries are small, so more is garbage under our keys
or a server that is not Redis; the connection closes."""

Values = list[bytes | None]
Delivered = Callable[["Values | ReadFailed"], None]
Replied = Callable[[object], None]
"""Told a reply as hiredis gives it (an error reply as a ``ReplyError`` object) or
``ReadFailed``."""


class ReadFailed(Exception):
    """No usable reply; ``kind`` is a shared-cache error kind (``timeout``, ``connection``,
    ``garbage``, ``other``), never the server's message, which could carry a key."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Server:
    """Where and how to connect, read off the ``shared-cache`` URL by redis-py's own parser."""

    host: str | None
    port: int
    path: str | None
    tls: bool
    db: int
    username: str | None
    password: str | None

    @classmethod
    def of(cls, url: str, username: str | None, password: str | None) -> Server:
        from redis.asyncio.connection import SSLConnection, parse_url  # noqa: PLC0415

        parsed: dict[str, Any] = dict(parse_url(url))
        return cls(
            host=parsed.get("host"),
            port=int(parsed.get("port") or 6379),
            path=parsed.get("path"),
            tls=parsed.get("connection_class") is SSLConnection,
            db=int(parsed.get("db") or 0),
            username=username or parsed.get("username"),
            password=password,
        )


class _Batch:
    __slots__ = ("delivered", "timer")

    def __init__(self, delivered: Replied, timer: asyncio.TimerHandle) -> None:
        self.delivered = delivered
        self.timer = timer


class _Replies(asyncio.Protocol):
    """One connection: each reply goes to the oldest batch still waiting."""

    def __init__(self, on_lost: Callable[[_Replies], None]) -> None:
        self._reader = hiredis.Reader()
        self._unparsed = 0
        """Bytes received since the last complete reply (``MAX_UNPARSED_BYTES``)."""
        self._waiting: deque[_Batch] = deque()
        self._transport: asyncio.Transport | None = None
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def send(self, command: bytes, delivered: Replied, timeout: float) -> None:
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        self._waiting.append(_Batch(delivered, loop.call_later(timeout, self._expired)))
        self._transport.write(command)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while self._waiting:
                reply = self._reader.gets()
                if reply is False:
                    break
                batch = self._waiting.popleft()
                batch.timer.cancel()
                batch.delivered(reply)
        except hiredis.ProtocolError:
            self.fail("garbage")
            return
        # hiredis keeps consumed bytes in its count (``len``): what is left is counted here
        self._unparsed = self._unparsed + len(data) if self._reader.has_data() else 0
        if self._unparsed > MAX_UNPARSED_BYTES or (not self._waiting and self._unparsed):
            self.fail("garbage")  # too much, or bytes nobody asked for

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_waiting("connection")
        self._on_lost(self)

    def _expired(self) -> None:
        self.fail("timeout")

    def fail(self, kind: str) -> None:
        """Every batch waiting fails with ``kind``; the connection closes."""
        self._fail_waiting(kind)
        if self._transport is not None:
            self._transport.abort()

    def _fail_waiting(self, kind: str) -> None:
        waiting, self._waiting = self._waiting, deque()
        for batch in waiting:
            batch.timer.cancel()
            batch.delivered(ReadFailed(kind))


def _pack(*parts: str | bytes) -> bytes:
    """One command in the protocol's encoding (hiredis's stub types its tuple as of one item)."""
    command: Any = parts
    return cast(bytes, hiredis.pack_command(command))


def _values(reply: object, count: int) -> Values | ReadFailed:
    if isinstance(reply, ReadFailed):
        return reply
    if (
        isinstance(reply, list)
        and len(reply) == count
        and all(v is None or isinstance(v, bytes) for v in reply)
    ):
        return reply
    return ReadFailed("other")  # an error reply (LOADING, NOAUTH, ...) or not MGET's shape


class PipelinedReads:
    """``MGET`` for the shared tier, pipelined on one connection it opens when first needed."""

    def __init__(self, server: Server, timeout: float) -> None:
        self._server = server
        self._timeout = timeout
        self._connection: _Replies | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._queued: list[tuple[bytes, Replied]] = []
        """Batches sent while connecting: written once the connection is made."""
        self._closed = False

    def mget(self, keys: list[bytes], delivered: Delivered) -> None:
        """``delivered`` gets the values in the order of ``keys`` (``None`` for no entry) or
        ``ReadFailed``, within ``timeout``; called from the event loop, never at once."""
        command = _pack("MGET", *keys)
        count = len(keys)

        def replied(reply: object) -> None:
            delivered(_values(reply, count))

        if self._connection is not None:
            self._connection.send(command, replied, self._timeout)
            return
        self._queued.append((command, replied))
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                connection = await self._open()
        except (OSError, TimeoutError, ReadFailed, ssl.SSLError) as error:
            kind = (
                error.kind
                if isinstance(error, ReadFailed)
                else ("timeout" if isinstance(error, TimeoutError) else "connection")
            )
            queued, self._queued = self._queued, []
            for _, replied in queued:
                replied(ReadFailed(kind))
            return
        finally:
            self._connecting = None
        if self._closed:
            connection.fail("connection")
            return
        self._connection = connection
        queued, self._queued = self._queued, []
        for command, replied in queued:
            connection.send(command, replied, self._timeout)

    async def _open(self) -> _Replies:
        """Connected, authenticated and on the URL's database."""
        loop = asyncio.get_running_loop()
        server = self._server
        if server.path is not None:
            _, connection = await loop.create_unix_connection(
                lambda: _Replies(self._lost), server.path
            )
        else:
            context = ssl.create_default_context() if server.tls else None
            _, connection = await loop.create_connection(
                lambda: _Replies(self._lost), server.host or "localhost", server.port, ssl=context
            )
        setup: list[tuple[str | bytes, ...]] = []
        if server.password is not None:
            user = (server.username,) if server.username else ()
            setup.append(("AUTH", *user, server.password))
        if server.db:
            setup.append(("SELECT", str(server.db)))
        for command in setup:
            await self._expect_ok(connection, command)
        return connection

    async def _expect_ok(self, connection: _Replies, command: tuple[str | bytes, ...]) -> None:
        replied: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        def deliver(reply: object) -> None:
            if not replied.done():
                replied.set_result(reply)

        connection.send(_pack(*command), deliver, self._timeout)
        reply = await replied
        if reply != b"OK":
            kind = reply.kind if isinstance(reply, ReadFailed) else "other"  # refused: AUTH, db
            connection.fail(kind)
            raise ReadFailed(kind)

    def _lost(self, connection: _Replies) -> None:
        if self._connection is connection:
            self._connection = None

    def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.fail("connection")
            self._connection = None
