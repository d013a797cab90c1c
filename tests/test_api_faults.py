"""The REST API misbehaving at the HTTP and TCP level, in every mode.

Every fault must reach Postfix as the protocol's temporary error (tcp_table ``400``, socketmap
``TEMP`` or ``TIMEOUT``, the policy failure action) within ``request-timeout`` plus a margin, never
as not found, found, DUNNO or OK; and answering faults must not leak descriptors, tasks or memory.
Faults aiohttp can make are aiohttp handlers under ``api.url/NAME``; the rest are raw TCP servers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, cast
from urllib.parse import unquote

import pytest
from aiohttp import web

from conftest import FakeApi, endpoint_address, endpoint_config, running_connector
from postfix_rest_api_connector.backend.contract import policy_outcome
from postfix_rest_api_connector.config import DEFAULT_FAILURE_ACTION
from postfix_rest_api_connector.core.model import Found
from postfix_rest_api_connector.runtime.daemon import Daemon

REQUEST_TIMEOUT_MS = 500
MARGIN = 0.7
"""Seconds past ``request-timeout`` allowed for the connector's own work and the loopback."""
MAX_RESPONSE_BYTES = 65536
HUGE = 50 * 1024 * 1024
FAILURE = f"action={DEFAULT_FAILURE_ACTION}\n\n".encode()
TIMEOUT_REASON = "API did not answer in time"
ALL_MODES = ("tcp-lookup", "socketmap-lookup", "policy")
LOOKUP_MODES = ("tcp-lookup", "socketmap-lookup")

AioHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Raw TCP faults: what aiohttp.web cannot be made to do.


class RawConnections:
    """The open connections of the raw fault servers, so a test can await them all closed."""

    def __init__(self) -> None:
        self.open: set[RawFault] = set()
        self.all_closed = asyncio.Event()
        self.all_closed.set()

    def add(self, connection: RawFault) -> None:
        self.open.add(connection)
        self.all_closed.clear()

    def remove(self, connection: RawFault) -> None:
        self.open.discard(connection)
        if not self.open:
            self.all_closed.set()


class RawFault(asyncio.Protocol):
    """Accepts a connection; ``on_request`` runs once the request head has arrived."""

    def __init__(self, connections: RawConnections) -> None:
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._answered = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.connections.add(self)
        self.on_accept()

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return
        self._head += data
        if b"\r\n\r\n" in self._head:
            self._answered = True
            self.on_request()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.connections.remove(self)

    def on_accept(self) -> None:
        """Nothing by default."""

    def on_request(self) -> None:
        """Nothing by default: the headers never come."""

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class NeverAnswers(RawFault):
    pass


class ClosesOnAccept(RawFault):
    def on_accept(self) -> None:
        assert self.transport is not None
        self.transport.close()


class GarbageStatusLine(RawFault):
    def on_request(self) -> None:
        self.write(b"HELLO\r\n\r\n")


class ResetsMidBody(RawFault):
    """A valid head promising 100 bytes, 10 of them, then a TCP reset (SO_LINGER 0, close)."""

    def on_request(self) -> None:
        self.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        self.write(b'["aaaaaaaa')
        # A moment for the client to take the head and the 10 bytes before the reset.
        self.timer = asyncio.get_running_loop().call_later(0.05, self._reset)

    def _reset(self) -> None:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


# aiohttp faults.


@dataclass
class BodyMeter:
    """Bytes an endless or huge body handler managed to hand to its transport."""

    sent: int = 0


async def _write_until_gone(
    request: web.Request,
    response: web.StreamResponse,
    chunk: bytes,
    pause: float,
    *,
    meter: BodyMeter | None = None,
    total: int | None = None,
) -> web.StreamResponse:
    """Write ``chunk`` every ``pause`` seconds until ``total`` bytes or the client goes away."""
    await response.prepare(request)
    written = 0
    with suppress(ConnectionError):
        while total is None or written < total:
            await response.write(chunk)
            written += len(chunk)
            if meter is not None:
                meter.sent = written
            await asyncio.sleep(pause)
        await response.write_eof()
    return response


