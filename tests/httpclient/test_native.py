"""The native HTTP/1.1 client against real loopback servers: the bytes it sends, keep-alive,
stale connections, timeouts, cancellation and closing; and which client ``open_client`` picks.

The servers are raw asyncio servers on 127.0.0.1 port 0 that record every request with the
connection it came on, so a test can say exactly what reached the wire and on which connection.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any, cast

import pytest
from aiohttp import web

from conftest import FakeApi
from postfix_rest_api_connector.httpclient import (
    ClientSettings,
    ConnectError,
    ConnectionClosed,
    Headers,
    HttpError,
    HttpResponse,
    InvalidResponse,
    RequestTimeout,
    ResponseTooLarge,
    Target,
    native,
    open_client,
    uses_native_client,
)
from postfix_rest_api_connector.httpclient.dialing import FALLBACK_DELAY, first_to_connect
from postfix_rest_api_connector.httpclient.native import NativeClient
from postfix_rest_api_connector.httpclient.native_connection import Deadlines, PooledConnection
from postfix_rest_api_connector.httpclient.reqwest import ReqwestClient

DEADLINE = 5.0
"""Bounds every wait on an event; each takes milliseconds."""
MARGIN = 0.5
"""Seconds a timeout may fire late on a loaded test machine."""
USER_AGENT = "postfix-rest-api-connector/test"
TOKEN = "s3cret-token"
JSON = "application/json"
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


# A raw HTTP/1.1 server.


@dataclass(eq=False)
class ServerConnection:
    index: int
    transport: asyncio.Transport
    requests: list[bytes] = field(default_factory=list)
    closed: bool = False

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.transport.close()


@dataclass(frozen=True, eq=False)
class Received:
    """One whole request (head and Content-Length body) as it came off the wire."""

    connection: ServerConnection
    raw: bytes
    number: int
    """Its position among every request the server received, from 0."""

    @property
    def request_id(self) -> str:
        match = re.search(rb"\r\nX-Request-Id: ([^\r]*)\r\n", self.raw)
        assert match is not None, self.raw
        return match[1].decode()

    def reply(self, data: bytes) -> None:
        self.connection.write(data)


Answer = Callable[[Received], None]


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


def echoes(request: Received) -> None:
    """Answers each request at once with its own request id as the body."""
    request.reply(ok(b'["%s"]' % request.request_id.encode()))


def echoed(request_id: str) -> HttpResponse:
    return HttpResponse(200, b'["%s"]' % request_id.encode(), JSON, None)


class RawServer:
    """Hands each whole request to ``answer``; tests await its state with ``until``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections: list[ServerConnection] = []
        self.received: list[Received] = []
        self.port = 0
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> list[ServerConnection]:
        return [connection for connection in self.connections if not connection.closed]

    async def until(self, condition: Callable[[], bool]) -> None:
        if condition():
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((condition, future))
        await asyncio.wait_for(future, DEADLINE)

    async def until_requests(self, count: int) -> None:
        await self.until(lambda: len(self.received) >= count)

    async def until_closed(self, *connections: ServerConnection) -> None:
        await self.until(lambda: all(connection.closed for connection in connections))

    def changed(self) -> None:
        waiting, self._waiters = self._waiters, []
        for condition, future in waiting:
            if future.done():
                continue
            if condition():
                future.set_result(None)
            else:
                self._waiters.append((condition, future))

    def request_arrived(self, connection: ServerConnection, raw: bytes) -> None:
        connection.requests.append(raw)
        request = Received(connection, raw, len(self.received))
        self.received.append(request)
        self.answer(request)
        self.changed()


class _RawProtocol(asyncio.Protocol):
    def __init__(self, server: RawServer) -> None:
        self._server = server
        self._buffer = b""
        self._connection: ServerConnection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        connection = ServerConnection(len(server.connections), cast(asyncio.Transport, transport))
        self._connection = connection
        server.connections.append(connection)
        server.changed()

    def data_received(self, data: bytes) -> None:
        assert self._connection is not None
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            length = re.search(rb"\r\nContent-Length: (\d+)\r\n", self._buffer[: end + 2])
            size = end + 4 + (int(length[1]) if length else 0)
            if len(self._buffer) < size:
                return
            raw, self._buffer = self._buffer[:size], self._buffer[size:]
            self._server.request_arrived(self._connection, raw)

    def connection_lost(self, exc: Exception | None) -> None:
        assert self._connection is not None
        self._connection.closed = True
        self._server.changed()


