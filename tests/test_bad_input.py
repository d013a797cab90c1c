"""Hostile input catalogue: every malformed input class, per protocol, with its exact answer.

For each class the table says the exact reply and what happens to the connection next: it stays open
(a good request on it is answered) or it is closed cleanly (EOF right after the error reply). After
every bad connection a separate good connection must still be served, and the API must have seen
only what it should: nothing at all for a malformed request, a failure never looks like "not found".
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from conftest import FakeApi, endpoint_address, endpoint_config, running_connector

WAIT = 10.0
LIMIT = 1024
"""max-request-bytes for the catalogue, so that over-long input is cheap to send."""

Mode = Literal["tcp-lookup", "socketmap-lookup", "policy"]
MODES: tuple[Mode, ...] = ("tcp-lookup", "socketmap-lookup", "policy")

FAILURE = b"action=DEFER_IF_PERMIT Service temporarily unavailable\n\n"
DUNNO = b"action=DUNNO\n\n"


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


def tcp_error(reason: str) -> bytes:
    """``400`` with the reason quoted as tcp_table quotes it (only ``%`` and spaces occur here)."""
    text = f"malformed request: {reason}".replace("%", "%25").replace(" ", "%20")
    return f"400 {text}\n".encode()


def perm(reason: str) -> bytes:
    return netstring(f"PERM malformed request: {reason}".encode())


UNSUPPORTED = tcp_error("unsupported command, expected 'get KEY'")
TCP_TOO_LONG = tcp_error(f"request line longer than {LIMIT} bytes")
NOT_DECIMAL = perm("netstring length is not a decimal number")
LENGTH_TOO_LONG = perm("netstring length is too long or not followed by ':'")
NOT_NAME_KEY = perm("expected 'NAME KEY'")

GOOD_POLICY = b"request=smtpd_access_policy\nrecipient=good@example.com\n\n"


@dataclass(frozen=True)
class Good:
    request: bytes
    reply: bytes
    api_call: str
    """What the API sees for it: the raw query of a lookup, the form body of a policy request."""


GOOD: dict[Mode, Good] = {
    "tcp-lookup": Good(b"get good@example.com\n", b"200 fine\n", "key=good%40example.com"),
    "socketmap-lookup": Good(
        netstring(b"map good@example.com"),
        netstring(b"OK fine"),
        "name=map&key=good%40example.com",
    ),
    "policy": Good(GOOD_POLICY, DUNNO, "request=smtpd_access_policy&recipient=good%40example.com"),
}


def answer_fine(api: FakeApi, mode: Mode) -> None:
    if mode == "policy":
        api.answer_text("DUNNO")
    else:
        api.answer_json(["fine"])


def api_calls(api: FakeApi, mode: Mode) -> list[str]:
    if mode == "policy":
        return [seen.body.decode("ascii") for seen in api.seen]
    return [seen.raw_query for seen in api.seen]


class Client:
    """A raw client socket: unlike a StreamReader it still returns data received before a reset."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()

    async def send(self, data: bytes) -> None:
        await asyncio.wait_for(self._loop.sock_sendall(self.sock, data), WAIT)

    async def expect(self, expected: bytes) -> None:
        """Read exactly as many bytes as ``expected`` (less if the server closes) and compare."""
        received = b""
        async with asyncio.timeout(WAIT):
            while len(received) < len(expected):
                chunk = await self._loop.sock_recv(self.sock, len(expected) - len(received))
                if not chunk:
                    break
                received += chunk
        assert received == expected

    async def read_to_end(self) -> tuple[bytes, str]:
        """Everything until the server closes, and how it closed: ``eof`` or ``reset``."""
        received = b""
        try:
            async with asyncio.timeout(WAIT):
                while chunk := await self._loop.sock_recv(self.sock, 65536):
                    received += chunk
        except ConnectionResetError:
            return received, "reset"
        return received, "eof"

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Close with an RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


