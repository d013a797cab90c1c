"""Every row of the REST contract, through a real connector and a real HTTP API, in every mode.

No API failure may ever reach Postfix as "not found", DUNNO or OK.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from conftest import FakeApi, endpoint_address, endpoint_config, netstring, running_connector
from postfix_rest_api_connector import __version__
from postfix_rest_api_connector.backend.contract import (
    cache_max_age,
    decoded_outcome,
    lookup_outcome,
)
from postfix_rest_api_connector.config import DEFAULT_FAILURE_ACTION

FAILURE = f"action={DEFAULT_FAILURE_ACTION}\n\n".encode()
HOSTILE_HELO = "evil.example&recipient=victim@example.com&x=%41+b"


async def ask(mode: str, address: tuple[str, int], key: str) -> bytes:
    """One request the way Postfix sends it; returns the whole reply."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        if mode == "tcp-lookup":
            writer.write(b"get " + key.encode() + b"\n")
            return await asyncio.wait_for(reader.readline(), 10)
        if mode == "socketmap-lookup":
            payload = b"aliases " + key.encode()
            writer.write(b"%d:%s," % (len(payload), payload))
            length = await asyncio.wait_for(reader.readuntil(b":"), 10)
            rest = await asyncio.wait_for(reader.readexactly(int(length[:-1]) + 1), 10)
            return length + rest
        writer.write(
            f"request=smtpd_access_policy\nhelo_name={HOSTILE_HELO}\nrecipient={key}\n\n".encode()
        )
        return await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


@dataclass(frozen=True)
class Row:
    """One behaviour of the API and what each mode must answer to it."""

    name: str
    arrange: Callable[[FakeApi], None]
    tcp: bytes
    socketmap: bytes
    policy: bytes

    def expected(self, mode: str) -> bytes:
        return {"tcp-lookup": self.tcp, "socketmap-lookup": self.socketmap}.get(mode, self.policy)


def _hang(api: FakeApi) -> None:
    async def handler(_: web.Request) -> web.StreamResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    api.handler = handler


def _json_with_type(value: str, content_type: str) -> Callable[[FakeApi], None]:
    return lambda api: api.answer_text(value, content_type=content_type)


ROWS = [
    Row(
        "found",
        lambda api: api.answer_json(["alice@example.com"]),
        b"200 alice@example.com\n",
        netstring("OK alice@example.com"),
        b"action=alice@example.com\n\n",
    ),
    Row(
        "multi-value",
        lambda api: api.answer_json(["a@x", "b c@y"]),
        b"200 a@x,b%20c@y\n",
        netstring("OK a@x,b c@y"),
        FAILURE,
    ),
    Row(
        "empty array",
        lambda api: api.answer_json([]),
        b"500 not%20found\n",
        netstring("NOTFOUND "),
        FAILURE,
    ),
    Row(
        "404",
        lambda api: api.answer_json([], status=404),
        b"500 not%20found\n",
        netstring("NOTFOUND "),
        FAILURE,
    ),
    Row(
        "403",
        lambda api: api.answer_json(["x"], status=403),
        b"400 API%20answered%20HTTP%20403\n",
        netstring("PERM API answered HTTP 403"),
        FAILURE,
    ),
    Row(
        "500",
        lambda api: api.answer_json(["x"], status=500),
        b"400 API%20answered%20HTTP%20500\n",
        netstring("TEMP API answered HTTP 500"),
        FAILURE,
    ),
    Row(
        "503 with an OK-looking body",
        lambda api: api.answer_text("action=OK", status=503),
        b"400 API%20answered%20HTTP%20503\n",
        netstring("TEMP API answered HTTP 503"),
        FAILURE,
    ),
    Row(
        "redirect",
        lambda api: api.answer_text("", status=302),
        b"400 API%20answered%20HTTP%20302\n",
        netstring("TEMP API answered HTTP 302"),
        FAILURE,
    ),
    Row(
        "timeout",
        _hang,
        b"400 API%20did%20not%20answer%20in%20time\n",
        netstring("TIMEOUT API did not answer in time"),
        FAILURE,
    ),
    Row(
        "invalid JSON",
        _json_with_type("[not json", "application/json"),
        b"400 API%20answered%20with%20invalid%20JSON\n",
        netstring("TEMP API answered with invalid JSON"),
        FAILURE,
    ),
    Row(
        "JSON of the wrong shape",
        lambda api: api.answer_json({"value": "x"}),
        b"400 API%20answered%20with%20JSON%20that%20is%20not%20an%20array%20of%20strings\n",
        netstring("TEMP API answered with JSON that is not an array of strings"),
        FAILURE,
    ),
    Row(
        "array of numbers",
        lambda api: api.answer_json([1, 2]),
        b"400 API%20answered%20with%20JSON%20that%20is%20not%20an%20array%20of%20strings\n",
        netstring("TEMP API answered with JSON that is not an array of strings"),
        FAILURE,
    ),
    Row(
        "HTML error page with 200",
        _json_with_type("<html>maintenance</html>", "text/html"),
        b"400 API%20answered%20with%20content%20type%20"
        b"'text/html;%20charset=utf-8',%20not%20JSON\n",
        netstring("TEMP API answered with content type 'text/html; charset=utf-8', not JSON"),
        FAILURE,
    ),
    Row(
        "value with a NUL",
        lambda api: api.answer_json(["a\x00b"]),
        b"400 API%20answered%20with%20a%20NUL%20character,%20which%20Postfix%20would%20cut%20at\n",
        netstring("TEMP API answered with a NUL character, which Postfix would cut at"),
        FAILURE,
    ),
    Row(
        "404 HTML page from a proxy",
        lambda api: api.answer_text("<html>404</html>", status=404, content_type="text/html"),
        b"400 API%20answered%20404%20with%20an%20HTML%20page\n",
        netstring("TEMP API answered 404 with an HTML page"),
        FAILURE,
    ),
    Row(
        "array of one empty string",
        lambda api: api.answer_json([""]),
        b"400 API%20answered%20with%20an%20empty%20value\n",
        netstring("TEMP API answered with an empty value"),
        FAILURE,
    ),
    Row(
        "answer too long for the protocol",
        lambda api: api.answer_json(["x" * 60_000, "y" * 60_000]),
        b"400 answer%20too%20long%20for%20tcp_table\n",
        netstring("TEMP answer too long for socketmap"),
        FAILURE,
    ),
    Row(
        "body over max-response-bytes",
        lambda api: api.answer_json(["z" * 300_000]),
        b"400 API%20answer%20exceeds%20max-response-bytes\n",
        netstring("TEMP API answer exceeds max-response-bytes"),
        FAILURE,
    ),
]