class ClosesOnAccept(_RawProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.close()


@asynccontextmanager
async def raw_server(
    answer: Answer = echoes, protocol: type[_RawProtocol] = _RawProtocol
) -> AsyncIterator[RawServer]:
    server = RawServer(answer)
    listener = await asyncio.get_running_loop().create_server(
        lambda: protocol(server), "127.0.0.1", 0
    )
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        for connection in server.open_connections:
            connection.transport.abort()
        await listener.wait_closed()


def client_settings(**changes: Any) -> ClientSettings:
    settings = ClientSettings(
        user_agent=USER_AGENT, accept_json=True, timeout=DEADLINE, max_body_bytes=65536
    )
    return replace(settings, **changes)


Pending = Coroutine[Any, Any, HttpResponse]


@dataclass
class Asking:
    """A native client and the one target its requests go to, with the token's header as the
    backend would give it."""

    client: NativeClient
    target: Target
    headers: Headers

    def get(self, query: str, request_id: str, budget: float | None) -> Pending:
        return self.client.get(self.target, query, self.headers, request_id, budget)

    def post_form(self, body: bytes, request_id: str, budget: float | None) -> Pending:
        return self.client.post_form(self.target, body, self.headers, request_id, budget)

    async def close(self) -> None:
        await self.client.close()


def asking(target: str, token: str | None = TOKEN, **changes: Any) -> Asking:
    parsed = Target.parse(target)
    headers = Headers.of((("X-Auth-Token", token),) if token is not None else ())
    return Asking(NativeClient(parsed, client_settings(**changes)), parsed, headers)


@asynccontextmanager
async def native_client(target: str, **changes: Any) -> AsyncIterator[Asking]:
    client = asking(target, **changes)
    try:
        yield client
    finally:
        await client.close()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port: int = placeholder.getsockname()[1]
    return port


async def finish(task: asyncio.Task[HttpResponse]) -> None:
    """Teardown for a task a failing test may leave waiting."""
    task.cancel()
    with suppress(asyncio.CancelledError, Exception):
        await task


# The bytes on the wire.


@pytest.mark.parametrize(
    ("path", "accept_json", "token", "expected_head"),
    [
        (
            "/lookup",
            True,
            TOKEN,
            b"GET /lookup?key=a%40b.example HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            b"User-Agent: postfix-rest-api-connector/test\r\nAccept: application/json\r\n"
            b"Accept-Encoding: identity\r\nX-Auth-Token: s3cret-token\r\n"
            b"X-Request-Id: rid-1\r\n\r\n",
        ),
        (
            "/api/lookup?table=aliases&v=2",
            True,
            TOKEN,
            b"GET /api/lookup?table=aliases&v=2&key=a%40b.example HTTP/1.1\r\n"
            b"Host: 127.0.0.1:{port}\r\nUser-Agent: postfix-rest-api-connector/test\r\n"
            b"Accept: application/json\r\nAccept-Encoding: identity\r\n"
            b"X-Auth-Token: s3cret-token\r\nX-Request-Id: rid-1\r\n\r\n",
        ),
        (
            "",
            False,
            None,
            b"GET /?key=a%40b.example HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            b"User-Agent: postfix-rest-api-connector/test\r\nAccept: */*\r\n"
            b"Accept-Encoding: identity\r\nX-Request-Id: rid-1\r\n\r\n",
        ),
        (
            "/lookup#fragment",
            False,
            TOKEN,
            b"GET /lookup?key=a%40b.example HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            b"User-Agent: postfix-rest-api-connector/test\r\nAccept: */*\r\n"
            b"Accept-Encoding: identity\r\nX-Auth-Token: s3cret-token\r\n"
            b"X-Request-Id: rid-1\r\n\r\n",
        ),
    ],
    ids=["path", "path-with-own-query", "no-path-no-accept-no-token", "fragment-dropped"],
)
async def test_get_sends_exactly_this_request(
    path: str, accept_json: bool, token: str | None, expected_head: bytes
) -> None:
    async with raw_server() as server:
        async with native_client(server.url + path, accept_json=accept_json, token=token) as client:
            response = await client.get("key=a%40b.example", "rid-1", None)

        assert [request.raw for request in server.received] == [
            expected_head.replace(b"{port}", str(server.port).encode())
        ]
    assert response == echoed("rid-1")


@pytest.mark.parametrize(
    ("path", "target"),
    [("/policy", b"/policy"), ("/policy?v=2", b"/policy?v=2"), ("", b"/")],
    ids=["path", "path-with-own-query", "no-path"],
)
async def test_post_form_sends_exactly_this_request(path: str, target: bytes) -> None:
    body = b"request=smtpd_access_policy&recipient=b%C3%BCb%40example.com&size=0"
    async with raw_server() as server:
        async with native_client(server.url + path, accept_json=False) as client:
            response = await client.post_form(body, "rid-2", None)

        assert [request.raw for request in server.received] == [
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"User-Agent: postfix-rest-api-connector/test\r\nAccept: */*\r\n"
            b"Accept-Encoding: identity\r\nX-Auth-Token: s3cret-token\r\n"
            b"X-Request-Id: rid-2\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (target, server.port, len(body), body)
        ]
    assert response == echoed("rid-2")


async def test_response_fields_reach_the_caller() -> None:
    def answer(request: Received) -> None:
        request.reply(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"Cache-Control: max-age=30\r\nTransfer-Encoding: chunked\r\n"
            b"cache-control: public\r\n\r\n7\r\naction=\r\n5\r\nDUNNO\r\n0\r\n\r\n"
        )

    async with raw_server(answer) as server, native_client(server.url) as client:
        response = await client.get("key=x", "rid", None)

    assert response == HttpResponse(
        200, b"action=DUNNO", "text/plain; charset=utf-8", "max-age=30, public"
    )


async def test_requests_reach_aiohttp_and_its_chunked_answers_are_read(api: FakeApi) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": JSON})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'["' + request.headers["X-Request-Id"].encode())
        await response.write(b'"]')
        await response.write_eof()
        return response

    api.handler = handler
    async with native_client(api.url + "/lookup?table=t") as client:
        first = await client.get("key=a%2Bb%40c", "rid-a", None)
        second = await client.post_form(b"x=1&y=%26", "rid-b", None)

    assert first == HttpResponse(200, b'["rid-a"]', JSON, None)
    assert second == HttpResponse(200, b'["rid-b"]', JSON, None)
    assert [(seen.method, seen.path, seen.query, seen.body) for seen in api.seen] == [
        ("GET", "/lookup", {"table": "t", "key": "a+b@c"}, b""),
        ("POST", "/lookup", {"table": "t"}, b"x=1&y=%26"),
    ]
    for seen in api.seen:
        assert seen.headers["X-Auth-Token"] == TOKEN
        assert seen.headers["User-Agent"] == USER_AGENT
    assert api.seen[1].headers["Content-Type"] == "application/x-www-form-urlencoded"


# Keep-alive.


async def test_sequential_requests_share_one_connection() -> None:
    async with raw_server() as server, native_client(server.url) as client:
        responses = [await client.get("key=k", f"rid-{n}", None) for n in range(5)]
        responses.append(await client.post_form(b"a=1", "rid-post", None))

        assert len(server.connections) == 1
        assert len(server.connections[0].requests) == 6
        assert not server.connections[0].closed
    assert responses == [echoed(f"rid-{n}") for n in range(5)] + [echoed("rid-post")]


class Held:
    """Holds requests until ``count`` are waiting, then answers them all with their ids."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.waiting: list[Received] = []

    def __call__(self, request: Received) -> None:
        self.waiting.append(request)
        if len(self.waiting) == self.count:
            waiting, self.waiting = self.waiting, []
            for held in waiting:
                echoes(held)


async def test_concurrent_requests_open_connections_then_reuse_them() -> None:
    async with raw_server(Held(4)) as server, native_client(server.url) as client:
        for batch in range(3):
            ids = [f"rid-{batch}-{n}" for n in range(4)]
            responses = await asyncio.gather(*(client.get("key=k", rid, None) for rid in ids))

            assert list(responses) == [echoed(rid) for rid in ids]
            assert len(server.connections) == 4
        assert [len(connection.requests) for connection in server.connections] == [3, 3, 3, 3]


async def test_the_connection_released_last_is_reused_first() -> None:
    waiting: list[Received] = []
    async with raw_server(waiting.append) as server, native_client(server.url) as client:
        tasks = {
            f"rid-{n}": asyncio.create_task(client.get("key=k", f"rid-{n}", None)) for n in range(3)
        }
        await server.until_requests(3)
        for held in waiting:  # answered one at a time: released in this order
            echoes(held)
            await asyncio.wait_for(tasks[held.request_id], DEADLINE)
        last = waiting[-1].connection
        waiting.clear()

        next_request = asyncio.create_task(client.get("key=k", "rid-next", None))
        await server.until_requests(4)
        echoes(waiting[0])

        assert await asyncio.wait_for(next_request, DEADLINE) == echoed("rid-next")
        assert waiting[0].connection is last
        assert len(server.connections) == 3


async def test_idle_connections_beyond_max_idle_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "MAX_IDLE", 2)
    async with raw_server(Held(3)) as server, native_client(server.url) as client:
        await asyncio.gather(*(client.get("key=k", f"rid-{n}", None) for n in range(3)))
        await server.until(lambda: len(server.open_connections) == 2)

        server.answer = Held(3)
        await asyncio.gather(*(client.get("key=k", f"again-{n}", None) for n in range(3)))

        assert len(server.connections) == 4


async def test_idle_connections_are_closed_after_idle_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(native, "IDLE_TIMEOUT", 0.1)
    async with raw_server() as server, native_client(server.url) as client:
        await client.get("key=k", "rid-1", None)
        first = server.connections[0]
        started = time.monotonic()
        await server.until_closed(first)

        assert time.monotonic() - started < 0.1 + MARGIN
        assert await client.get("key=k", "rid-2", None) == echoed("rid-2")
        assert len(server.connections) == 2


# Connections the server ends.


async def test_idle_connection_closed_by_the_server_is_retried_once_for_a_get_only() -> None:
    """The server closes a kept-alive connection as the next request arrives on it, the race a
    server's idle timeout makes. A GET goes again, once, on a new connection; a POST may have
    been acted on (RFC 9112 9.3.1), so it fails and the endpoint's ``retries`` decide."""

    def answer(request: Received) -> None:
        if len(request.connection.requests) == 1:
            echoes(request)
        else:
            request.connection.close()

    async with raw_server(answer) as server, native_client(server.url) as client:
        assert await client.get("key=k", "rid-1", None) == echoed("rid-1")
        assert await client.get("key=k", "rid-2", None) == echoed("rid-2")
        with pytest.raises(ConnectionClosed):
            await client.post_form(b"a=1", "rid-3", None)

        assert [request.request_id for request in server.received] == [
            "rid-1",
            "rid-2",
            "rid-2",
            "rid-3",
        ]
        assert len(server.connections) == 2


@pytest.mark.parametrize("method", ["get", "post"])
async def test_a_pool_of_dead_connections_costs_one_resend_at_most(method: str) -> None:
    """An API that reads a request and closes without answering: however many pooled
    connections there are, the request reaches it at most twice (GET) or once (POST)."""
    pooled = 8
    answering = True

    def answer(request: Received) -> None:
        if answering:
            echoes(request)
        else:
            request.connection.close()

    async with raw_server(answer) as server, native_client(server.url) as client:
        await asyncio.gather(*(client.get("key=k", f"warm-{n}", None) for n in range(pooled)))
        assert len(server.connections) == pooled
        answering = False
        sending = (
            client.get("key=k", "once", None)
            if method == "get"
            else client.post_form(b"a=1", "once", None)
        )
        with pytest.raises(ConnectionClosed):
            await sending

        sent = [request for request in server.received if request.request_id == "once"]
        assert len(sent) == (2 if method == "get" else 1)


async def test_server_closing_each_connection_after_answering_costs_no_request() -> None:
    def answer(request: Received) -> None:
        echoes(request)
        request.connection.close()

    async with raw_server(answer) as server, native_client(server.url) as client:
        for n in range(5):
            assert await client.get("key=k", f"rid-{n}", None) == echoed(f"rid-{n}")

        assert [len(connection.requests) for connection in server.connections] == [1] * 5


def closes(request: Received) -> None:
    request.connection.close()


@pytest.mark.parametrize(
    ("protocol", "requests_seen"),
    [(_RawProtocol, 1), (ClosesOnAccept, 0)],
    ids=["closed-on-request", "closed-on-accept"],
)
async def test_fresh_connection_closed_before_answering_raises_connection_closed(
    protocol: type[_RawProtocol], requests_seen: int
) -> None:
    async with raw_server(closes, protocol) as server, native_client(server.url) as client:
        with pytest.raises(ConnectionClosed) as raised:
            await client.get("key=k", "rid-1", None)

        assert type(raised.value) is ConnectionClosed  # not retried as a stale connection
        assert len(server.connections) == 1
        assert len(server.received) == requests_seen


async def test_stale_retry_is_made_once_and_not_repeated_on_a_fresh_connection() -> None:
    def answer(request: Received) -> None:
        if request.number == 0:
            echoes(request)
        else:
            request.connection.close()

    async with raw_server(answer) as server, native_client(server.url) as client:
        await client.get("key=k", "rid-1", None)
        with pytest.raises(ConnectionClosed):
            await client.get("key=k", "rid-2", None)

        assert [request.request_id for request in server.received] == ["rid-1", "rid-2", "rid-2"]
        assert len(server.connections) == 2


async def test_reused_connection_closed_mid_answer_is_not_retried() -> None:
    def answer(request: Received) -> None:
        if request.number == 0:
            echoes(request)
        else:
            request.reply(b"HTTP/1.1 200 OK\r\nContent-Le")
            request.connection.close()

    async with raw_server(answer) as server, native_client(server.url) as client:
        await client.get("key=k", "rid-1", None)
        with pytest.raises(ConnectionClosed):
            await client.get("key=k", "rid-2", None)

        assert [request.request_id for request in server.received] == ["rid-1", "rid-2"]


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n",
        b"HTTP/1.0 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=["connection-close", "http-1.0", "chunked-beside-content-length"],
)
async def test_answer_that_ends_keep_alive_moves_the_next_request_to_a_new_connection(
    head: bytes,
) -> None:
    def answer(request: Received) -> None:
        if b"chunked" in head:
            request.reply(head + b"Content-Type: application/json\r\n\r\n2\r\n[]\r\n0\r\n\r\n")
        else:
            request.reply(head + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n[]")

    async with raw_server(answer) as server, native_client(server.url) as client:
        assert await client.get("key=k", "rid-1", None) == HttpResponse(200, b"[]", JSON, None)
        await server.until_closed(server.connections[0])  # the client closed it, not the server
        assert await client.get("key=k", "rid-2", None) == HttpResponse(200, b"[]", JSON, None)

        assert len(server.connections) == 2


@pytest.mark.parametrize(
    ("head", "payload", "expected"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n",
            b"2\r\n[]\r\n0\r\n\r\n",
            HttpResponse(200, b"[]", None, None),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n"
            b"Transfer-Encoding: chunked\r\n",
            b"5\r\nabcde\r\n0\r\n\r\n",
            HttpResponse(200, b"abcde", None, None),
        ),
        (
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\ntransfer-encoding: Chunked\r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
            HttpResponse(404, b"", None, None),
        ),
        (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n",
            b"",
            HttpResponse(204, b"", None, None),
        ),
    ],
    ids=["chunked-then-length", "zero-length-keep-alive", "404-body-dropped", "204-no-body"],
)
async def test_content_length_beside_transfer_encoding_never_returns_to_the_pool(
    head: bytes, payload: bytes, expected: HttpResponse
) -> None:
    """RFC 9112 section 6.3: both fields may be response splitting; the answer is read by the
    coding, and the client closes the connection instead of pooling it."""

    def answer(request: Received) -> None:
        request.reply(head + b"\r\n" + payload)

    async with raw_server(answer) as server, native_client(server.url) as client:
        for n in range(3):
            assert await client.get("key=k", f"rid-{n}", None) == expected
            await server.until_closed(server.connections[n])  # closed by the client

        assert [len(connection.requests) for connection in server.connections] == [1, 1, 1]


