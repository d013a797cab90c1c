"""Hostile input catalogue for the sasl mode, with each answer and what becomes of the
connection's other ids.

Every case runs on a connection whose client has done its handshake and has one good login
(id 1) held by the API. The hostile bytes come next. A case that keeps the connection gets its
answer at once, then id 1 gets its own when the API lets go, and a further login on the same
connection is served. A case that ends the connection still lets id 1 be answered first, then
resets it (a reset is the protocol's only way to say "try again later"). Either way a fresh
connection is served afterwards, and the API saw only what it should.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Literal

import pytest

from conftest import FakeApi, endpoint_address, endpoint_config, running_connector
from test_bad_input import Client, connected

HELLO = b"VERSION\t1\t0\nCPID\t4242\n"
HELD = b"OK\t1\tuser=held@example.org\n"
SESSION = b"service=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.7\tsecured"


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def auth(request_id: bytes, rest: bytes) -> bytes:
    return b"AUTH\t%s\t%s\n" % (request_id, rest)


def resp(request_id: bytes, response: bytes) -> bytes:
    """``AUTH PLAIN`` with this initial response, in a TLS session."""
    return auth(request_id, b"PLAIN\t" + SESSION + b"\tresp=" + response)


def plain(request_id: bytes, user: bytes = b"good@example.org", password: bytes = b"pw") -> bytes:
    return resp(request_id, b64(b"\0" + user + b"\0" + password))


def fail(request_id: bytes, reason: bytes) -> bytes:
    return b"FAIL\t%s\treason=%s\n" % (request_id, reason)


def ok(request_id: bytes) -> bytes:
    return b"OK\t%s\tuser=held@example.org\n" % request_id


@dataclass(frozen=True)
class Case:
    name: str
    payload: bytes
    reply: bytes
    """Answered at once, while id 1 is still with the API (nothing for a case that closes)."""
    then: Literal["open", "closed"]
    after: bytes = HELD
    """What comes once the API lets go: id 1's answer (and any the payload itself started)."""
    api_calls: int = 0
    """Logins the payload itself sends to the API."""


