"""Shared test parts: a real HTTP server acting as the REST API, and a real running connector.

Everything listens on 127.0.0.1 port 0; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop
from aiohttp import web
from hypothesis import HealthCheck, settings
from multidict import CIMultiDict

from postfix_rest_api_connector.config import parse_config
from postfix_rest_api_connector.server import Daemon

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

settings.register_profile("ci", max_examples=300, deadline=None)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
"""Bounded in the normal run; ``scripts/fuzz.sh`` selects the long ``fuzz`` profile."""


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run every async test on uvloop, as production does."""
    return {"uvloop": uvloop.new_event_loop}


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    raw_query: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class FakeApi:
    """An aiohttp.web server whose answer the test sets; it records every request it gets."""

    url: str = ""
    handler: Handler | None = None
    seen: list[SeenRequest] = field(default_factory=list)

    def answer_json(self, value: Any, status: int = 200) -> None:
        async def handler(_: web.Request) -> web.StreamResponse:
            return web.json_response(value, status=status)

        self.handler = handler

    def answer_text(self, text: str, status: int = 200, content_type: str = "text/plain") -> None:
        async def handler(_: web.Request) -> web.StreamResponse:
            return web.Response(text=text, status=status, content_type=content_type)

        self.handler = handler

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            SeenRequest(
                method=request.method,
                path=request.path,
                raw_query=request.raw_path.partition("?")[2],
                query=dict(request.query),
                headers=CIMultiDict(request.headers),
                body=body,
            )
        )
        if self.handler is None:
            return web.json_response([], status=404)
        return await self.handler(request)


@pytest.fixture
async def api() -> AsyncIterator[FakeApi]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake._dispatch)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    yield fake
    await runner.cleanup()


def endpoint_config(mode: str, target: str, **extra: Any) -> dict[str, Any]:
    """One endpoint in the predecessors' format, on a free loopback port."""
    return {
        "name": f"test-{mode}",
        "mode": mode,
        "target": target,
        "bind-address": "127.0.0.1",
        "bind-port": 0,
        "auth-token": "s3cret-token",
        "request-timeout": 1000,
        **extra,
    }


@asynccontextmanager
async def running_connector(*endpoints: dict[str, Any], **top: Any) -> AsyncIterator[Daemon]:
    """Start the real daemon in this event loop; ``endpoint_address`` finds its ports."""
    daemon = Daemon(parse_config({"endpoints": list(endpoints), **top}))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def endpoint_address(daemon: Daemon, index: int = 0) -> tuple[str, int]:
    host, port = daemon.endpoints[index].addresses[0]
    return host, port


async def exchange(
    address: tuple[str, int], payload: bytes, expect_bytes: int | None = None
) -> bytes:
    """Send ``payload`` on a fresh connection and read until EOF or ``expect_bytes`` arrived."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(payload)
        await writer.drain()
        if expect_bytes is None:
            return await asyncio.wait_for(reader.read(), 10)
        return await asyncio.wait_for(reader.readexactly(expect_bytes), 10)
    finally:
        writer.close()


def netstring(text: str) -> bytes:
    """A socketmap reply as the connector must send it."""
    payload = text.encode()
    return b"%d:%s," % (len(payload), payload)