async def test_close_delimited_answer_is_read_to_the_end() -> None:
    def answer(request: Received) -> None:
        request.reply(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\naction=REJECT no\n")
        request.connection.close()

    async with raw_server(answer) as server, native_client(server.url) as client:
        for n in range(2):
            response = await client.get("key=k", f"rid-{n}", None)
            assert response == HttpResponse(200, b"action=REJECT no\n", "text/plain", None)

        assert len(server.connections) == 2


async def test_unsolicited_bytes_on_an_idle_connection_close_it() -> None:
    def answer(request: Received) -> None:
        echoes(request)
        if request.number == 0:
            asyncio.get_running_loop().call_soon(request.reply, b"HTTP/1.1 200 OK\r\n")

    async with raw_server(answer) as server, native_client(server.url) as client:
        await client.get("key=k", "rid-1", None)
        await server.until_closed(server.connections[0])

        assert await client.get("key=k", "rid-2", None) == echoed("rid-2")
        assert len(server.connections) == 2


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"HELLO\r\n\r\n", InvalidResponse),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n[]", InvalidResponse),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", InvalidResponse),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n", ResponseTooLarge),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n" + b"x" * 65 + b"\r\n",
            ResponseTooLarge,
        ),
    ],
    ids=[
        "garbage",
        "conflicting-lengths",
        "protocol-switch",
        "length-too-large",
        "chunk-too-large",
    ],
)
async def test_unusable_answer_raises_and_drops_the_connection(
    reply: bytes, error: type[HttpError]
) -> None:
    async with (
        raw_server(lambda request: request.reply(reply)) as server,
        native_client(server.url, max_body_bytes=64) as client,
    ):
        with pytest.raises(error):
            await client.get("key=k", "rid-1", None)
        await server.until_closed(server.connections[0])