def endless_chunked(meter: BodyMeter) -> AioHandler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        return await _write_until_gone(request, response, b'"x",' * 25, 0.01, meter=meter)

    return handler


def huge_body(meter: BodyMeter, *, chunked: bool) -> AioHandler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = HUGE
        return await _write_until_gone(request, response, b" " * 65536, 0, meter=meter, total=HUGE)

    return handler


async def trickling_body(request: web.Request) -> web.StreamResponse:
    """A valid answer, one byte per 100 ms: complete only after 10 s."""
    body = b'["' + b"a" * 96 + b'"]'
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    with suppress(ConnectionError):
        for index in range(len(body)):
            await response.write(body[index : index + 1])
            await asyncio.sleep(0.1)
        await response.write_eof()
    return response


def fixed(body: bytes, content_type: str) -> AioHandler:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=content_type)

    return handler


async def redirect_to_itself(request: web.Request) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": str(request.url)})


# The fault table.


@dataclass(frozen=True)
class Fault:
    name: str
    socketmap_word: Literal["TEMP", "TIMEOUT"]
    handler: AioHandler | None = None
    raw: Callable[[RawConnections], RawFault] | None = None
    modes: tuple[str, ...] = ALL_MODES
    extra: dict[str, Any] = field(default_factory=dict)
    meter: BodyMeter | None = None


def _faults() -> list[Fault]:
    meters = [BodyMeter() for _ in range(3)]
    return [
        Fault("connection refused", "TEMP"),
        Fault("reset mid-body", "TEMP", raw=ResetsMidBody),
        Fault("endless chunked body", "TIMEOUT", endless_chunked(meters[0]), meter=meters[0]),
        Fault(
            "huge body with Content-Length",
            "TEMP",
            huge_body(meters[1], chunked=False),
            meter=meters[1],
        ),
        Fault("huge chunked body", "TEMP", huge_body(meters[2], chunked=True), meter=meters[2]),
        Fault("trickling body", "TIMEOUT", trickling_body),
        Fault(
            "JSON-looking body as text/html",
            "TEMP",
            fixed(b'["alice@example.com"]', "text/html"),
            modes=LOOKUP_MODES,
        ),
        Fault("invalid UTF-8 in JSON", "TEMP", fixed(b'["\xff\xfe"]', "application/json")),
        Fault(
            "deeply nested JSON",
            "TEMP",
            fixed(b"[" * 100_000 + b"]" * 100_000, "application/json"),
            # The parser, not the size limit, must be what rejects it.
            extra={"max-response-bytes": 262144},
        ),
        Fault("headers never come", "TIMEOUT", raw=NeverAnswers),
        Fault("closed right after accept", "TEMP", raw=ClosesOnAccept),
        Fault("redirect loop", "TEMP", redirect_to_itself),
        Fault("garbage status line", "TEMP", raw=GarbageStatusLine),
    ]


FAULTS = _faults()
CASES = [
    pytest.param(fault, mode, id=f"{mode}-{fault.name}") for fault in FAULTS for mode in fault.modes
]


