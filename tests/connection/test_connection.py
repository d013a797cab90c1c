"""Connection handling over real sockets: framing across reads, order, limits, idle, drain."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import cast

import pytest
from aiohttp import web

from conftest import FakeApi, endpoint_address, endpoint_config, netstring, running_connector
from postfix_rest_api_connector.config import DEFAULT_FAILURE_ACTION
from postfix_rest_api_connector.connection import Connection
from postfix_rest_api_connector.connection.handler import FEED_BYTES, MAX_WAITING

FAILURE = f"action={DEFAULT_FAILURE_ACTION}\n\n".encode()


def echo_key(api: FakeApi) -> None:
    """The API answers each lookup with its own key, so misrouted answers show."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response([f"value-of-{request.query['key']}"])

    api.handler = handler


@asynccontextmanager
async def connected(
    address: tuple[str, int],
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A client connection that is closed however the test ends."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 10)


REQUESTS = {
    "tcp-lookup": (
        b"get one\nget two%20words\nget three\n",
        b"200 value-of-one\n200 value-of-two%20words\n200 value-of-three\n",
    ),
    "socketmap-lookup": (
        b"7:map one,13:map two words,9:map three,",
        b"15:OK value-of-one,21:OK value-of-two words,17:OK value-of-three,",
    ),
}


@pytest.mark.parametrize("mode", list(REQUESTS))
@pytest.mark.parametrize("chunk", [1, 3, 16, 4096])
async def test_requests_split_and_coalesced_are_each_answered_in_order(
    api: FakeApi, mode: str, chunk: int
) -> None:
    echo_key(api)
    payload, expected = REQUESTS[mode]
    async with (
        running_connector(endpoint_config(mode, api.url)) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        reader, writer = await stack.enter_async_context(connected(address))
        for start in range(0, len(payload), chunk):
            writer.write(payload[start : start + chunk])
            await writer.drain()
        writer.write_eof()
        assert await read_all(reader) == expected
    assert [seen.query["key"] for seen in api.seen] == ["one", "two words", "three"]


async def test_policy_requests_split_bytewise_and_pipelined(api: FakeApi) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        return web.Response(text=f"action=REJECT {form.getone('recipient')!s}")

    api.handler = handler
    one = b"request=smtpd_access_policy\nrecipient=a@x\n\n"
    two = b"request=smtpd_access_policy\nrecipient=b@x\n\n"
    async with (
        running_connector(endpoint_config("policy", api.url)) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        reader, writer = await stack.enter_async_context(connected(address))
        for byte in one:
            writer.write(bytes((byte,)))
            await writer.drain()
        assert await reader.readuntil(b"\n\n") == b"action=REJECT a@x\n\n"
        writer.write(two + one)
        writer.write_eof()
        assert await read_all(reader) == b"action=REJECT b@x\n\naction=REJECT a@x\n\n"


@pytest.mark.parametrize(
    ("mode", "bad", "bad_reply"),
    [
        ("tcp-lookup", b"put k v\n", b"400 malformed%20request:%20unsupported%20command"),
        ("tcp-lookup", b"get bad%zzescape\n", b"400 malformed%20request:%20bad%20%25XX"),
        ("tcp-lookup", b"get \n", b"400 malformed%20request:%20empty%20key\n"),
        (
            "socketmap-lookup",
            b"7:nospace,",
            netstring("PERM malformed request: expected 'NAME KEY'"),
        ),
        ("socketmap-lookup", b"4:map ,", netstring("PERM malformed request: empty key")),
        ("policy", b"no equals sign\n\n", FAILURE),
        ("policy", b"a=1\na=2\n\n", FAILURE),
    ],
    ids=repr,
)
async def test_malformed_request_gets_an_error_and_the_connection_goes_on(
    api: FakeApi, mode: str, bad: bytes, bad_reply: bytes
) -> None:
    api.answer_json(["fine"]) if mode != "policy" else api.answer_text("DUNNO")
    good, good_reply = {
        "tcp-lookup": (b"get k\n", b"200 fine\n"),
        "socketmap-lookup": (b"5:map k,", b"7:OK fine,"),
        "policy": (b"recipient=r\n\n", b"action=DUNNO\n\n"),
    }[mode]
    async with (
        running_connector(endpoint_config(mode, api.url)) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        reader, writer = await stack.enter_async_context(connected(address))
        writer.write(bad + good)
        writer.write_eof()
        replies = await read_all(reader)
    assert replies.startswith(bad_reply)
    assert replies.endswith(good_reply)
    assert len(api.seen) == 1, "a malformed request must never reach the API"


@pytest.mark.parametrize(
    ("mode", "flood", "reply"),
    [
        (
            "tcp-lookup",
            b"get " + b"x" * 2000,
            b"400 malformed%20request:%20request%20line%20longer",
        ),
        ("socketmap-lookup", b"5000:", b"PERM malformed request: netstring of 5000 bytes"),
        ("socketmap-lookup", b"99999999:", b"PERM malformed request: netstring length is too long"),
        ("socketmap-lookup", b"12x:", b"PERM malformed request: netstring length is not"),
        ("socketmap-lookup", b"3:a bX", b"PERM malformed request: netstring not terminated"),
        ("policy", b"name=" + b"v" * 2000, FAILURE),
    ],
    ids=repr,
)
async def test_framing_errors_get_an_error_reply_then_a_clean_close(
    api: FakeApi, mode: str, flood: bytes, reply: bytes
) -> None:
    config = endpoint_config(mode, api.url, **{"max-request-bytes": 1024})
    async with (
        running_connector(config) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        reader, writer = await stack.enter_async_context(connected(address))
        writer.write(flood)
        received = await read_all(reader)  # EOF: the connector closed the connection
        assert reply in received
        # the listener still serves others
        api.answer_json(["ok"]) if mode != "policy" else api.answer_text("OK")
        ok_reader, ok_writer = await stack.enter_async_context(connected(address))
        ok_writer.write(
            {"tcp-lookup": b"get k\n", "socketmap-lookup": b"5:map k,"}.get(mode, b"a=b\n\n")
        )
        ok_writer.write_eof()
        assert await read_all(ok_reader) in {b"200 ok\n", b"5:OK ok,", b"action=OK\n\n"}
    assert not api.seen[:-1], "nothing from the bad connection reached the API"


async def test_idle_connection_is_closed_but_a_busy_one_is_not(api: FakeApi) -> None:
    release = asyncio.Event()

    async def slow(_: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response(["late"])

    api.handler = slow
    config = endpoint_config("tcp-lookup", api.url, **{"idle-timeout": 1000})
    config["request-timeout"] = 10_000
    async with (
        running_connector(config) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        idle_reader, _ = await stack.enter_async_context(connected(address))
        busy_reader, busy_writer = await stack.enter_async_context(connected(address))
        busy_writer.write(b"get k\n")
        started = time.monotonic()
        assert await read_all(idle_reader) == b""
        assert 0.9 < time.monotonic() - started < 3
        await asyncio.sleep(0.5)  # past the idle timeout while the request is still in flight
        release.set()
        assert await busy_reader.readline() == b"200 late\n"


async def test_trickling_bytes_do_not_keep_a_connection_open(api: FakeApi) -> None:
    """Idleness counts whole requests, so a slow-loris client is closed at the idle timeout."""
    config = endpoint_config("tcp-lookup", api.url, **{"idle-timeout": 1000})
    async with (
        running_connector(config) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        reader, writer = await stack.enter_async_context(connected(address))
        closed = asyncio.create_task(reader.read())
        started = time.monotonic()
        for _ in range(25):
            writer.write(b"x")
            done, _ = await asyncio.wait({closed}, timeout=0.2)
            if done:
                break
        assert closed.done(), "the connector never closed a trickling connection"
        assert closed.result() == b""
        assert time.monotonic() - started < 3


async def test_half_closed_client_still_gets_its_answers(api: FakeApi) -> None:
    api.answer_json(["v"])
    async with (
        running_connector(endpoint_config("tcp-lookup", api.url)) as daemon,
    ):
        address = endpoint_address(daemon)
        sock = socket.create_connection(address)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, b"get a\nget b\n")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 4096), 10):
            received += chunk
        sock.close()
    assert received == b"200 v\n200 v\n"


async def test_client_leaving_mid_request_does_not_disturb_others(api: FakeApi) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query["key"] == "slow":
            entered.set()
            await release.wait()
        return web.json_response([request.query["key"]])

    api.handler = handler
    async with (
        running_connector(endpoint_config("tcp-lookup", api.url)) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        _, leaving = await stack.enter_async_context(connected(address))
        leaving.write(b"get slow\n")
        await entered.wait()
        leaving.transport.abort()
        reader, writer = await stack.enter_async_context(connected(address))
        writer.write(b"get fast\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"200 fast\n"
        release.set()


async def test_shutdown_answers_requests_already_received(api: FakeApi) -> None:
    stalled = api.stall(["answered"])
    config = endpoint_config("tcp-lookup", api.url, **{"request-timeout": 10_000})
    async with (
        running_connector(config) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        reader, writer = await stack.enter_async_context(connected(address))
        writer.write(b"get k1\nget k2\n")
        await stalled.received.wait()
        stopping = asyncio.create_task(daemon.stop())
        await asyncio.sleep(0)  # let stop() close the listener
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*address)
        stalled.release.set()
        assert await read_all(reader) == b"200 answered\n200 answered\n"
        await asyncio.wait_for(stopping, 5)


async def test_shutdown_deadline_aborts_what_never_finishes(api: FakeApi) -> None:
    entered = asyncio.Event()

    async def never(_: web.Request) -> web.StreamResponse:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    api.handler = never
    config = endpoint_config("tcp-lookup", api.url, **{"request-timeout": 60_000})
    async with (
        running_connector(config, **{"shutdown-timeout": 200}) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        reader, writer = await stack.enter_async_context(connected(address))
        writer.write(b"get k\n")
        await entered.wait()
        started = time.monotonic()
        await daemon.stop()
        assert time.monotonic() - started < 2
        try:
            received = await read_all(reader)
        except ConnectionResetError:
            received = b""
        assert received == b"", "an aborted request gets no answer at all, not a wrong one"


@pytest.mark.parametrize(
    ("mode", "refusal"),
    [
        ("tcp-lookup", b"400 too%20many%20connections\n"),
        ("socketmap-lookup", netstring("TEMP too many connections")),
        ("policy", FAILURE),
    ],
)
async def test_connections_past_max_connections_get_a_temporary_error_and_close(
    api: FakeApi, mode: str, refusal: bytes
) -> None:
    api.answer_json(["v"]) if mode != "policy" else api.answer_text("DUNNO")
    config = endpoint_config(mode, api.url, **{"max-connections": 2})
    request = {"tcp-lookup": b"get k\n", "socketmap-lookup": b"5:map k,"}.get(mode, b"a=b\n\n")
    async with (
        running_connector(config) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        first, first_writer = await stack.enter_async_context(connected(address))
        second, second_writer = await stack.enter_async_context(connected(address))
        for reader, writer in ((first, first_writer), (second, second_writer)):
            writer.write(request)  # both are accepted and served before the third arrives
            assert await asyncio.wait_for(reader.read(100), 10) != b""
        third, _ = await stack.enter_async_context(connected(address))
        assert await read_all(third) == refusal
        first_writer.close()
        await first_writer.wait_closed()
        assert await read_all(first) == b""
        for _ in range(100):  # the slot frees once the connector sees the close
            fourth, fourth_writer = await stack.enter_async_context(connected(address))
            fourth_writer.write(request)
            if (reply := await asyncio.wait_for(fourth.read(100), 10)) != refusal:
                break
        assert reply not in {b"", refusal}


@pytest.mark.parametrize(
    ("mode", "partial", "reply"),
    [
        ("tcp-lookup", b"get slow", b"400 request%20not%20completed%20within%20read-timeout\n"),
        (
            "socketmap-lookup",
            b"20:map slo",
            netstring("TEMP request not completed within read-timeout"),
        ),
        ("policy", b"recipient=a@b\n", FAILURE),
    ],
)
async def test_a_started_request_must_finish_within_read_timeout(
    api: FakeApi, mode: str, partial: bytes, reply: bytes
) -> None:
    config = endpoint_config(mode, api.url, **{"read-timeout": 300})
    async with (
        running_connector(config) as daemon,
        AsyncExitStack() as stack,
    ):
        reader, writer = await stack.enter_async_context(connected(endpoint_address(daemon)))
        started = time.monotonic()
        writer.write(partial)
        assert await read_all(reader) == reply
        assert 0.25 < time.monotonic() - started < 2
    assert not api.seen


async def test_the_read_deadline_runs_from_the_partial_request_not_the_first(
    api: FakeApi,
) -> None:
    """Each write completes one request and starts the next, more slowly in all than
    read-timeout but each request well within it: none is cut off."""
    api.answer_json(["v"])
    writes = 8
    config = endpoint_config("tcp-lookup", api.url, **{"read-timeout": 1000})
    async with (
        running_connector(config) as daemon,
        AsyncExitStack() as stack,
    ):
        reader, writer = await stack.enter_async_context(connected(endpoint_address(daemon)))
        started = time.monotonic()
        writer.write(b"get k0")
        for index in range(1, writes):
            await asyncio.sleep(0.2)  # the client's own pace: that is what is tested
            writer.write(b"\nget k%d" % index)
        writer.write(b"\n")
        replies = [await asyncio.wait_for(reader.readline(), 10) for _ in range(writes)]
        assert time.monotonic() - started > 1.0, "the requests took longer than read-timeout"
        assert replies == [b"200 v\n"] * writes


async def test_binding_beyond_loopback_logs_a_warning(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    config = endpoint_config("tcp-lookup", api.url, **{"bind-address": "0.0.0.0"})
    with caplog.at_level("WARNING"):
        async with running_connector(config):
            pass
    assert "listens on non-loopback 0.0.0.0" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        async with running_connector(endpoint_config("tcp-lookup", api.url)):
            pass
    assert "non-loopback" not in caplog.text


async def test_max_policy_attributes_is_configurable(api: FakeApi) -> None:
    api.answer_text("DUNNO")
    config = endpoint_config("policy", api.url, **{"max-policy-attributes": 32})
    many = b"".join(b"a%d=x\n" % index for index in range(33)) + b"\n"
    enough = b"".join(b"a%d=x\n" % index for index in range(32)) + b"\n"
    async with (
        running_connector(config) as daemon,
        AsyncExitStack() as stack,
    ):
        reader, writer = await stack.enter_async_context(connected(endpoint_address(daemon)))
        writer.write(many + enough)
        writer.write_eof()
        assert await read_all(reader) == FAILURE + b"action=DUNNO\n\n"
    assert len(api.seen) == 1


async def test_a_client_that_reads_nothing_is_not_served_without_bound(api: FakeApi) -> None:
    """Write backpressure: once the replies pile up unread, the connector stops reading; when
    the client reads again, every request gets its answer, in order."""
    value = "v" * 4000
    api.answer_json([value])
    requests = 5000
    async with (
        running_connector(endpoint_config("tcp-lookup", api.url)) as daemon,
        AsyncExitStack() as stack,
    ):
        reader, writer = await stack.enter_async_context(connected(endpoint_address(daemon)))
        writer.write(b"".join(b"get k%d\n" % index for index in range(requests)))
        served = -1
        async with asyncio.timeout(20):
            while served != len(api.seen):  # until the connector has stopped asking the API
                served = len(api.seen)
                await asyncio.sleep(0.3)
        assert served < requests / 2, f"{served} requests served to a client reading nothing"
        reply = f"200 {value}\n".encode()
        received = await asyncio.wait_for(reader.readexactly(len(reply) * requests), 60)
    assert received == reply * requests
    assert len(api.seen) == requests


async def test_a_client_that_never_reads_is_cut_off_after_read_timeout(api: FakeApi) -> None:
    """Its connection slot is freed: a stuck client cannot hold max-connections forever."""
    api.answer_json(["v" * 4000])
    config = endpoint_config("tcp-lookup", api.url, **{"read-timeout": 500})
    async with (
        running_connector(config) as daemon,
        AsyncExitStack() as stack,
    ):
        _, writer = await stack.enter_async_context(connected(endpoint_address(daemon)))
        writer.write(b"get k\n" * 5000)
        tracker = daemon.endpoints[0].tracker
        started = time.monotonic()
        async with asyncio.timeout(10):
            await tracker.wait_all_closed()
        assert time.monotonic() - started < 5
        assert len(api.seen) < 5000


async def test_one_read_of_many_pipelined_requests_is_decoded_a_little_at_a_time(
    api: FakeApi,
) -> None:
    """2000 requests in one write: no more than MAX_WAITING plus one FEED_BYTES chunk's worth
    become request objects; the rest waits as bytes, and every request is still answered."""
    count = 2000
    stalled = api.stall(["v"])
    config = endpoint_config("tcp-lookup", api.url, **{"request-timeout": 10_000})
    async with running_connector(config) as daemon, AsyncExitStack() as stack:
        reader, writer = await stack.enter_async_context(connected(endpoint_address(daemon)))
        writer.write(b"get k\n" * count)
        await asyncio.wait_for(stalled.received.wait(), 10)
        (open_connection,) = daemon.endpoints[0].tracker.open
        connection = cast(Connection, open_connection)
        waiting = len(connection._waiting)
        assert MAX_WAITING <= waiting < MAX_WAITING + FEED_BYTES // len(b"get k\n")
        assert connection._unfed, "the rest of the read waits undecoded"
        stalled.release.set()
        replies = b""
        while replies.count(b"\n") < count:
            replies += await asyncio.wait_for(reader.read(65536), 10)
        assert replies == b"200 v\n" * count
