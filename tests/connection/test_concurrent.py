"""The connection shell for protocols whose requests carry ids (sasl): each request answered on
its own as it completes, a reset as a reply, the bound on requests in flight, the drain, and
the deadline for a handshake the client owes. Real loopback sockets, a binding made here."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from postfix_rest_api_connector.connection import (
    ConcurrentConnection,
    ConnectionTracker,
    Limits,
    ModeBinding,
)
from postfix_rest_api_connector.connection.handler import MAX_IN_FLIGHT
from postfix_rest_api_connector.core.model import (
    Found,
    LookupRequest,
    Outcome,
    Request,
    TemporaryError,
)
from postfix_rest_api_connector.protocols import sasl
from postfix_rest_api_connector.protocols.tcp_table import TcpTableDecoder

DEADLINE = 10.0


@dataclass
class HeldApi:
    """Answers ``get KEY`` with KEY once the test releases KEY; ``fail-...`` keys fail."""

    released: dict[bytes, asyncio.Event] = field(default_factory=dict)
    asked: list[bytes] = field(default_factory=list)
    asked_event: asyncio.Event = field(default_factory=asyncio.Event)

    def gate(self, key: bytes) -> asyncio.Event:
        return self.released.setdefault(key, asyncio.Event())

    async def ask(self, request: Request) -> Outcome:
        assert isinstance(request, LookupRequest)
        self.asked.append(request.key)
        self.asked_event.set()
        await self.gate(request.key).wait()
        if request.key.startswith(b"fail-"):
            return TemporaryError("down")
        return Found(request.key.decode())

    async def wait_asked(self, count: int) -> None:
        async with asyncio.timeout(DEADLINE):
            while len(self.asked) < count:
                self.asked_event.clear()
                await self.asked_event.wait()


def _reply(request: Request | None, outcome: Outcome) -> bytes:
    """Names its request; a failure is the empty reply, a reset."""
    if isinstance(request, LookupRequest) and isinstance(outcome, Found):
        return b"OK " + request.key + b"\n"
    return b""


def _binding(api: HeldApi, *, close_with_reset: bool = True) -> ModeBinding:
    return ModeBinding(
        new_decoder=TcpTableDecoder,
        answer_now=lambda request: b"NOW\n" if request == LookupRequest(b"now") else None,
        ask=api.ask,
        reply=_reply,
        concurrent=True,
        close_with_reset=close_with_reset,
    )


@dataclass
class Served:
    port: int
    tracker: ConnectionTracker


@asynccontextmanager
async def serving(binding: ModeBinding, read_timeout: float = 10) -> AsyncIterator[Served]:
    tracker = ConnectionTracker()
    limits = Limits(idle_timeout=60, read_timeout=read_timeout, max_connections=8)
    server = await asyncio.get_running_loop().create_server(
        lambda: ConcurrentConnection(binding, tracker, limits), "127.0.0.1", 0
    )
    try:
        yield Served(server.sockets[0].getsockname()[1], tracker)
    finally:
        server.close()
        await tracker.drain(1.0)
        await server.wait_closed()


class Client:
    """A raw socket: it still reads what arrived before a reset, and tells a reset from EOF."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def read(self, count: int) -> bytes:
        received = b""
        async with asyncio.timeout(DEADLINE):
            while len(received) < count:
                chunk = await self.loop.sock_recv(self.sock, count - len(received))
                if not chunk:
                    break
                received += chunk
        return received

    async def read_to_end(self) -> tuple[bytes, str]:
        received = b""
        try:
            async with asyncio.timeout(DEADLINE):
                while chunk := await self.loop.sock_recv(self.sock, 65536):
                    received += chunk
        except ConnectionResetError:
            return received, "reset"
        return received, "eof"


@asynccontextmanager
async def connected(port: int) -> AsyncIterator[Client]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        yield Client(sock)
    finally:
        sock.close()


