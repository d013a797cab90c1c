"""Policy as JSON (``policy-format``) and ``{"action": ...}`` answers, through a real connection
to the running connector and a real aiohttp API: the action passes the same checks as a text one,
and a bad one gets the failure action, never DUNNO."""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress
from typing import Any

import pytest
from aiohttp import web

from conftest import FakeApi, endpoint_address, endpoint_config, running_connector
from postfix_rest_api_connector.config import DEFAULT_FAILURE_ACTION

FAILURE = f"action={DEFAULT_FAILURE_ACTION}\n\n".encode()
ATTRIBUTES = [
    (b"request", b"smtpd_access_policy"),
    (b"protocol_state", b"RCPT"),
    (b"helo_name", b'evil", "recipient": "victim@example.com&x=%41+b'),
    (b"sender", b"m\xc3\xbcller\xff@example.com"),
    (b"recipient", b"alice@example.com"),
]


async def ask_policy(address: tuple[str, int]) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"".join(name + b"=" + value + b"\n" for name, value in ATTRIBUTES) + b"\n")
        return await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


async def policy_reply(api: FakeApi, **extra: Any) -> bytes:
    config = endpoint_config("policy", f"{api.url}/policy", **extra)
    async with running_connector(config) as daemon:
        return await ask_policy(endpoint_address(daemon))


async def test_json_body_in_postfix_order_and_a_json_action(api: FakeApi) -> None:
    api.answer_json({"action": "REJECT x"})
    assert await policy_reply(api, **{"policy-format": "json"}) == b"action=REJECT x\n\n"
    seen = api.seen[0]
    assert (seen.method, seen.path) == ("POST", "/policy")
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.body.isascii()
    body = json.loads(seen.body)
    assert list(body) == [name.decode() for name, _ in ATTRIBUTES]
    assert body["helo_name"] == 'evil", "recipient": "victim@example.com&x=%41+b'
    assert body["sender"] == "müller\ufffd@example.com"
    assert body["recipient"] == "alice@example.com"


async def test_the_form_body_stays_the_default_and_takes_a_json_action(api: FakeApi) -> None:
    api.answer_json({"action": "DEFER_IF_PERMIT try later"})
    assert await policy_reply(api) == b"action=DEFER_IF_PERMIT try later\n\n"
    seen = api.seen[0]
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen.body.startswith(b"request=smtpd_access_policy&protocol_state=RCPT&helo_name=evil")


@pytest.mark.parametrize(
    "answer",
    [
        {"action": "DUNNO\nwarn=1"},
        {"action": "42"},
        {"action": ""},
        {"action": "OK \u0007"},
        {"action": 1},
        {"verdict": "DUNNO"},
        ["DUNNO"],
    ],
    ids=["newline", "bare-number", "empty", "control", "number", "no-action", "array"],
)
async def test_a_bad_json_action_gets_the_failure_action(api: FakeApi, answer: Any) -> None:
    api.answer_json(answer)
    assert await policy_reply(api, **{"policy-format": "json"}) == FAILURE


async def test_truncated_json_gets_the_failure_action(api: FakeApi) -> None:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"action": "DUNNO"', content_type="application/json")

    api.handler = handler
    assert await policy_reply(api, **{"policy-format": "json"}) == FAILURE
