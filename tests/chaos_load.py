"""A chaos load driver: the real connector (2 workers) under Postfix-style load while workers are
SIGKILLed, the supervisor gets SIGHUPs, the API flaps and clients vanish; used by
``tests/test_chaos.py`` and ``bench/chaos.py``.

Each of N clients keeps one connection (tcp_table, socketmap or policy, in turn) and sends one
request at a time, recording how long its answer took. A connection that the connector closes or
resets (its worker was killed) is counted as lost with its request, and the client connects
again, as Postfix does; so does a client that vanished on purpose mid-request. The report is the
latency distribution of the requests answered on live connections, the wrong answers (never
expected: the API answers every key with its own value, or fails, which must give the
protocol's temporary error), the lost ones, and the workers' tasks, descriptors and RSS idle
before the load, warm, and idle again after it (from ``/metrics`` and ``/proc``).
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

MODES = ("tcp-lookup", "socketmap-lookup", "policy")
PREFIX = "postfix_rest_api_connector"
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


API_STATES = ("up", "down", "error", "slow", "garbage")
"""What the API does meanwhile: answer; drop the connection unanswered; answer 503; answer after
the connector's ``request-timeout``; answer 200 with a body that is no answer."""


@dataclass
class Api:
    """The API's current state (``API_STATES``), switched by ``flap``."""

    state: str = "up"
    changes: Counter[str] = field(default_factory=Counter)


async def start_api(api: Api) -> tuple[web.AppRunner, str]:
    """An API that answers every key with ``value-of-KEY`` (lookups) or ``REJECT KEY``
    (policy) while ``api.state`` is ``up``, and fails as that state says otherwise."""

    async def handler(request: web.Request) -> web.StreamResponse:
        state = api.state
        if state == "down" and request.transport is not None:
            request.transport.close()
            raise web.HTTPServiceUnavailable  # never sent: the connection is gone
        if state == "error":
            raise web.HTTPServiceUnavailable
        if state == "garbage":
            return web.Response(text="{not json", content_type="application/json")
        if state == "slow":
            await asyncio.sleep(API_TIMEOUT / 1000 * 1.5)
        if request.method == "POST":
            try:
                key = str((await request.post()).getone("recipient"))
            except ConnectionResetError:  # its worker was killed while it sent the body
                return web.Response(status=499)
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


async def flap(api: Api, every: float, stop: asyncio.Event) -> None:
    """Every ``every`` s or so (at random moments), the API fails in one of its ways for a
    while, then is up again."""
    rng = random.Random(2)
    while not stop.is_set():
        api.state = "up" if api.state != "up" else rng.choice(API_STATES[1:])
        api.changes[api.state] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every * rng.uniform(0.5, 1.5))
    api.state = "up"