NO_EXCHANGE = b"No authentication in progress with this id"
BAD_BASE64 = b"Invalid base64 data"
NO_MECHANISM = b"Unsupported authentication mechanism"
BAD_PLAIN = b"Invalid PLAIN response"
BAD_USER = b"Invalid user name"
USERNAME = b"CONT\t2\tVXNlcm5hbWU6\n"
"""The LOGIN challenge ``Username:`` for id 2."""
CATALOGUE = [
    # A line the codec can pin to an id: FAIL for that id, the connection and id 1 go on.
    Case("bad_base64", resp(b"2", b"AH*"), fail(b"2", BAD_BASE64), "open"),
    Case("bad_base64_padding", resp(b"2", b"AHUAcA"), fail(b"2", BAD_BASE64), "open"),
    Case(
        "bad_base64_in_cont",
        auth(b"2", b"LOGIN\t" + SESSION) + b"CONT\t2\t%%%\n",
        USERNAME + fail(b"2", BAD_BASE64),
        "open",
    ),
    Case(
        "unknown_mechanism", auth(b"2", b"CRAM-MD5\t" + SESSION), fail(b"2", NO_MECHANISM), "open"
    ),
    Case(
        "anonymous_mechanism",
        auth(b"2", b"ANONYMOUS\t" + SESSION),
        fail(b"2", NO_MECHANISM),
        "open",
    ),
    Case(
        "no_service", auth(b"2", b"PLAIN\tsecured"), fail(b"2", b"Malformed AUTH request"), "open"
    ),
    Case(
        "plaintext_without_tls",
        auth(b"2", b"PLAIN\tservice=smtp\tresp=" + b64(b"\0u\0p")),
        fail(b"2", b"Plaintext authentication disallowed without TLS"),
        "open",
    ),
    Case("plain_without_nuls", resp(b"2", b64(b"user password")), fail(b"2", BAD_PLAIN), "open"),
    Case("plain_extra_nuls", plain(b"2", b"u\0p\0x"), fail(b"2", BAD_PLAIN), "open"),
    Case(
        "plain_other_authzid",
        resp(b"2", b64(b"admin\0u\0p")),
        fail(b"2", b"Authorization identity not supported"),
        "open",
    ),
    Case(
        "user_with_lf_injection", plain(b"2", b"u\nOK\t1\tuser=admin"), fail(b"2", BAD_USER), "open"
    ),
    Case("user_not_utf8", plain(b"2", b"\xff\xfe"), fail(b"2", BAD_USER), "open"),
    Case("empty_password", plain(b"2", password=b""), fail(b"2", b"Invalid password"), "open"),
    Case("cont_for_unknown_id", b"CONT\t7\t" + b64(b"x") + b"\n", fail(b"7", NO_EXCHANGE), "open"),
    Case(
        "cont_for_the_id_with_the_api",
        b"CONT\t1\t" + b64(b"x") + b"\n",
        fail(b"1", NO_EXCHANGE),
        "open",
    ),
    Case(
        "cont_after_the_exchange_failed",
        resp(b"2", b"!") + b"CONT\t2\tAA==\n",
        fail(b"2", BAD_BASE64) + fail(b"2", NO_EXCHANGE),
        "open",
    ),
    Case(
        "reused_waiting_id_restarts_it",
        auth(b"2", b"LOGIN\t" + SESSION) + auth(b"2", b"PLAIN\t" + SESSION),
        USERNAME + b"CONT\t2\t\n",
        "open",
    ),
    Case(
        "reused_id_with_the_api_is_answered_for_itself_too",
        plain(b"1"),
        b"",
        "open",
        after=HELD + HELD,
        api_calls=1,
    ),
    Case(
        "response_over_smtpds_limit",
        resp(b"2", b"A" * 12292),
        fail(b"2", b"Response too long"),
        "open",
    ),
    Case(
        "crlf_line_ends",
        plain(b"2").replace(b"\n", b"\r\n"),
        b"",
        "open",
        after=HELD + ok(b"2"),
        api_calls=1,
    ),
    # No id to answer, or the protocol broken: id 1 answered, then the connection is reset.
    Case("auth_without_id", b"AUTH\n", b"", "closed"),
    Case("auth_id_not_a_number", auth(b"one", b"PLAIN\t" + SESSION), b"", "closed"),
    Case("auth_id_over_32_bits", auth(b"4294967296", b"PLAIN\t" + SESSION), b"", "closed"),
    Case("cont_without_id", b"CONT\n", b"", "closed"),
    Case("unknown_command", b"REQUEST\t1\t4242\t1\tcookie\n", b"", "closed"),
    Case("handshake_again", b"VERSION\t1\t0\n", b"", "closed"),
    Case("empty_line", b"\n", b"", "closed"),
    Case("http_request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", "closed"),
    Case("overlong_line", auth(b"2", b"PLAIN\t" + b"A" * 17000), b"", "closed"),
    Case("overlong_line_never_ended", b"AUTH\t2\tPLAIN\t" + b"A" * 17000, b"", "closed"),
    Case("binary_garbage", bytes(range(256)) * 4, b"", "closed"),
]


def sasl_config(api: FakeApi, **extra: object) -> dict[str, object]:
    return endpoint_config("sasl", f"{api.url}/auth", **{"failure-delay": 0, **extra})


async def receive(client: Client, done: Callable[[bytes], bool]) -> bytes:
    """Read until ``done`` says what has arrived is complete."""
    received = b""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        while not done(received):
            chunk = await loop.sock_recv(client.sock, 65536)
            assert chunk, f"closed after {received!r}"
            received += chunk
    return received