@asynccontextmanager
async def connected(address: tuple[str, int]) -> AsyncIterator[Client]:
    """A client connection that is closed however the test ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, address), WAIT)
        yield Client(sock)
    finally:
        sock.close()


async def assert_served(address: tuple[str, int], mode: Mode) -> None:
    """A fresh connection gets its good request answered, then a clean close on half-close."""
    async with connected(address) as client:
        await client.send(GOOD[mode].request)
        await client.expect(GOOD[mode].reply)
        client.shutdown_write()
        assert await client.read_to_end() == (b"", "eof")


def config_for(mode: Mode, api: FakeApi, limit: int = LIMIT) -> dict[str, object]:
    return endpoint_config(mode, api.url, **{"max-request-bytes": limit})


# The catalogue ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    mode: Mode
    name: str
    payload: bytes
    reply: bytes
    then: Literal["open", "closed"]
    api_calls: tuple[str, ...] = ()
    """What the payload itself makes the API see (only for legal bytes that look odd)."""
    limit: int = LIMIT


def attributes(count: int) -> bytes:
    return b"".join(b"a%d=v\n" % number for number in range(count)) + b"\n"


TCP: Mode = "tcp-lookup"
SMAP: Mode = "socketmap-lookup"
POLICY: Mode = "policy"

CATALOGUE = [
    # tcp_table: a malformed line gets 400 and the connection goes on; only a line that can never
    # end within max-request-bytes closes it.
    Case(TCP, "unknown_command", b"put k v\n", UNSUPPORTED, "open"),
    Case(TCP, "upper_case_GET", b"GET k\n", UNSUPPORTED, "open"),
    Case(TCP, "get_without_space", b"get\n", UNSUPPORTED, "open"),
    Case(TCP, "empty_line", b"\n", UNSUPPORTED, "open"),
    Case(TCP, "bare_crlf", b"\r\n", UNSUPPORTED, "open"),
    Case(TCP, "empty_key", b"get \n", tcp_error("empty key"), "open"),
    Case(TCP, "empty_key_crlf", b"get \r\n", tcp_error("empty key"), "open"),
    Case(TCP, "bad_escape", b"get a%zz\n", tcp_error("bad %XX escape in key"), "open"),
    Case(TCP, "truncated_escape", b"get a%4\n", tcp_error("bad %XX escape in key"), "open"),
    Case(TCP, "leading_garbage_tls_hello", b"\x16\x03\x01get k\n", UNSUPPORTED, "open"),
    Case(
        TCP,
        "http_request_three_lines",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        UNSUPPORTED * 3,
        "open",
    ),
    Case(TCP, "crlf_line_ending_cr_stripped", b"get k\r\n", b"200 fine\n", "open", ("key=k",)),
    Case(TCP, "nul_quoted_reaches_api", b"get a%00b\n", b"200 fine\n", "open", ("key=a%00b",)),
    Case(TCP, "nul_raw_reaches_api", b"get a\x00b\n", b"200 fine\n", "open", ("key=a%00b",)),
    Case(
        TCP,
        "invalid_utf8_quoted_reaches_api_raw",
        b"get %FF%FEk\n",
        b"200 fine\n",
        "open",
        ("key=%FF%FEk",),
    ),
    Case(
        TCP,
        "invalid_utf8_raw_reaches_api_raw",
        b"get \xff\xfek\n",
        b"200 fine\n",
        "open",
        ("key=%FF%FEk",),
    ),
    Case(TCP, "overlong_line", b"get " + b"x" * 1100 + b"\n", TCP_TOO_LONG, "closed"),
    Case(TCP, "overlong_line_never_ended", b"get " + b"x" * 1100, TCP_TOO_LONG, "closed"),
    Case(
        TCP,
        "good_request_then_overlong_in_one_write",
        b"get good@example.com\n" + b"x" * 1100,
        b"200 fine\n" + TCP_TOO_LONG,
        "closed",
        ("key=good%40example.com",),
    ),
    # socketmap: framing errors (the stream cannot be split any more) get PERM and a close; a
    # well-framed netstring that is not 'NAME KEY' gets PERM and the connection goes on.
    Case(SMAP, "length_not_digits", b"1x:map k,", NOT_DECIMAL, "closed"),
    Case(SMAP, "negative_length", b"-5:map k,", NOT_DECIMAL, "closed"),
    Case(SMAP, "length_with_leading_space", b" 5:map k,", NOT_DECIMAL, "closed"),
    Case(SMAP, "missing_comma", b"5:map kX", perm("netstring not terminated by ','"), "closed"),
    Case(SMAP, "missing_colon", b"5map k,", LENGTH_TOO_LONG, "closed"),
    Case(SMAP, "absurd_length", b"999999999:", LENGTH_TOO_LONG, "closed"),
    Case(SMAP, "overflowing_30_digit_length", b"1" * 30 + b":map k,", LENGTH_TOO_LONG, "closed"),
    Case(
        SMAP,
        "length_over_max_request_bytes",
        b"5000:",
        perm(f"netstring of 5000 bytes exceeds {LIMIT}"),
        "closed",
    ),
    Case(
        SMAP,
        "overlong_netstring",
        netstring(b"map " + b"k" * 1100),
        perm(f"netstring of 1104 bytes exceeds {LIMIT}"),
        "closed",
    ),
    Case(SMAP, "leading_garbage_short", b"xx5:map k,", NOT_DECIMAL, "closed"),
    Case(SMAP, "leading_garbage_long", b"hello 5:map k,", LENGTH_TOO_LONG, "closed"),
    Case(SMAP, "leading_crlf", b"\r\n5:map k,", NOT_DECIMAL, "closed"),
    Case(SMAP, "http_request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", LENGTH_TOO_LONG, "closed"),
    Case(
        SMAP,
        "good_netstring_then_crlf_in_one_write",
        netstring(b"map good@example.com") + b"\r\n",
        netstring(b"OK fine") + NOT_DECIMAL,
        "closed",
        ("name=map&key=good%40example.com",),
    ),
    Case(SMAP, "empty_netstring", b"0:,", NOT_NAME_KEY, "open"),
    Case(SMAP, "no_space", netstring(b"map"), NOT_NAME_KEY, "open"),
    Case(SMAP, "empty_map_name", netstring(b" k"), NOT_NAME_KEY, "open"),
    Case(SMAP, "empty_key", netstring(b"map "), perm("empty key"), "open"),
    Case(
        SMAP,
        "cr_is_a_key_byte",
        netstring(b"map k\r"),
        netstring(b"OK fine"),
        "open",
        ("name=map&key=k%0D",),
    ),
    Case(
        SMAP,
        "nul_reaches_api",
        netstring(b"map a\x00b"),
        netstring(b"OK fine"),
        "open",
        ("name=map&key=a%00b",),
    ),
    Case(
        SMAP,
        "invalid_utf8_reaches_api_raw",
        netstring(b"map \xff\xfek"),
        netstring(b"OK fine"),
        "open",
        ("name=map&key=%FF%FEk",),
    ),
    # policy: a malformed request (ended by its empty line) gets the failure action and the
    # connection goes on; a request that outgrows max-request-bytes gets it and a close.
    Case(POLICY, "attribute_without_equals", b"request=x\nno equals sign\n\n", FAILURE, "open"),
    Case(POLICY, "attribute_with_empty_name", b"=value\n\n", FAILURE, "open"),
    Case(POLICY, "duplicate_attribute", b"recipient=a\nrecipient=b\n\n", FAILURE, "open"),
    Case(POLICY, "empty_request", b"\n", FAILURE, "open"),
    Case(POLICY, "empty_request_crlf", b"\r\n", FAILURE, "open"),
    Case(POLICY, "tcp_request_sent_to_policy", b"get k\n\n", FAILURE, "open"),
    Case(POLICY, "http_request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", FAILURE, "open"),
    Case(
        POLICY,
        "crlf_line_endings_cr_stripped",
        b"request=smtpd_access_policy\r\nrecipient=r@x\r\n\r\n",
        DUNNO,
        "open",
        ("request=smtpd_access_policy&recipient=r%40x",),
    ),
    Case(
        POLICY,
        "nul_in_value_reaches_api",
        b"request=smtpd_access_policy\nhelo_name=a\x00b\n\n",
        DUNNO,
        "open",
        ("request=smtpd_access_policy&helo_name=a%00b",),
    ),
    Case(
        POLICY,
        "invalid_utf8_value_reaches_api_raw",
        b"request=smtpd_access_policy\nhelo_name=\xff\xfe\n\n",
        DUNNO,
        "open",
        ("request=smtpd_access_policy&helo_name=%FF%FE",),
    ),
    Case(POLICY, "invalid_utf8_name_reaches_api_raw", b"\xff=1\n\n", DUNNO, "open", ("%FF=1",)),
    Case(POLICY, "overlong_request", b"request=" + b"v" * 1100 + b"\n\n", FAILURE, "closed"),
    Case(POLICY, "overlong_line_never_ended", b"request=" + b"v" * 1100, FAILURE, "closed"),
    Case(
        POLICY,
        "5000_attributes_under_max_request_bytes_hit_the_256_attribute_limit",
        attributes(5000),
        FAILURE,
        "open",
        limit=65536,
    ),
    Case(
        POLICY,
        "5000_attributes_over_max_request_bytes_close",
        attributes(5000),
        FAILURE,
        "closed",
    ),
    Case(
        POLICY,
        "good_request_then_overlong_in_one_write",
        GOOD_POLICY + b"x" * 1100,
        DUNNO + FAILURE,
        "closed",
        (GOOD["policy"].api_call,),
    ),
]


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda case: f"{case.mode}-{case.name}")
async def test_catalogue(api: FakeApi, case: Case) -> None:
    answer_fine(api, case.mode)
    good = GOOD[case.mode]
    async with (
        running_connector(config_for(case.mode, api, case.limit)) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        client = await stack.enter_async_context(connected(address))
        await client.send(case.payload)
        if case.then == "open":
            await client.expect(case.reply)
            await client.send(good.request)
            await client.expect(good.reply)
            client.shutdown_write()
        assert await client.read_to_end() == (b"" if case.then == "open" else case.reply, "eof")
        await assert_served(address, case.mode)
    on_bad = [*case.api_calls, *([good.api_call] if case.then == "open" else [])]
    assert api_calls(api, case.mode) == [*on_bad, good.api_call]


# Pure binary garbage ----------------------------------------------------------------------------


def garbage(mode: Mode, size: int) -> bytes:
    return random.Random(f"garbage:{mode}:{size}").randbytes(size)


@pytest.mark.parametrize("size", [1, 64, 1000, 5000])
async def test_binary_garbage_tcp_gets_400_per_line_and_stays_open(api: FakeApi, size: int) -> None:
    data = garbage("tcp-lookup", size)
    lines = data.split(b"\n")  # the newline sent after the garbage ends the last one
    assert all(len(line) < LIMIT and not line.startswith(b"get ") for line in lines), "bad seed"
    answer_fine(api, "tcp-lookup")
    async with (
        running_connector(config_for("tcp-lookup", api)) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        client = await stack.enter_async_context(connected(address))
        await client.send(data + b"\n")
        await client.expect(UNSUPPORTED * len(lines))
        await client.send(GOOD["tcp-lookup"].request)
        await client.expect(GOOD["tcp-lookup"].reply)
        await assert_served(address, "tcp-lookup")
    assert api_calls(api, "tcp-lookup") == [GOOD["tcp-lookup"].api_call] * 2


@pytest.mark.parametrize("size", [1, 64, 1000, 5000])
async def test_binary_garbage_socketmap_gets_perm_then_close(api: FakeApi, size: int) -> None:
    data = garbage("socketmap-lookup", size)
    assert not data[:1].isdigit(), "bad seed"
    answer_fine(api, "socketmap-lookup")
    async with (
        running_connector(config_for("socketmap-lookup", api)) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        client = await stack.enter_async_context(connected(address))
        await client.send(data)
        reply, ending = await client.read_to_end()
        assert ending == "eof"
        assert reply in {NOT_DECIMAL, LENGTH_TOO_LONG}
        await assert_served(address, "socketmap-lookup")
    assert api_calls(api, "socketmap-lookup") == [GOOD["socketmap-lookup"].api_call]


@pytest.mark.parametrize(
    ("size", "then"), [(1, "open"), (64, "open"), (1000, "open"), (5000, "closed")]
)
async def test_binary_garbage_policy_gets_the_failure_action(
    api: FakeApi, size: int, then: str
) -> None:
    """Under max-request-bytes the connection goes on; past it, it is closed."""
    data = garbage("policy", size)
    lines = data.split(b"\n")
    assert all(line.removesuffix(b"\r") for line in lines), "bad seed: an empty line inside"
    assert any(line.partition(b"=")[0] in {line, b""} for line in lines), "bad seed: well formed"
    answer_fine(api, "policy")
    async with (
        running_connector(config_for("policy", api)) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        client = await stack.enter_async_context(connected(address))
        await client.send(data + b"\n\n")
        if then == "open":
            await client.expect(FAILURE)
            await client.send(GOOD_POLICY)
            await client.expect(DUNNO)
            client.shutdown_write()
            assert await client.read_to_end() == (b"", "eof")
        else:
            assert await client.read_to_end() == (FAILURE, "eof")
        await assert_served(address, "policy")
    calls = api_calls(api, "policy")
    assert calls == [GOOD["policy"].api_call] * (2 if then == "open" else 1)


# Clients that leave mid-request -----------------------------------------------------------------

PARTIAL: dict[Mode, bytes] = {
    "tcp-lookup": b"get partial@exam",
    "socketmap-lookup": b"23:map partial@exa",
    "policy": b"request=smtpd_access_policy\nrecipient=partial@example.com\n",
}


@pytest.mark.parametrize("after_good", [False, True], ids=["alone", "after_a_good_request"])
@pytest.mark.parametrize("mode", MODES)
async def test_half_close_mid_request_closes_without_reply(
    api: FakeApi, mode: Mode, after_good: bool
) -> None:
    """shutdown(SHUT_WR) after part of a request: complete requests answered, then a clean EOF."""
    answer_fine(api, mode)
    good = GOOD[mode]
    async with (
        running_connector(config_for(mode, api)) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        client = await stack.enter_async_context(connected(address))
        await client.send((good.request if after_good else b"") + PARTIAL[mode])
        client.shutdown_write()
        assert await client.read_to_end() == (good.reply if after_good else b"", "eof")
        await assert_served(address, mode)
    assert api_calls(api, mode) == [good.api_call] * (2 if after_good else 1)


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("mode", MODES)
async def test_disconnect_mid_request_leaves_the_server_serving(
    api: FakeApi, mode: Mode, how: str
) -> None:
    answer_fine(api, mode)
    async with (
        running_connector(config_for(mode, api)) as daemon,
        AsyncExitStack() as stack,
    ):
        address = endpoint_address(daemon)
        leaving = await stack.enter_async_context(connected(address))
        staying = await stack.enter_async_context(connected(address))
        await leaving.send(PARTIAL[mode])
        await staying.send(PARTIAL[mode])
        if how == "reset":
            leaving.reset()
        else:
            leaving.sock.close()
        await assert_served(address, mode)
        # a connection that was mid-request at the same moment still completes its request
        rest = {
            "tcp-lookup": b"ple.com\n",
            "socketmap-lookup": b"mple.com,",
            "policy": b"\n",
        }[mode]
        await staying.send(rest)
        await staying.expect(GOOD[mode].reply)
    partial_call = {
        "tcp-lookup": "key=partial%40example.com",
        "socketmap-lookup": "name=map&key=partial%40example.com",
        "policy": "request=smtpd_access_policy&recipient=partial%40example.com",
    }[mode]
    assert api_calls(api, mode) == [GOOD[mode].api_call, partial_call]


@pytest.mark.parametrize("mode", MODES)
async def test_disconnect_while_the_api_call_is_in_flight(api: FakeApi, mode: Mode) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if not entered.is_set():
            entered.set()
            await release.wait()
        return web.Response(text="DUNNO") if mode == "policy" else web.json_response(["fine"])

    api.handler = handler
    config = endpoint_config(mode, api.url, **{"request-timeout": 10_000})
    async with (
        running_connector(config) as daemon,
        AsyncExitStack() as stack,
    ):
        stack.callback(release.set)
        address = endpoint_address(daemon)
        leaving = await stack.enter_async_context(connected(address))
        await leaving.send(GOOD[mode].request)
        await asyncio.wait_for(entered.wait(), WAIT)
        leaving.reset()
        # a lookup of the same key now shares the call still in flight (coalescing): it is
        # answered once the API answers; a policy request makes a call of its own
        served = asyncio.create_task(assert_served(address, mode))
        if mode == "policy":
            await asyncio.wait_for(served, WAIT)
        else:
            stats = daemon.endpoints[0].service.stats
            async with asyncio.timeout(WAIT):
                while not stats.coalesced:  # noqa: ASYNC110 - the service has no event for it
                    await asyncio.sleep(0.005)
        release.set()
        await asyncio.wait_for(served, WAIT)
    calls = 2 if mode == "policy" else 1
    assert api_calls(api, mode) == [GOOD[mode].api_call] * calls


# Security: nothing a client sends can add an HTTP header or a form field ------------------------

INJECTED = "\r\nX-Injected: yes"


@pytest.mark.parametrize(
    ("mode", "payload", "raw_query", "query"),
    [
        (
            "tcp-lookup",
            b"get %0D%0AX-Injected:%20yes\n",
            "key=%0D%0AX-Injected%3A%20yes",
            {"key": INJECTED},
        ),
        (
            "socketmap-lookup",
            netstring(b"map " + INJECTED.encode()),
            "name=map&key=%0D%0AX-Injected%3A%20yes",
            {"name": "map", "key": INJECTED},
        ),
        (
            "socketmap-lookup",
            netstring(b"map" + INJECTED.encode()),
            "name=map%0D%0AX-Injected%3A&key=yes",
            {"name": "map\r\nX-Injected:", "key": "yes"},
        ),
    ],
    ids=["tcp-key", "socketmap-key", "socketmap-map-name"],
)
async def test_crlf_in_a_lookup_key_cannot_inject_a_header(
    api: FakeApi, mode: Mode, payload: bytes, raw_query: str, query: dict[str, str]
) -> None:
    answer_fine(api, mode)
    async with (
        running_connector(config_for(mode, api)) as daemon,
        connected(endpoint_address(daemon)) as client,
    ):
        await client.send(payload)
        await client.expect(GOOD[mode].reply)
    [seen] = api.seen
    assert "X-Injected" not in seen.headers
    assert seen.raw_query == raw_query
    assert seen.query == query


async def test_cr_inside_a_policy_value_cannot_inject_a_header(api: FakeApi) -> None:
    """A policy line cannot hold CR LF, but a CR followed by more text stays in the value."""
    answer_fine(api, "policy")
    async with (
        running_connector(config_for("policy", api)) as daemon,
        connected(endpoint_address(daemon)) as client,
    ):
        await client.send(b"request=smtpd_access_policy\nhelo_name=a\rX-Injected: yes\n\n")
        await client.expect(DUNNO)
    [seen] = api.seen
    assert "X-Injected" not in seen.headers
    assert seen.body == b"request=smtpd_access_policy&helo_name=a%0DX-Injected%3A+yes"


HOSTILE_ATTRIBUTES = [
    ("request", "smtpd_access_policy"),
    ("helo_name", "a&recipient=admin@example.com"),
    ("sender", "x=y==z@example.com"),
    ("recipient", "100%25+%41@example.com"),
    ("client_name", "plus+sign and space"),
    ("reverse_client_name", "m\u00fcller.ex\u00e4mple"),
    ("ccert_subject", "nul\x00byte"),
    ("sasl_username", "&&=="),
    ("policy_context", ""),
    ("x&y+z%", "name with separators"),
]


async def test_hostile_policy_values_each_stay_one_form_field(api: FakeApi) -> None:
    answer_fine(api, "policy")
    request = b"".join(f"{name}={value}\n".encode() for name, value in HOSTILE_ATTRIBUTES)
    async with (
        running_connector(config_for("policy", api)) as daemon,
        connected(endpoint_address(daemon)) as client,
    ):
        await client.send(request + b"\n")
        await client.expect(DUNNO)
    [seen] = api.seen
    assert seen.body.isascii()
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    fields = parse_qsl(seen.body.decode(), strict_parsing=True, keep_blank_values=True)
    assert fields == HOSTILE_ATTRIBUTES
