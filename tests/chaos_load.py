"""A chaos load driver: the real connector (2 workers) under Postfix-style load while workers are
SIGKILLed and the supervisor gets SIGHUPs; used by ``bench/chaos.py`` (and meant for
``tests/test_chaos.py``).

Each of N clients keeps one connection (tcp_table, socketmap or policy, in turn) and sends one
request at a time, recording how long its answer took. A connection that the connector closes or
resets (its worker was killed) is counted as lost with its request, and the client connects
again, as Postfix does. The report is the latency distribution of the requests answered on
live connections, the wrong answers (never expected: the API answers every key with its own
value) and the lost ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

MODES = ("tcp-lookup", "socketmap-lookup", "policy")
MODULE = [sys.executable, "-m", "postfix_rest_api_connector"]
REQUEST_DEADLINE = 30.0
"""Seconds a client waits for one answer (Postfix waits 100): past it the answer counts as lost."""
API_TIMEOUT = 1000
"""The endpoints' ``request-timeout`` (ms): the longest an answer may take because of the API."""
SLOW = API_TIMEOUT / 1000 + 1.0
"""An answer later than this waited on the connector, not the API: a stall."""


@contextlib.contextmanager
def reserved_ports(count: int) -> Iterator[list[int]]:
    """Free loopback ports held with ``SO_REUSEPORT`` (not listening) until the workers bind."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        yield ports


async def start_api() -> tuple[web.AppRunner, str]:
    """An API that answers every key with ``value-of-KEY`` (lookups) or ``REJECT KEY`` (policy)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            key = str((await request.post()).getone("recipient"))
            return web.Response(text=f"action=REJECT {key}")
        return web.json_response([f"value-of-{request.query['key']}"])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def config_document(target: str, ports: list[int], timeout: int) -> dict[str, object]:
    endpoints = [
        {
            "name": f"chaos-{mode}",
            "mode": mode,
            "target": target,
            "bind-address": "127.0.0.1",
            "bind-port": port,
            "auth-token": "chaos-token",
            "request-timeout": timeout,
        }
        for mode, port in zip(MODES, ports, strict=True)
    ]
    return {"workers": 2, "endpoints": endpoints}


def request_for(mode: str, key: str) -> bytes:
    if mode == "tcp-lookup":
        return f"get {key}\n".encode()
    if mode == "socketmap-lookup":
        payload = f"map {key}".encode()
        return b"%d:%s," % (len(payload), payload)
    return f"request=smtpd_access_policy\nrecipient={key}\n\n".encode()


def right_reply(mode: str, key: str) -> bytes:
    if mode == "tcp-lookup":
        return f"200 value-of-{key}\n".encode()
    if mode == "socketmap-lookup":
        found = f"OK value-of-{key}".encode()
        return b"%d:%s," % (len(found), found)
    return f"action=REJECT {key}\n\n".encode()


def is_temporary_error(mode: str, reply: bytes) -> bool:
    """The protocol's temporary error: the one right answer when the API fails or is late."""
    if mode == "tcp-lookup":
        return reply.startswith(b"400 ")
    if mode == "socketmap-lookup":
        return reply.split(b":", 1)[1].startswith((b"TEMP ", b"TIMEOUT "))
    return reply.startswith(b"action=DEFER_IF_PERMIT ")


async def read_reply(mode: str, reader: asyncio.StreamReader) -> bytes:
    if mode == "tcp-lookup":
        return await reader.readuntil(b"\n")
    if mode == "socketmap-lookup":
        length = await reader.readuntil(b":")
        return length + await reader.readexactly(int(length[:-1]) + 1)
    return await reader.readuntil(b"\n\n")


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    """Seconds per answered request on a connection that stayed alive."""
    slow: list[tuple[float, float, str]] = field(default_factory=list)
    """(sent at, waited, mode) of answers over ``SLOW`` s: when the stalls happened."""
    counts: Counter[str] = field(default_factory=Counter)