async def test_dropped_body_over_the_limit_answers_and_drops_the_connection() -> None:
    def answer(request: Received) -> None:
        request.reply(b"HTTP/1.1 404 Not Found\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100)

    async with raw_server(answer) as server:
        async with native_client(server.url, max_body_bytes=64) as client:
            assert await client.get("key=k", "rid-1", None) == HttpResponse(404, b"", None, None)
            await server.until_closed(server.connections[0])
            assert await client.get("key=k", "rid-2", None) == HttpResponse(404, b"", None, None)

        assert len(server.connections) == 2


# Time limits.


def never_answers(request: Received) -> None:
    """Keeps the request and the connection open."""


@pytest.mark.parametrize(
    ("settings_timeout", "budget"), [(0.3, None), (30.0, 0.3)], ids=["settings-timeout", "budget"]
)
async def test_server_that_never_answers_times_out_within_the_budget(
    settings_timeout: float, budget: float | None
) -> None:
    async with (
        raw_server(never_answers) as server,
        native_client(server.url, timeout=settings_timeout) as client,
    ):
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            await client.get("key=k", "rid-1", budget)
        elapsed = time.monotonic() - started
        await server.until_closed(server.connections[0])  # a timed-out connection is dropped

    assert 0.3 - 0.01 <= elapsed < 0.3 + MARGIN


async def test_budget_longer_than_the_settings_timeout_is_used() -> None:
    timers: list[asyncio.TimerHandle] = []

    def answer_later(request: Received) -> None:
        timers.append(asyncio.get_running_loop().call_later(0.3, echoes, request))

    async with (
        raw_server(answer_later) as server,
        native_client(server.url, timeout=0.05) as client,
    ):
        try:
            assert await client.get("key=k", "rid-1", 5.0) == echoed("rid-1")
            with pytest.raises(RequestTimeout):
                await client.get("key=k", "rid-2", None)
        finally:
            for timer in timers:
                timer.cancel()


async def test_timeout_covers_a_slow_body() -> None:
    def trickle(request: Received) -> None:
        request.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[")

    async with raw_server(trickle) as server, native_client(server.url, timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            await client.get("key=k", "rid-1", None)

        assert time.monotonic() - started < 0.2 + MARGIN
        await server.until_closed(server.connections[0])


async def test_connection_refused_raises_connect_error() -> None:
    async with native_client(f"http://127.0.0.1:{free_port()}/lookup") as client:
        started = time.monotonic()
        with pytest.raises(ConnectError):
            await client.get("key=k", "rid-1", None)
        with pytest.raises(ConnectError):
            await client.post_form(b"a=1", "rid-2", None)

    assert time.monotonic() - started < MARGIN


# Cancellation and closing.


async def test_cancelled_request_closes_its_connection_and_the_next_works() -> None:
    async with raw_server(never_answers) as server, native_client(server.url) as client:
        task = asyncio.create_task(client.get("key=k", "rid-1", None))
        await server.until_requests(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.until_closed(server.connections[0])

        server.answer = echoes
        assert await client.get("key=k", "rid-2", None) == echoed("rid-2")
        assert len(server.connections) == 2


async def test_cancellation_as_the_answer_arrives_does_not_strand_the_next_request() -> None:
    """Request A is cancelled after its answer reached the socket but before A's task resumed,
    and request B, started in the same loop turn, takes the connection A's answer freed: A's
    cancellation must not take that connection, and B's request with it, away."""
    answered = asyncio.Event()

    def answer(request: Received) -> None:
        echoes(request)
        answered.set()

    go = asyncio.Event()

    async def request_b(client: Asking) -> HttpResponse:
        await go.wait()
        return await client.get("key=b", "rid-b", None)

    async with raw_server(answer) as server, native_client(server.url, timeout=30.0) as client:
        task_a = asyncio.create_task(client.get("key=a", "rid-a", None))
        task_b = asyncio.create_task(request_b(client))
        async with asyncio.timeout(DEADLINE):  # not wait_for: no extra task, no extra loop turn
            await answered.wait()
        go.set()
        task_a.cancel()
        try:
            done, _ = await asyncio.wait({task_b}, timeout=2.0)

            assert done, "request B never finished: its connection was closed under it"
            assert task_b.result() == echoed("rid-b")
        finally:
            await finish(task_a)
            await finish(task_b)


async def test_close_closes_every_connection() -> None:
    async with raw_server(Held(3)) as server:
        client = asking(server.url)
        await asyncio.gather(*(client.get("key=k", f"rid-{n}", None) for n in range(3)))
        assert len(server.open_connections) == 3

        await client.close()

        await server.until_closed(*server.connections)


async def test_close_fails_a_request_in_flight() -> None:
    """Every failure is an ``HttpError``: closing the client under a request must not leave the
    request waiting forever (its own deadline is far away)."""
    async with raw_server(never_answers) as server:
        client = asking(server.url, timeout=30.0)
        task = asyncio.create_task(client.get("key=k", "rid-1", None))
        await server.until_requests(1)

        await client.close()

        try:
            done, _ = await asyncio.wait({task}, timeout=2.0)

            assert done, "the request still waits after close()"
            assert isinstance(task.exception(), HttpError)
        finally:
            await finish(task)
        await server.until_closed(server.connections[0])


# Header values and client selection.


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("token", TOKEN + "\r\nX-Injected: 1"),
        ("token", TOKEN + "\n"),
        ("token", TOKEN + "\r"),
        ("token", "s3cret\x00token"),
        ("token", "s3cret\x7ftoken"),
        ("user_agent", "agent\r\nX-Injected: 1"),
        ("user_agent", "agent\n"),
    ],
    ids=["token-crlf", "token-lf", "token-cr", "token-nul", "token-del", "agent-crlf", "agent-lf"],
)
def test_control_characters_in_header_values_are_refused_at_construction(
    setting: str, value: str
) -> None:
    with pytest.raises(ValueError, match="control character") as raised:
        asking("http://127.0.0.1:1/lookup", **{setting: value})

    for text in (str(raised.value), repr(raised.value)):
        assert "s3cret" not in text
        assert "X-Injected" not in text


def test_headers_show_no_value() -> None:
    headers = Headers.of((("X-Auth-Token", TOKEN),))
    assert TOKEN not in repr(headers)
    assert TOKEN not in str(headers)


def test_native_client_refuses_targets_it_cannot_serve() -> None:
    for target in ("https://127.0.0.1/lookup", "http://user:pw@127.0.0.1/lookup"):
        with pytest.raises(ValueError, match="plain http"):
            NativeClient(Target.parse(target), client_settings())


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("target", "native_expected"),
    [
        ("http://127.0.0.1:8080/lookup", True),
        ("http://api.example/lookup?table=aliases", True),
        ("http://[::1]:8080/", True),
        ("HTTP://api.example/lookup", True),
        ("https://api.example/lookup", False),
        ("http://user:password@api.example/lookup", False),
        ("http://user@api.example/lookup", False),
        ("http://api.example/l\u00f6okup", False),
        ("http://api.example/a b", False),
        ("http://api.example/a\tb", False),
    ],
    ids=[
        "http",
        "http-with-query",
        "ipv6",
        "uppercase-scheme",
        "https",
        "user-and-password",
        "user-only",
        "non-ascii",
        "space",
        "tab",
    ],
)
async def test_client_selection_by_target(
    no_proxy_env: pytest.MonkeyPatch, target: str, native_expected: bool
) -> None:
    assert uses_native_client(target) is native_expected
    client = open_client(Target.parse(target), client_settings())
    try:
        assert isinstance(client, NativeClient if native_expected else ReqwestClient)
    finally:
        await client.close()


@pytest.mark.parametrize("variable", PROXY_VARIABLES)
async def test_proxy_in_the_environment_selects_reqwest(
    no_proxy_env: pytest.MonkeyPatch, variable: str
) -> None:
    no_proxy_env.setenv(variable, "http://proxy.example:3128")

    assert not uses_native_client("http://127.0.0.1:8080/lookup")
    client = open_client(Target.parse("http://127.0.0.1:8080/lookup"), client_settings())
    try:
        assert isinstance(client, ReqwestClient)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("http_proxy", ""), ("HTTPS_PROXY", "http://proxy.example:3128")],
    ids=["empty-http-proxy", "https-proxy-only"],
)
def test_proxy_settings_that_do_not_apply_keep_the_native_client(
    no_proxy_env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    no_proxy_env.setenv(variable, value)

    assert uses_native_client("http://127.0.0.1:8080/lookup")


# Found in review: what the native client must do like pyreqwest, or must not do at all.


async def test_the_target_is_normalised_as_pyreqwest_does() -> None:
    """Both engines must ask the same path: dot segments resolved, spaces percent-encoded."""
    async with raw_server() as server:
        async with native_client(server.url + "/a/./b/../lookup?t=x y") as client:
            await client.get("key=k", "rid", None)

        (request,) = server.received
        assert request.raw.startswith(b"GET /a/lookup?t=x%20y&key=k HTTP/1.1\r\n")


async def test_user_agent_is_sent_as_utf8_like_pyreqwest() -> None:
    async with raw_server() as server:
        async with native_client(server.url, user_agent="Postfix REST \u2013 prod") as client:
            await client.get("key=k", "rid", None)

        (request,) = server.received
        assert b"\r\nUser-Agent: Postfix REST \xe2\x80\x93 prod\r\n" in request.raw


@pytest.mark.parametrize(
    ("coding", "refused"),
    [("gzip", True), ("identity, br", True), ("identity", False), ("none", False), ("", False)],
)
async def test_only_a_compressed_answer_is_refused(coding: str, refused: bool) -> None:
    """We send ``Accept-Encoding: identity``; a proxy that compresses anyway is an error, while
    labels that change nothing (``none`` is a known PHP trick) are read as pyreqwest reads them."""

    def answer(request: Received) -> None:
        request.reply(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: %s\r\n"
            b"Content-Length: 2\r\n\r\n[]" % coding.encode()
        )

    async with raw_server(answer) as server, native_client(server.url) as client:
        if refused:
            with pytest.raises(InvalidResponse):
                await client.get("key=k", "rid", None)
        else:
            assert (await client.get("key=k", "rid", None)).body == b"[]"


async def test_a_host_the_resolver_refuses_is_a_connect_error() -> None:
    """An empty label passes URL parsing but not IDNA encoding; it must still be an HttpError."""
    async with native_client("http://a..b:8080/lookup") as client:
        with pytest.raises(ConnectError):
            await client.get("key=k", "rid", None)


async def test_a_host_name_is_resolved_and_its_addresses_tried_in_turn() -> None:
    """``localhost`` may resolve to ::1 before 127.0.0.1; the server listens on the latter."""
    async with (
        raw_server() as server,
        native_client(f"http://localhost:{server.port}/lookup") as client,
    ):
        assert await client.get("key=k", "rid", None) == echoed("rid")


async def test_a_closed_client_makes_no_request_and_keeps_no_connection() -> None:
    async with raw_server() as server:
        client = asking(server.url)
        connecting = asyncio.ensure_future(client.get("key=k", "rid-1", None))
        await asyncio.sleep(0)  # the request is now connecting
        await client.close()
        with pytest.raises(ConnectionClosed):
            await connecting
        with pytest.raises(ConnectionClosed):
            await client.get("key=k", "rid-2", None)
        await server.until(lambda: all(connection.closed for connection in server.connections))
        assert server.received == []


async def test_a_slow_first_address_is_raced_not_waited_for() -> None:
    """Happy eyeballs: the second address starts after FALLBACK_DELAY while the first still
    tries; the first to connect wins and the loser is cancelled."""
    started: list[str] = []
    never = asyncio.Event()
    real_loop = asyncio.get_running_loop()

    class SlowFirstAddressLoop:
        """The running loop, but connecting to TEST-NET-1 (192.0.2.1) never completes; a
        stand-in passed as an argument, so that it works on the compiled client too."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real_loop, name)

        async def create_connection(self, factory: Any, host: str, port: int, **kw: Any) -> Any:
            started.append(host)
            if host == "192.0.2.1":
                await never.wait()
            return await real_loop.create_connection(factory, "127.0.0.1", port, **kw)

    async with raw_server() as server:
        addresses = [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", server.port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.port)),
        ]
        began = time.monotonic()
        connection = await first_to_connect(
            cast(Any, SlowFirstAddressLoop()),
            addresses,
            lambda: PooledConnection(NoPool(), Deadlines()),
        )
        took = time.monotonic() - began
        connection.close()

    assert started == ["192.0.2.1", "127.0.0.1"]
    assert FALLBACK_DELAY <= took < FALLBACK_DELAY + 1.0


class NoPool:
    """Where a connection made outside any client goes back: nowhere."""

    def release(self, connection: PooledConnection) -> None:
        connection.close()

    def forget(self, connection: PooledConnection) -> None:
        pass