# Policy replies are text, not JSON: rows that differ for policy are spelled out here.
POLICY_ROWS = [
    ("action=REJECT spam", b"action=REJECT spam\n\n"),
    ("REJECT spam", b"action=REJECT spam\n\n"),
    ("action=DUNNO\n\n", b"action=DUNNO\n\n"),
    ("DEFER_IF_PERMIT try later\r\n", b"action=DEFER_IF_PERMIT try later\n\n"),
    ("550 5.7.1 no thanks", b"action=550 5.7.1 no thanks\n\n"),
    ("", FAILURE),
    ("action=", FAILURE),
    ("action=REJECT a\naction=OK", FAILURE),
    ("OK\nDUNNO", FAILURE),
    ('["DUNNO"]', FAILURE),
    ("0", FAILURE),  # all digits: Postfix would permit
    ("503", FAILURE),
    ("451", FAILURE),  # a code without text is all digits too
    ("450 4.7.1 try later", b"action=450 4.7.1 try later\n\n"),
    ("<html>DUNNO</html>", FAILURE),
]

LOOKUP_MODES = ["tcp-lookup", "socketmap-lookup"]


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
@pytest.mark.parametrize("mode", [*LOOKUP_MODES, "policy"])
async def test_outcome_row(api: FakeApi, mode: str, row: Row) -> None:
    if mode == "policy" and row.name == "found":
        api.answer_text("action=REJECT go away")
        expected = b"action=REJECT go away\n\n"
    else:
        row.arrange(api)
        expected = row.expected(mode)
    config = endpoint_config(mode, f"{api.url}/api", **{"request-timeout": 300})
    config["max-response-bytes"] = 200_000
    async with running_connector(config) as daemon:
        started = time.monotonic()
        reply = await ask(mode, endpoint_address(daemon), "alice@example.com")
        elapsed = time.monotonic() - started
    assert reply == expected
    assert elapsed < 0.3 + 0.5, "a failure must come back within request-timeout plus a margin"


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_multi_value_is_joined_by_the_list_separator(api: FakeApi, mode: str) -> None:
    api.answer_json(["a@x", "b c@y"])
    async with running_connector(endpoint_config(mode, api.url)) as daemon:
        assert await ask(mode, endpoint_address(daemon), "k") == ROWS[1].expected(mode)
    api.seen.clear()
    config = endpoint_config(mode, api.url, **{"list-separator": " "})
    async with running_connector(config) as daemon:
        reply = await ask(mode, endpoint_address(daemon), "k")
    assert reply == {"tcp-lookup": b"200 a@x%20b%20c@y\n"}.get(mode, netstring("OK a@x b c@y"))


@pytest.mark.parametrize(("body", "expected"), POLICY_ROWS, ids=repr)
async def test_policy_reply_formats(api: FakeApi, body: str, expected: bytes) -> None:
    api.answer_text(body)
    async with running_connector(endpoint_config("policy", api.url)) as daemon:
        assert await ask("policy", endpoint_address(daemon), "r@example.com") == expected


