"""A socketmap endpoint with ``maps`` over a real connection: an unknown map is refused before
the circuit breaker and the retries, which learn only from the API's answers."""

from __future__ import annotations

import asyncio
from contextlib import suppress

from aiohttp import web

from conftest import FakeApi, endpoint_address, endpoint_config, netstring, running_connector


async def ask_all(address: tuple[str, int], requests: list[str]) -> list[bytes]:
    """The requests on one connection, in order; their replies."""
    reader, writer = await asyncio.open_connection(*address)
    replies: list[bytes] = []
    try:
        for request in requests:
            payload = request.encode()
            writer.write(b"%d:%s," % (len(payload), payload))
            length = await asyncio.wait_for(reader.readuntil(b":"), 10)
            replies.append(
                length + await asyncio.wait_for(reader.readexactly(int(length[:-1]) + 1), 10)
            )
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()
    return replies


async def test_an_unknown_map_is_answered_past_an_open_breaker(api: FakeApi) -> None:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.json_response(["down"], status=503)

    api.handler = handler
    config = endpoint_config(
        "socketmap-lookup",
        "",
        maps={"aliases": f"{api.url}/aliases"},
        retries=0,
        **{"breaker-failures": 1, "breaker-cooldown": 60_000},
    )
    del config["target"]
    async with running_connector(config) as daemon:
        replies = await ask_all(
            endpoint_address(daemon), ["aliases a", "typo a", "aliases b", "typo.map b"]
        )
    assert replies == [
        netstring("TEMP API answered HTTP 503"),
        netstring("PERM unknown map typo"),
        netstring("TEMP API circuit breaker open"),
        netstring("PERM unknown map typo.map"),
    ]
    assert [seen.path for seen in api.seen] == ["/aliases"]


async def test_a_dot_segment_key_is_refused_without_asking(api: FakeApi) -> None:
    api.answer_json(["v"])
    config = endpoint_config("socketmap-lookup", f"{api.url}/u/{{key}}")
    async with running_connector(config) as daemon:
        replies = await ask_all(endpoint_address(daemon), ["m ..", "m .", "m ...", "m a.b"])
    refused = netstring("PERM key '.' or '..' cannot be a path segment")
    assert replies == [refused, refused, netstring("OK v"), netstring("OK v")]
    assert [seen.path for seen in api.seen] == ["/u/...", "/u/a.b"]