async def test_each_request_is_answered_when_its_answer_is_known() -> None:
    api = HeldApi()
    async with serving(_binding(api)) as served, connected(served.port) as client:
        await client.send(b"get first\nget second\nget now\n")
        assert await client.read(4) == b"NOW\n"  # at once, ahead of the two held
        await api.wait_asked(2)
        api.gate(b"second").set()
        assert await client.read(10) == b"OK second\n"
        api.gate(b"first").set()
        assert await client.read(9) == b"OK first\n"
    assert api.asked == [b"first", b"second"]


async def test_an_empty_reply_resets_the_connection_after_the_replies_before_it() -> None:
    api = HeldApi()
    async with serving(_binding(api)) as served, connected(served.port) as client:
        await client.send(b"get a\nget fail-b\nget c\n")
        await api.wait_asked(3)
        api.gate(b"a").set()
        assert await client.read(5) == b"OK a\n"
        api.gate(b"fail-b").set()
        assert await client.read_to_end() == (b"", "reset")
        api.gate(b"c").set()  # its answer has no connection left to go to


@pytest.mark.parametrize(("reset", "end"), [(True, "reset"), (False, "eof")])
async def test_the_drain_answers_what_is_in_flight_then_closes(reset: bool, end: str) -> None:
    api = HeldApi()
    async with (
        serving(_binding(api, close_with_reset=reset)) as served,
        connected(served.port) as client,
    ):
        await client.send(b"get a\nget b\n")
        await api.wait_asked(2)
        draining = asyncio.create_task(served.tracker.drain(DEADLINE))
        await asyncio.sleep(0)
        api.gate(b"b").set()
        assert await client.read(5) == b"OK b\n"
        assert not draining.done()
        api.gate(b"a").set()
        assert await client.read_to_end() == (b"OK a\n", end)
        await draining


async def test_at_most_max_in_flight_requests_are_asked_at_once() -> None:
    api = HeldApi()
    count = MAX_IN_FLIGHT + 5
    async with serving(_binding(api)) as served, connected(served.port) as client:
        await client.send(b"".join(b"get k%d\n" % n for n in range(count)))
        await api.wait_asked(MAX_IN_FLIGHT)
        await asyncio.sleep(0.05)  # time for any more to start (none may)
        assert len(api.asked) == MAX_IN_FLIGHT
        for n in range(count):
            api.gate(b"k%d" % n).set()
        replies = await client.read(sum(len(b"OK k%d\n" % n) for n in range(count)))
    assert sorted(replies.splitlines()) == sorted(b"OK k%d" % n for n in range(count))
    assert len(api.asked) == count


async def test_a_framing_error_waits_for_the_answers_in_flight() -> None:
    """Requests before the error are answered, then the connection ends (with a reset)."""
    api = HeldApi()
    async with serving(_binding(api)) as served, connected(served.port) as client:
        await client.send(b"get a\n" + b"x" * 70000)
        await api.wait_asked(1)
        api.gate(b"a").set()
        assert await client.read_to_end() == (b"OK a\n", "reset")


def _sasl_binding(api: HeldApi) -> ModeBinding:
    return ModeBinding(
        new_decoder=sasl.SaslDecoder,
        answer_now=sasl.answer_itself,
        ask=api.ask,
        reply=sasl.reply,
        greeting=lambda: b"HELLO\n",
        concurrent=True,
        close_with_reset=True,
    )


async def test_a_handshake_not_sent_in_time_ends_the_connection() -> None:
    async with (
        serving(_sasl_binding(HeldApi()), read_timeout=0.2) as served,
        connected(served.port) as client,
    ):
        assert await client.read_to_end() == (b"HELLO\n", "reset")


async def test_a_handshake_sent_in_time_stops_its_deadline() -> None:
    async with (
        serving(_sasl_binding(HeldApi()), read_timeout=0.2) as served,
        connected(served.port) as client,
    ):
        assert await client.read(6) == b"HELLO\n"
        await client.send(b"VERSION\t1\t0\nCPID\t1\n")
        await asyncio.sleep(0.5)
        await client.send(b"AUTH\t1\tLOGIN\tservice=smtp\tsecured\n")
        assert await client.read(20) == b"CONT\t1\tVXNlcm5hbWU6\n"