class FaultSite:
    """Every fault at once: aiohttp faults under ``api.url/NAME``, raw faults on their own ports."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self.raw_connections = RawConnections()
        self.handlers_done = asyncio.Event()
        self.handlers_done.set()
        self._handlers_running = 0
        self._targets: dict[str, str] = {}
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self, stack: AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        handlers: dict[str, AioHandler] = {}
        for fault in FAULTS:
            path = "/" + fault.name.replace(" ", "-")
            if fault.handler is not None:
                handlers[path] = fault.handler
                self._targets[fault.name] = self.api.url + path
            elif fault.raw is not None:
                server = await loop.create_server(
                    partial(fault.raw, self.raw_connections), "127.0.0.1", 0
                )
                self._servers.append(server)
                port = server.sockets[0].getsockname()[1]
                self._targets[fault.name] = f"http://127.0.0.1:{port}{path}"
            else:
                with socket.socket() as placeholder:
                    placeholder.bind(("127.0.0.1", 0))
                    port = placeholder.getsockname()[1]
                self._targets[fault.name] = f"http://127.0.0.1:{port}{path}"

        async def dispatch(request: web.Request) -> web.StreamResponse:
            self._handlers_running += 1
            self.handlers_done.clear()
            try:
                return await handlers[request.path](request)
            finally:
                self._handlers_running -= 1
                if not self._handlers_running:
                    self.handlers_done.set()

        self.api.handler = dispatch
        stack.push_async_callback(self._stop)

    async def quiet(self) -> None:
        """Every connection to a raw fault closed and every aiohttp fault handler returned.

        Both happen only once the connector's HTTP client has dropped the connection: an endless
        body's handler stops when its write fails.
        """
        await asyncio.wait_for(self.raw_connections.all_closed.wait(), 10)
        await asyncio.wait_for(self.handlers_done.wait(), 10)

    def target(self, fault: Fault) -> str:
        return self._targets[fault.name]

    async def _stop(self) -> None:
        for connection in list(self.raw_connections.open):
            if connection.transport is not None:
                connection.transport.abort()
        for server in self._servers:
            server.close()
            await server.wait_closed()


@asynccontextmanager
async def fault_site(api: FakeApi) -> AsyncIterator[FaultSite]:
    async with AsyncExitStack() as stack:
        site = FaultSite(api)
        await site.start(stack)
        yield site


def fault_endpoint(site: FaultSite, fault: Fault, mode: str) -> dict[str, Any]:
    config = endpoint_config(
        mode,
        site.target(fault),
        **{"request-timeout": REQUEST_TIMEOUT_MS, "max-response-bytes": MAX_RESPONSE_BYTES},
    )
    config.update(fault.extra)
    config["name"] = f"{mode}-{fault.name}"
    return config


# The Postfix side.


async def ask(mode: str, address: tuple[str, int], key: str) -> tuple[bytes, float]:
    """One request the way Postfix sends it: the whole reply and how long it took.

    Then the client half-closes and reads to EOF: nothing may follow the reply, and the return
    means the connector has answered everything and closed its end.
    """
    reader, writer = await asyncio.open_connection(*address)
    try:
        started = time.monotonic()
        if mode == "tcp-lookup":
            writer.write(b"get " + key.encode() + b"\n")
            reply = await asyncio.wait_for(reader.readline(), 10)
        elif mode == "socketmap-lookup":
            payload = b"aliases " + key.encode()
            writer.write(b"%d:%s," % (len(payload), payload))
            length = await asyncio.wait_for(reader.readuntil(b":"), 10)
            rest = await asyncio.wait_for(reader.readexactly(int(length[:-1]) + 1), 10)
            reply = length + rest
        else:
            writer.write(
                b"request=smtpd_access_policy\nprotocol_state=RCPT\n"
                b"recipient=" + key.encode() + b"\n\n"
            )
            reply = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
        elapsed = time.monotonic() - started
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"", "nothing may follow the reply"
        return reply, elapsed
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


def assert_temporary(fault: Fault, mode: str, reply: bytes, elapsed: float) -> None:
    """The protocol's temporary error of the fault's kind, in time."""
    if mode == "tcp-lookup":
        assert reply.startswith(b"400 "), reply
        assert reply.endswith(b"\n")
        reason = unquote(reply[4:-1].decode())
        assert (reason == TIMEOUT_REASON) == (fault.socketmap_word == "TIMEOUT"), reply
    elif mode == "socketmap-lookup":
        length, _, rest = reply.partition(b":")
        payload = rest[:-1]
        assert int(length) == len(payload), reply
        assert rest.endswith(b",")
        assert payload.startswith(fault.socketmap_word.encode() + b" "), reply
    else:
        assert reply == FAILURE
    limit = REQUEST_TIMEOUT_MS / 1000 + MARGIN
    assert elapsed < limit, f"{fault.name} in {mode}: answered after {elapsed:.3f} s"


def memory_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field_name} in /proc/self/status")


def reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS (Linux clear_refs ``5``)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


@pytest.mark.parametrize(("fault", "mode"), CASES)
async def test_fault_is_a_temporary_error_in_time(api: FakeApi, fault: Fault, mode: str) -> None:
    async with fault_site(api) as site:
        async with running_connector(fault_endpoint(site, fault, mode)) as daemon:
            if fault.meter is not None:
                fault.meter.sent = 0
            rss_before = memory_kib("VmRSS")
            reset_peak_rss()
            reply, elapsed = await ask(mode, endpoint_address(daemon), "alice@example.com")
            peak_growth = memory_kib("VmHWM") - rss_before
        assert_temporary(fault, mode, reply, elapsed)
        if fault.meter is not None:
            # The connector, the API and this test share one process: its peak RSS bounds all.
            assert peak_growth < 20 * 1024, f"peak RSS grew by {peak_growth} KiB"
            # Whatever the API wrote beyond the connector's 64 KiB sits in socket buffers.
            assert fault.meter.sent < HUGE // 2, f"the API got {fault.meter.sent} bytes out"


def test_policy_ignores_content_type_so_a_text_html_dunno_is_accepted() -> None:
    """Documents today's contract: policy answers are text, so the content type is not checked.

    A text/html ``DUNNO`` is taken as the action; only the body decides (an HTML page fails the
    action-word check).
    """
    assert policy_outcome(200, b"DUNNO") == Found("DUNNO")
    assert not isinstance(policy_outcome(200, b"<html>DUNNO</html>"), Found)


async def test_policy_text_html_dunno_passes_through_the_connector(api: FakeApi) -> None:
    api.answer_text("DUNNO", content_type="text/html")
    config = endpoint_config("policy", api.url, **{"request-timeout": REQUEST_TIMEOUT_MS})
    async with running_connector(config) as daemon:
        reply, _ = await ask("policy", endpoint_address(daemon), "alice@example.com")
    assert reply == b"action=DUNNO\n\n"
    assert api.seen[0].headers.get("Content-Type") == "application/x-www-form-urlencoded"


# Leaks.

POOLED_LATE = 2
"""Finished keep-alive connections a round may leave open above the warm-up baseline.