async def test_policy_failure_action_is_configurable(api: FakeApi) -> None:
    api.answer_text("", status=500)
    config = endpoint_config("policy", api.url, **{"failure-action": "451 4.3.0 API down"})
    async with running_connector(config) as daemon:
        reply = await ask("policy", endpoint_address(daemon), "r@example.com")
    assert reply == b"action=451 4.3.0 API down\n\n"


@pytest.mark.parametrize("mode", [*LOOKUP_MODES, "policy"])
async def test_connection_refused_is_a_temporary_error(mode: str) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        closed_port = placeholder.getsockname()[1]
    async with running_connector(
        endpoint_config(mode, f"http://127.0.0.1:{closed_port}/")
    ) as daemon:
        reply = await ask(mode, endpoint_address(daemon), "k")
    assert reply == {
        "tcp-lookup": b"400 API%20request%20failed:%20ConnectError\n",
        "socketmap-lookup": netstring("TEMP API request failed: ConnectError"),
    }.get(mode, FAILURE)


async def test_lookup_request_carries_key_headers_and_fresh_request_ids(api: FakeApi) -> None:
    api.answer_json(["v"])
    target = f"{api.url}/api/lookup?tenant=a%20b"
    async with running_connector(
        endpoint_config("tcp-lookup", target), endpoint_config("socketmap-lookup", api.url)
    ) as daemon:
        await ask("tcp-lookup", endpoint_address(daemon, 0), "a+b%20c@x%C3%A4")
        await ask("tcp-lookup", endpoint_address(daemon, 0), "second")
        await ask("socketmap-lookup", endpoint_address(daemon, 1), "a+b c,d:e@x")
    tcp, second, sockmap = api.seen
    assert tcp.method == "GET"
    assert tcp.path == "/api/lookup"
    assert tcp.raw_query == "tenant=a%20b&key=a%2Bb%20c%40x%C3%A4"
    assert tcp.query == {"tenant": "a b", "key": "a+b c@xä"}
    assert tcp.headers["X-Auth-Token"] == "s3cret-token"
    assert tcp.headers["User-Agent"] == f"postfix-rest-api-connector/{__version__}"
    assert tcp.headers["X-Request-Id"] != second.headers["X-Request-Id"]
    assert sockmap.raw_query == "name=aliases&key=a%2Bb%20c%2Cd%3Ae%40x"
    assert sockmap.query == {"name": "aliases", "key": "a+b c,d:e@x"}


async def test_no_auth_header_without_token_and_custom_user_agent(api: FakeApi) -> None:
    api.answer_json(["v"])
    config = endpoint_config("tcp-lookup", api.url)
    del config["auth-token"]
    async with running_connector(config, **{"user-agent": "Mail Relay 1"}) as daemon:
        await ask("tcp-lookup", endpoint_address(daemon), "k")
    assert "X-Auth-Token" not in api.seen[0].headers
    assert api.seen[0].headers["User-Agent"] == "Mail Relay 1"


async def test_policy_post_is_form_encoded_in_order_without_injection(api: FakeApi) -> None:
    api.answer_text("DUNNO")
    async with running_connector(endpoint_config("policy", api.url)) as daemon:
        reply = await ask("policy", endpoint_address(daemon), "bob+tag@example.com")
    assert reply == b"action=DUNNO\n\n"
    seen = api.seen[0]
    assert seen.method == "POST"
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen.headers["X-Auth-Token"] == "s3cret-token"
    fields = parse_qsl(seen.body.decode(), keep_blank_values=True, strict_parsing=True)
    assert fields == [
        ("request", "smtpd_access_policy"),
        ("helo_name", HOSTILE_HELO),
        ("recipient", "bob+tag@example.com"),
    ]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("max-age=30", 30.0),
        ("public, max-age=5", 5.0),
        ("no-store", 0.0),
        ("no-cache, max-age=60", 0.0),
        ("max-age=abc", 0.0),
        ("max-age=" + "9" * 400, 1e9),
    ],
    ids=repr,
)
def test_cache_control_is_read_safely(header: str | None, expected: float | None) -> None:
    assert cache_max_age(header) == expected


_PIECES = b'[ ] " , \t \n \r \x0c \\ \\u0000 \\ud800 a % \xc3\xa9 \xed\xa0\x80 \xff \x00 \x1f \x7f'
JSON_PIECES = st.sampled_from([*_PIECES.split(b" "), b" ", b"\xef\xbb\xbf"])
JSON_BODIES = st.lists(JSON_PIECES, max_size=14).map(b"".join) | st.lists(
    st.text(), max_size=3
).map(lambda values: json.dumps(values, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@given(JSON_BODIES)
def test_the_plain_string_shortcut_agrees_with_the_json_decoder(body: bytes) -> None:
    """``["value"]`` is read without json.loads; for any body the outcome must be the same."""
    assert lookup_outcome(200, body, "application/json", ",") == decoded_outcome(body, ",")