def config_document(
    target: str, ports: list[int], timeout: int, metrics_port: int
) -> dict[str, object]:
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
    return {
        "workers": 2,
        "endpoints": endpoints,
        "metrics": {"bind-address": "127.0.0.1", "bind-port": metrics_port},
    }


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
    index: int,
    ports: list[int],
    stop: asyncio.Event,
    tally: Tally,
    started: float,
    *,
    vanish_share: float = 0.0,
) -> None:
    """One Postfix-style client; a ``vanish_share`` of its requests it sends (whole or the first
    half) and then closes the connection without reading the answer."""
    mode = MODES[index % len(MODES)]
    port = ports[index % len(MODES)]
    rng = random.Random(index)
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
                request = request_for(mode, key)
                if writer.is_closing():  # the connector closed it (a killed worker)
                    tally.counts["lost (connection closed or reset)"] += 1
                    break
                if rng.random() < vanish_share:
                    writer.write(request[: rng.choice((len(request), len(request) // 2))])
                    tally.counts["vanished (client closed mid-request)"] += 1
                    break
                try:
                    # uvloop raises RuntimeError, not OSError, for a transport closed meanwhile
                    writer.write(request)
                    reply = await asyncio.wait_for(read_reply(mode, reader), REQUEST_DEADLINE)
                except (OSError, RuntimeError, asyncio.IncompleteReadError, TimeoutError):
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


@dataclass(frozen=True)
class Figures:
    """What the workers hold: the most of any worker, so that one restarted counts as well."""

    tasks: int
    descriptors: int
    """Not counting sockets to the API: a pool of kept-alive API connections is no leak."""
    api_sockets: int
    rss_mib: float


def socket_inodes_to(port: int) -> set[str]:
    """Inodes of loopback TCP sockets connected to ``port`` (``/proc/net/tcp``)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port:
            inodes.add(fields[9])
    return inodes


async def scrape(metrics_port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
    ):
        text = await response.text()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


async def figures(supervisor: int, metrics_port: int, api_port: int) -> Figures:
    samples = await scrape(metrics_port)
    tasks = max(value for _, value in samples[f"{PREFIX}_event_loop_tasks"])
    return Figures(int(tasks), *process_figures(supervisor, api_port))


def process_figures(supervisor: int, api_port: int) -> tuple[int, int, float]:
    """Descriptors (not to the API), sockets to the API and RSS (MiB): the most of any worker."""
    to_api = socket_inodes_to(api_port)
    descriptors, api_sockets, rss = 0, 0, 0
    for pid in worker_pids(supervisor):
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        pooled = sum(1 for link in links if link.removeprefix("socket:[")[:-1] in to_api)
        descriptors = max(descriptors, len(links) - pooled)
        api_sockets = max(api_sockets, pooled)
        status = Path(f"/proc/{pid}/status").read_text()
        rss = max(rss, int(status.split("VmRSS:")[1].split()[0]))
    return descriptors, api_sockets, round(rss / 1024, 1)


async def until_quiet(supervisor: int, metrics_port: int, deadline: float = 15.0) -> None:
    """Until both workers answer a scrape with no connection open and no request in flight."""
    end = time.monotonic() + deadline
    while True:
        with contextlib.suppress(OSError, aiohttp.ClientError):
            samples = await scrape(metrics_port)
            busy = sum(
                value
                for name in (f"{PREFIX}_connections_open", f"{PREFIX}_requests_in_flight")
                for _, value in samples.get(name, [])
            )
            up = [value for _, value in samples.get(f"{PREFIX}_worker_up", [])]
            if not busy and up == [1.0, 1.0] and len(worker_pids(supervisor)) == 2:
                return
        if time.monotonic() > end:
            raise TimeoutError("the connector did not become idle after the load")
        await asyncio.sleep(0.2)


async def start_connector(
    config: Path, stderr: IO[bytes], ports: list[int], metrics_port: int
) -> asyncio.subprocess.Process:
    """The real connector on ``config``, once it listens on ``ports`` and is idle."""
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
        await until_quiet(process.pid, metrics_port)
    except BaseException:
        await stop_connector(process)
        raise
    return process


async def stop_connector(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, and SIGKILL to its whole session if it has not exited within 15 s."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 15)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def run(
    connections: int,
    seconds: float,
    kill_every: float,
    hup_every: float,
    workdir: Path,
    *,
    alternate: bool = True,
    flap_every: float = 0.0,
    vanish_share: float = 0.0,
) -> dict[str, object]:
    """One run; ``alternate``: the reloads cycle through a changed config (its endpoints
    replaced, their listening sockets handed over), an invalid one and the first one; else
    they re-read the same file. ``flap_every``: the API changes state (``flap``) about that
    often (0: always up). ``vanish_share``: of requests, those whose client closes at once.

    The first quarter of the run (at most 2 s) is load alone, for the warm figures; the
    workers' figures idle before it, warm after it and idle again after the run are reported.
    """
    api = Api()
    runner, target = await start_api(api)
    api_port = int(target.rsplit(":", 1)[1])
    config = workdir / "chaos.json"
    with (
        reserved_ports(len(MODES) + 1) as reserved,
        (workdir / "chaos.log").open("wb") as stderr,
    ):
        ports, metrics_port = reserved[:-1], reserved[-1]
        first = json.dumps(config_document(target, ports, API_TIMEOUT, metrics_port)).encode()
        changed = json.dumps(config_document(target, ports, API_TIMEOUT - 1, metrics_port)).encode()
        versions = [changed, b'{"workers": 2, "endpoints": "not a list"}', first]
        config.write_bytes(first)
        process = await start_connector(config, stderr, [*ports, metrics_port], metrics_port)
        try:
            idle = await figures(process.pid, metrics_port, api_port)
            tally, events, stop = Tally(), Counter[str](), asyncio.Event()
            started = time.monotonic()
            tasks = [
                asyncio.create_task(
                    client(i, ports, stop, tally, started, vanish_share=vanish_share)
                )
                for i in range(connections)
            ]
            warmup = min(seconds / 4, 2.0)
            await asyncio.sleep(warmup)
            warm = await figures(process.pid, metrics_port, api_port)
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
            if flap_every:
                tasks.append(asyncio.create_task(flap(api, flap_every, stop)))
            await asyncio.sleep(seconds - warmup)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_DEADLINE + 5)
            await until_quiet(process.pid, metrics_port)
            after = await figures(process.pid, metrics_port, api_port)
        finally:
            await stop_connector(process)
            await runner.cleanup()
    return {
        "connections": connections,
        "seconds": seconds,
        **events,
        **{f"API {state}": count for state, count in api.changes.items()},
        **tally.counts,
        "answered": len(tally.latencies),
        "p50 s": round(percentile(tally.latencies, 0.5), 4),
        "p99 s": round(percentile(tally.latencies, 0.99), 4),
        "p99.9 s": round(percentile(tally.latencies, 0.999), 4),
        "max s": round(max(tally.latencies, default=0.0), 3),
        "stalls (over API time + 1 s)": sum(1 for v in tally.latencies if v > SLOW),
        "over 5 s": sum(1 for v in tally.latencies if v > 5.0),
        "slowest (at s, waited s, mode)": sorted(tally.slow, key=lambda s: -s[1])[:10],
        "idle": asdict(idle),
        "warm": asdict(warm),
        "after": asdict(after),
    }
