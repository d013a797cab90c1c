"""An HTTP/1.1 keep-alive client on the event loop itself, for plain ``http://`` targets.

Why not pyreqwest here: it runs each request on its own runtime thread, and for the small,
one-at-a-time requests Postfix causes, handing a request over and waking the loop for the answer
cost more CPU than the request itself (``docs/performance.md``). Here a request is one ``send``
and, as a rule, one read on the loop's thread. TLS, proxies and user info in the URL stay with
pyreqwest (``httpclient.open_client`` chooses). This module is the pool and the round trip;
``native_connection`` is one connection, ``dialing`` reaches the host.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from socket import SOCK_STREAM
from typing import Any, cast

from .base import (
    ClientSettings,
    ConnectError,
    ConnectionClosed,
    InvalidRequest,
    RequestTimeout,
    Target,
)
from .codec import HttpResponse, encode_request
from .dialing import first_to_connect
from .headers import Headers, value_problem
from .native_connection import Deadlines, PooledConnection, StaleConnection

IDLE_TIMEOUT = 90.0
"""Seconds an idle connection is kept, as reqwest does; servers usually close theirs sooner."""
MAX_IDLE = 1024
"""Enough idle connections that steady load opens no new ones."""
_FORM_HEADER = b"Content-Type: application/x-www-form-urlencoded\r\n"

_Pending = Coroutine[Any, Any, HttpResponse]


class NativeClient:
    """Keep-alive connections to one ``http://`` origin (the host and port of ``origin``),
    reused last-in first-out; every request names its target on that origin."""

    def __init__(self, origin: Target, settings: ClientSettings) -> None:
        if origin.scheme != "http" or not origin.host or origin.has_user_info:
            raise ValueError("the native client serves plain http:// targets without user info")
        self._host = origin.host
        self._port = origin.port or 80
        self._origin_port = origin.port
        headers = [
            ("Host", _host_header(origin.host, origin.port)),
            ("User-Agent", settings.user_agent),
            ("Accept", "application/json" if settings.accept_json else "*/*"),
            ("Accept-Encoding", "identity"),  # bodies are read as they come: no compression
        ]
        self._headers = b"".join(_header_line(name, value) for name, value in headers)
        self._timeout = settings.timeout
        self._max_body = settings.max_body_bytes
        self._idle: list[PooledConnection] = []
        self._connections: set[PooledConnection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._deadlines = Deadlines()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def get(
        self, target: Target, query: str, headers: Headers, request_id: str, budget: float | None
    ) -> _Pending:
        payload = encode_request(
            b"GET",
            target.get_prefix + query.encode("ascii"),
            self._request_headers(headers, request_id),
            None,
        )
        return self._round_trip(target, payload, budget, idempotent=True)

    def post_form(
        self, target: Target, body: bytes, headers: Headers, request_id: str, budget: float | None
    ) -> _Pending:
        head = self._request_headers(headers, request_id) + _FORM_HEADER
        payload = encode_request(b"POST", target.path, head, body)
        return self._round_trip(target, payload, budget, idempotent=False)

    def post(
        self,
        target: Target,
        body: bytes,
        headers: Headers,
        request_id: str,
        budget: float | None,
        *,
        content_type: str,
    ) -> _Pending:
        try:
            head = self._request_headers(headers, request_id) + _header_line(
                "Content-Type", content_type
            )
        except ValueError:
            raise InvalidRequest("the request could not be built") from None
        payload = encode_request(b"POST", target.path, head, body)
        return self._round_trip(target, payload, budget, idempotent=False)

    def _request_headers(self, headers: Headers, request_id: str) -> bytes:
        return b"%s%sX-Request-Id: %s\r\n" % (
            self._headers,
            headers.encoded,
            request_id.encode("ascii"),
        )

    async def _round_trip(
        self, target: Target, payload: bytes, budget: float | None, idempotent: bool
    ) -> HttpResponse:
        """A GET that finds its pooled connection closed by the API is sent once more, on a new
        connection; a POST is not (RFC 9112 9.3.1: it may have been acted on), and neither is
        anything else: the endpoint's ``retries`` decide."""
        if target.host != self._host or target.port != self._origin_port:
            raise InvalidRequest("the target is on another host than this client's")
        loop = self._loop or self._bind_loop()
        deadline = loop.time() + (self._timeout if budget is None else budget)
        connection = self._take_idle(loop.time()) or await self._connect(deadline)
        while True:
            waiter = connection.send(loop, payload, deadline, self._max_body)
            try:
                return await waiter
            except StaleConnection:
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

    def _take_idle(self, now: float) -> PooledConnection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed and now - cast(float, connection.idle_since) < IDLE_TIMEOUT:
                return connection
            connection.close()
        return None

    async def _connect(self, deadline: float) -> PooledConnection:
        if self._closed:
            raise ConnectionClosed("the client is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await loop.getaddrinfo(self._host, self._port, type=SOCK_STREAM)
                if not addresses:
                    raise ConnectError("API host has no address")
                connection = await first_to_connect(loop, addresses, self._new_connection)
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

    def _new_connection(self) -> PooledConnection:
        return PooledConnection(self, self._deadlines)

    def release(self, connection: PooledConnection) -> None:
        """A connection whose answer is complete goes back to the idle list, newest last."""
        if self._closed or len(self._idle) >= MAX_IDLE:
            connection.close()
            return
        loop = self._loop or self._bind_loop()
        connection.idle_since = loop.time()
        self._idle.append(connection)
        if self._sweep is None:
            self._sweep = loop.call_later(IDLE_TIMEOUT, self._drop_expired)

    def forget(self, connection: PooledConnection) -> None:
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


def _header_line(name: str, value: str) -> bytes:
    """Sent as UTF-8, as pyreqwest sends it."""
    problem = value_problem(value)
    if problem is not None:
        raise ValueError(f"the {name} header value {problem}")
    return f"{name}: {value}\r\n".encode()
