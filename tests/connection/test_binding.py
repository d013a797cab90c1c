"""What a mode plugs into the connection shell: a greeting sent first, and reply tables that
see the request they answer. Driven over a real loopback socket with a binding made here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from postfix_rest_api_connector.connection import (
    Connection,
    ConnectionTracker,
    Limits,
    ModeBinding,
)
from postfix_rest_api_connector.core.model import (
    Found,
    LookupRequest,
    Outcome,
    Request,
    TemporaryError,
)
from postfix_rest_api_connector.protocols.tcp_table import TcpTableDecoder

DEADLINE = 10.0


async def _echo_key(request: Request) -> Outcome:
    assert isinstance(request, LookupRequest)
    return Found(request.key.decode())


def _reply(request: Request | None, outcome: Outcome) -> bytes:
    """Names the request it answers, as a protocol with request ids must."""
    asked = request.key.decode() if isinstance(request, LookupRequest) else "-"
    match outcome:
        case Found(value):
            return f"for {asked}: {value}\n".encode()
        case TemporaryError(reason):
            return f"for {asked}: error {reason}\n".encode()
    return f"for {asked}: other\n".encode()


@asynccontextmanager
async def serving(binding: ModeBinding, max_connections: int = 8) -> AsyncIterator[int]:
    tracker = ConnectionTracker()
    limits = Limits(idle_timeout=60, read_timeout=10, max_connections=max_connections)
    server = await asyncio.get_running_loop().create_server(
        lambda: Connection(binding, tracker, limits), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await tracker.drain(1.0)
        await server.wait_closed()


def _binding(greeting: bytes | None) -> ModeBinding:
    return ModeBinding(
        new_decoder=TcpTableDecoder,
        answer_now=lambda _: None,
        ask=_echo_key,
        reply=_reply,
        greeting=(lambda: greeting) if greeting is not None else None,
    )


async def test_the_greeting_comes_first_and_the_reply_table_sees_each_request() -> None:
    async with serving(_binding(b"HELLO 1\n")) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            greeting = await asyncio.wait_for(reader.readline(), DEADLINE)
            writer.write(b"get alpha\nget beta\n")
            first = await asyncio.wait_for(reader.readline(), DEADLINE)
            second = await asyncio.wait_for(reader.readline(), DEADLINE)
        finally:
            writer.close()

    assert (greeting, first, second) == (b"HELLO 1\n", b"for alpha: alpha\n", b"for beta: beta\n")


async def test_without_a_greeting_the_server_waits_for_the_client() -> None:
    async with serving(_binding(None)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"get alpha\n")
            assert await asyncio.wait_for(reader.readline(), DEADLINE) == b"for alpha: alpha\n"
        finally:
            writer.close()


async def test_an_error_of_the_connection_reaches_the_table_without_a_request() -> None:
    """One connection over ``max-connections``: the reply table is asked with no request."""
    async with serving(_binding(None), max_connections=1) as port:
        _, first = await asyncio.open_connection("127.0.0.1", port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            refused = await asyncio.wait_for(reader.read(), DEADLINE)
            writer.close()
        finally:
            first.close()

    assert refused == b"for -: error too many connections\n"