async def handshake(client: Client) -> None:
    """Read the server's handshake (ending in DONE) and send the client's half."""
    received = await receive(client, lambda data: data.endswith(b"DONE\n"))
    assert received.startswith(b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\n")
    await client.send(HELLO)


async def expect_lines(client: Client, expected: bytes) -> None:
    """These lines, in any order (answers released together may come in either)."""
    received = await receive(client, lambda data: len(data) >= len(expected))
    assert sorted(received.splitlines()) == sorted(expected.splitlines())


async def assert_served(address: tuple[str, int], api: FakeApi) -> None:
    """A fresh connection logs in (the API answers at once by now)."""
    async with connected(address) as client:
        await handshake(client)
        await client.send(plain(b"9"))
        await client.expect(ok(b"9"))


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda case: case.name)
async def test_catalogue(api: FakeApi, case: Case) -> None:
    stalled = api.stall({"user": "held@example.org"})
    async with running_connector(sasl_config(api)) as daemon, AsyncExitStack() as stack:
        address = endpoint_address(daemon)
        client = await stack.enter_async_context(connected(address))
        await handshake(client)
        await client.send(plain(b"1"))
        await asyncio.wait_for(stalled.received.wait(), 10)
        await client.send(case.payload)
        if case.then == "open":
            await client.expect(case.reply)
            stalled.release.set()
            await expect_lines(client, case.after)
            await client.send(plain(b"3"))
            await client.expect(ok(b"3"))
        else:
            await asyncio.sleep(0.05)  # nothing may come before id 1's answer
            stalled.release.set()
            assert await client.read_to_end() == (case.after, "reset")
        await assert_served(address, api)
    expected_calls = 1 + case.api_calls + (1 if case.then == "open" else 0) + 1
    assert len(api.seen) == expected_calls


@pytest.mark.parametrize(
    "payload",
    [plain(b"1"), b"CONT\t1\tAA==\n", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\n"],
    ids=["auth", "cont", "tls_client_hello"],
)
async def test_anything_before_the_clients_handshake_resets(api: FakeApi, payload: bytes) -> None:
    api.answer_json({})
    async with (
        running_connector(sasl_config(api)) as daemon,
        connected(endpoint_address(daemon)) as client,
    ):
        await client.send(payload)
        received, end = await client.read_to_end()
        assert received.endswith(b"DONE\n")  # the server's handshake, and nothing else
        assert end == "reset"
    assert api.seen == []


async def test_a_client_that_never_sends_its_handshake_is_cut_off(api: FakeApi) -> None:
    async with (
        running_connector(sasl_config(api, **{"read-timeout": 200})) as daemon,
        connected(endpoint_address(daemon)) as client,
    ):
        received, end = await client.read_to_end()
    assert received.endswith(b"DONE\n")
    assert end == "reset"


async def test_a_line_left_unfinished_is_cut_off_after_read_timeout(api: FakeApi) -> None:
    async with (
        running_connector(sasl_config(api, **{"read-timeout": 200})) as daemon,
        connected(endpoint_address(daemon)) as client,
    ):
        await handshake(client)
        await client.send(plain(b"1")[:20])
        assert await client.read_to_end() == (b"", "reset")
    assert api.seen == []


async def test_abandoned_exchanges_past_the_limit_are_failed_and_the_rest_served(
    api: FakeApi,
) -> None:
    """A client that starts 20 LOGIN exchanges and continues none: the 16 newest wait."""
    api.answer_json({"user": "held@example.org"})
    async with (
        running_connector(sasl_config(api)) as daemon,
        connected(endpoint_address(daemon)) as client,
    ):
        await handshake(client)
        await client.send(b"".join(auth(b"%d" % n, b"LOGIN\t" + SESSION) for n in range(1, 21)))
        # the eviction comes before the challenge of the exchange that caused it
        expected = b"".join(
            (fail(b"%d" % (n - 16), b"Too many authentications in progress") if n > 16 else b"")
            + b"CONT\t%d\tVXNlcm5hbWU6\n" % n
            for n in range(1, 21)
        )
        await client.expect(expected)
        await client.send(b"CONT\t20\t" + b64(b"u") + b"\nCONT\t20\t" + b64(b"p") + b"\n")
        await client.expect(b"CONT\t20\tUGFzc3dvcmQ6\n" + ok(b"20"))


async def test_many_logins_at_once_on_one_connection_are_all_answered(api: FakeApi) -> None:
    """More than are asked at a time (32): the rest wait their turn, none is lost."""
    api.answer_json({"user": "held@example.org"})
    count = 100
    async with (
        running_connector(sasl_config(api)) as daemon,
        connected(endpoint_address(daemon)) as client,
    ):
        await handshake(client)
        await client.send(b"".join(plain(b"%d" % n) for n in range(1, count + 1)))
        await expect_lines(client, b"".join(ok(b"%d" % n) for n in range(1, count + 1)))
    assert len(api.seen) == count