The connector's HTTP clients keep connections whose answer was read to the end (the text/html,
bad UTF-8, nested JSON and 302 faults) in their idle pools. The warm-up round fills the pools and
later rounds reuse them, so the counts should come back exactly; but a pooled connection that a
client replaces is closed by its pool in the background, a moment after the reply went out."""
FD_TOLERANCE = 2 * POOLED_LATE
"""Both ends of a pooled connection are in this process: the client's and the API's."""
TASK_TOLERANCE = POOLED_LATE
"""aiohttp keeps one task per open server-side connection."""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settled(condition: Callable[[], bool], deadline: float) -> bool:
    """Whether ``condition`` holds within ``deadline`` seconds, checking every loop pass or so."""
    stop = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > stop:
            return False
        await asyncio.sleep(0.01)
    return True


async def one_round(daemon: Daemon, endpoints: list[tuple[Fault, str]], site: FaultSite) -> float:
    """Every fault in every mode, one after another; the worst latency."""
    worst = 0.0
    for index, (fault, mode) in enumerate(endpoints):
        reply, elapsed = await ask(mode, endpoint_address(daemon, index), "alice@example.com")
        assert_temporary(fault, mode, reply, elapsed)
        worst = max(worst, elapsed)
    await site.quiet()
    return worst


async def test_faults_leak_no_descriptors_or_tasks(api: FakeApi) -> None:
    endpoints = [(fault, mode) for fault in FAULTS for mode in fault.modes]
    async with (
        fault_site(api) as site,
        running_connector(*(fault_endpoint(site, f, m) for f, m in endpoints)) as daemon,
    ):
        await one_round(daemon, endpoints, site)
        tasks_baseline = len(asyncio.all_tasks())
        fd_baseline = open_fds()
        for _ in range(2):
            await one_round(daemon, endpoints, site)
            assert await settled(
                lambda: len(asyncio.all_tasks()) <= tasks_baseline + TASK_TOLERANCE, 5
            ), f"{len(asyncio.all_tasks())} tasks, {tasks_baseline} after warm-up"
            assert await settled(lambda: open_fds() <= fd_baseline + FD_TOLERANCE, 5), (
                f"{open_fds()} open descriptors, {fd_baseline} after warm-up"
            )
