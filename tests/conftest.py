"""Shared test parts: a real HTTP server acting as the REST API, and a real running connector.

Everything listens on 127.0.0.1 port 0; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web
from hypothesis import HealthCheck, settings
from multidict import CIMultiDict

from postfix_rest_api_connector.config import parse_config
from postfix_rest_api_connector.runtime.daemon import Daemon

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


@dataclass(frozen=True)
class Stalled:
    """``FakeApi.stall``: ``received`` is set by a request, ``release`` lets every one go."""

    received: asyncio.Event
    release: asyncio.Event


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

    def stall(self, value: Any) -> Stalled:
        """Every request waits until the test releases it, then gets ``value`` as JSON."""
        stalled = Stalled(asyncio.Event(), asyncio.Event())

        async def handler(_: web.Request) -> web.StreamResponse:
            stalled.received.set()
            await stalled.release.wait()
            return web.json_response(value)

        self.handler = handler
        return stalled

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


async def send_and_read(
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


# The daemon as a child process. Endpoints listen on port 0; a test learns each real port from the
# process's own log line ``endpoint NAME (MODE) listening on 127.0.0.1:PORT, asking ...``.

DEADLINE = 10.0
"""Bounds every wait on a child process; each step takes well under a second."""
MODULE = [sys.executable, "-m", "postfix_rest_api_connector"]
LISTENING = re.compile(
    r"endpoint (?P<name>\S+) \((?P<mode>[a-z-]+)\) listening on 127\.0\.0\.1:(?P<port>\d+), asking "
)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The test's environment without the variables the daemon reads, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in {"LOG_LEVEL", "JOURNAL_STREAM"}}
    return {**env, **extra}


class Connector:
    """The daemon as a child process; stderr is read line by line as far as the test needs."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    async def _next_line(self) -> str:
        assert self.process.stderr is not None
        raw = await self.process.stderr.readline()
        if not raw:
            pytest.fail(f"stderr closed before the expected line; stderr so far:\n{self.stderr}")
        line = raw.decode("utf-8", "replace").rstrip("\n")
        self.lines.append(line)
        return line

    async def _search(self, pattern: re.Pattern[str]) -> re.Match[str]:
        while not (match := pattern.search(await self._next_line())):
            pass
        return match

    async def expect(self, pattern: re.Pattern[str]) -> re.Match[str]:
        """The next stderr line matching ``pattern``."""
        try:
            return await asyncio.wait_for(self._search(pattern), DEADLINE)
        except TimeoutError:
            pytest.fail(f"no line matching {pattern.pattern!r}; stderr so far:\n{self.stderr}")

    async def port(self) -> int:
        return int((await self.expect(LISTENING))["port"])

    async def finish(self) -> int:
        """Wait for the exit, collecting the rest of stderr; returns the exit status."""
        assert self.process.stderr is not None
        try:
            rest = await asyncio.wait_for(self.process.stderr.read(), DEADLINE)
            status = await asyncio.wait_for(self.process.wait(), DEADLINE)
        except TimeoutError:
            pytest.fail(f"the daemon did not exit within {DEADLINE} s; stderr:\n{self.stderr}")
        self.lines.extend(rest.decode("utf-8", "replace").splitlines())
        return status


Spawn = Callable[..., Awaitable[Connector]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start the daemon (``python -m``) in its own process group; whatever is still running at
    teardown is killed, worker processes included, and its output pipes are drained."""
    started: list[asyncio.subprocess.Process] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> Connector:
        process = await asyncio.create_subprocess_exec(
            *MODULE,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(env or {}),
            start_new_session=True,
        )
        started.append(process)
        return Connector(process)

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.communicate()


async def run_to_end(*command: str) -> tuple[int, str, str]:
    """Run a command that must exit by itself: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env({}),
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{command} did not exit within {DEADLINE} s")
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def write_config(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


async def tcp_get(port: int, key: str) -> bytes:
    """One tcp_table request on a new loopback connection: the reply line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"get {key}\n".encode())
        return await asyncio.wait_for(reader.readline(), DEADLINE)
    finally:
        writer.close()


@asynccontextmanager
async def request_held(
    port: int, stalled: Stalled
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A lookup sent to the connector on ``port``, held by the stalled API until the block ends
    (then released, and the connection closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"get k\n")
        await asyncio.wait_for(stalled.received.wait(), DEADLINE)
        yield reader, writer
    finally:
        stalled.release.set()
        writer.close()