async def client(
    index: int, ports: list[int], stop: asyncio.Event, tally: Tally, started: float
) -> None:
    mode = MODES[index % len(MODES)]
    port = ports[index % len(MODES)]
    number = 0
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), REQUEST_DEADLINE
            )
        except (OSError, TimeoutError):
            tally.counts["connect failed"] += 1
            await asyncio.sleep(0.1)
            continue
        try:
            while not stop.is_set():
                key = f"k{index}-{number}@example.com"
                number += 1
                sent = time.monotonic()
                writer.write(request_for(mode, key))
                try:
                    reply = await asyncio.wait_for(read_reply(mode, reader), REQUEST_DEADLINE)
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    tally.counts["lost (connection closed or reset)"] += 1
                    break
                waited = time.monotonic() - sent
                tally.latencies.append(waited)
                if waited > SLOW:
                    tally.slow.append((sent - started, waited, mode))
                if reply == right_reply(mode, key):
                    tally.counts["right"] += 1
                elif is_temporary_error(mode, reply):
                    tally.counts["temporary error"] += 1
                else:
                    tally.counts[f"WRONG {mode}: {reply[:60]!r}"] += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def worker_pids(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
    return [int(pid) for pid in children.split()]


async def until_serving(ports: list[int], deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    for port in ports:
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.1)
                continue
            writer.close()
            break


async def chaos(
    supervisor: int,
    stop: asyncio.Event,
    every: tuple[float, float],
    log: Counter[str],
    configs: tuple[Path, list[bytes]],
) -> None:
    """SIGKILL a random worker every ``kill_every`` s and SIGHUP the supervisor every
    ``hup_every`` s (``every``; 0: never), the file first written with the next of
    ``configs``."""
    kill_every, hup_every = every
    path, versions = configs
    rng = random.Random(1)
    now = time.monotonic()
    next_kill = now + kill_every if kill_every else float("inf")
    next_hup = now + hup_every if hup_every else float("inf")
    while not stop.is_set():
        await asyncio.sleep(min(next_kill, next_hup) - time.monotonic())
        if stop.is_set():
            return
        now = time.monotonic()
        if now >= next_kill:
            pids = worker_pids(supervisor)
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
                log["kills"] += 1
            next_kill += kill_every
        if now >= next_hup:
            path.write_bytes(versions[log["reloads"] % len(versions)])
            os.kill(supervisor, signal.SIGHUP)
            log["reloads"] += 1
            next_hup += hup_every


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def run(
    connections: int,
    seconds: float,
    kill_every: float,
    hup_every: float,
    workdir: Path,
    *,
    alternate: bool = True,
) -> dict[str, object]:
    """One run; ``alternate``: the reloads cycle through a changed config (its endpoints
    replaced, their listening sockets handed over), an invalid one and the first one; else
    they re-read the same file."""
    runner, target = await start_api()
    config = workdir / "chaos.json"
    with reserved_ports(len(MODES)) as ports, (workdir / "chaos.log").open("wb") as stderr:
        first = json.dumps(config_document(target, ports, API_TIMEOUT)).encode()
        changed = json.dumps(config_document(target, ports, API_TIMEOUT - 1)).encode()
        versions = [changed, b'{"workers": 2, "endpoints": "not a list"}', first]
        config.write_bytes(first)
        process = await asyncio.create_subprocess_exec(
            *MODULE,
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            await until_serving(ports)
            tally, events, stop = Tally(), Counter[str](), asyncio.Event()
            started = time.monotonic()
            tasks = [
                asyncio.create_task(client(i, ports, stop, tally, started))
                for i in range(connections)
            ]
            tasks.append(
                asyncio.create_task(
                    chaos(
                        process.pid,
                        stop,
                        (kill_every, hup_every),
                        events,
                        (config, versions if alternate else [first]),
                    )
                )
            )
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_DEADLINE + 5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            await runner.cleanup()
    return {
        "connections": connections,
        "seconds": seconds,
        **events,
        **tally.counts,
        "answered": len(tally.latencies),
        "p50 s": round(percentile(tally.latencies, 0.5), 4),
        "p99 s": round(percentile(tally.latencies, 0.99), 4),
        "p99.9 s": round(percentile(tally.latencies, 0.999), 4),
        "max s": round(max(tally.latencies, default=0.0), 3),
        "stalls (over API time + 1 s)": sum(1 for v in tally.latencies if v > SLOW),
        "over 5 s": sum(1 for v in tally.latencies if v > 5.0),
        "slowest (at s, waited s, mode)": sorted(tally.slow, key=lambda s: -s[1])[:10],
    }
