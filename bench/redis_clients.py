"""Which asyncio Redis client costs the least CPU per shared-cache hit (issue #13).

Starts a private ``redis-server`` on a free loopback port, stores one entry shaped like a shared
cache entry, then, in interleaved rounds, lets each client fetch it with ``--concurrency``
concurrent lookups for ``--seconds`` on uvloop. CPU is the whole process's (all threads: glide
runs its own), so a client that hands work to another thread pays for it here. Prints the
medians; bounded in time, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import uvloop

DEFAULT_CONCURRENCY = 50
CONCURRENCY = DEFAULT_CONCURRENCY
KEY = "prac:v1:bench:-:user@example.com"
VALUE = json.dumps({"v": 1, "f": 1764669600.0, "o": "found", "value": "example.com/user/"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _drive(get: Callable[[], Awaitable[object]], seconds: float) -> tuple[int, float]:
    """Lookups done and CPU seconds spent, ``CONCURRENCY`` at a time for ``seconds``."""
    concurrency = CONCURRENCY
    done = 0
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            await get()
            done += 1

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.process_time() - started


async def redis_py(port: int, seconds: float) -> tuple[int, float]:
    from redis.asyncio import Redis  # noqa: PLC0415 - each client only in its own round

    client = Redis(host="127.0.0.1", port=port, max_connections=CONCURRENCY)
    try:
        await client.get(KEY)  # connect first
        return await _drive(lambda: client.get(KEY), seconds)
    finally:
        await client.aclose()


async def glide(port: int, seconds: float) -> tuple[int, float]:
    from glide import (  # noqa: PLC0415 - each client only in its own round
        GlideClient,
        GlideClientConfiguration,
        NodeAddress,
    )

    client = await GlideClient.create(GlideClientConfiguration([NodeAddress("127.0.0.1", port)]))
    try:
        await client.get(KEY)
        return await _drive(lambda: client.get(KEY), seconds)
    finally:
        await client.close()


async def connector_tier(port: int, seconds: float) -> tuple[int, float]:
    """The connector's own read path (``SharedTier.get``: the reads of one loop turn in one
    ``MGET``, pipelined on a connection of its own and parsed by hiredis), on distinct keys so
    that the batching, not a repeated key, is measured."""
    from postfix_rest_api_connector.cache.shared import (  # noqa: PLC0415
        SharedCacheSettings,
        SharedEntry,
        SharedTier,
    )
    from postfix_rest_api_connector.core.model import Found  # noqa: PLC0415

    tier = SharedTier(SharedCacheSettings(f"redis://127.0.0.1:{port}/0", "", timeout=1.0))
    keys = [f"{KEY}{number}".encode() for number in range(CONCURRENCY)]
    turn = 0

    def get() -> Awaitable[object]:
        nonlocal turn
        turn += 1
        return tier.get(keys[turn % CONCURRENCY], "")

    now = time.time()
    stored = SharedEntry(Found("example.com/user/"), "", now, now + 3600)
    try:
        for key in keys:
            await tier.publish(key, stored, 3600, None)
        assert await tier.get(keys[0], "") == stored
        return await _drive(get, seconds)
    finally:
        await tier.close()


CLIENTS = {
    "redis-py (hiredis)": redis_py,
    "valkey-glide": glide,
    "connector (batched, pipelined)": connector_tier,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    args = parser.parse_args()
    global CONCURRENCY  # noqa: PLW0603 - every client's round reads it
    CONCURRENCY = args.concurrency
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("redis-server not found: apt-get install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="redis-bench") as directory:
        process = subprocess.Popen(
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            subprocess.run(
                ["redis-cli", "-p", str(port), "set", KEY, VALUE], check=True, capture_output=True
            )
            figures: dict[str, list[tuple[float, float]]] = {name: [] for name in CLIENTS}
            for round_number in range(args.rounds):
                for name, client in CLIENTS.items():
                    done, cpu = uvloop.run(client(port, args.seconds))
                    figures[name].append((cpu / done * 1e6, done / args.seconds))
                    print(
                        f"round {round_number + 1} {name}: {cpu / done * 1e6:.1f} us/hit,"
                        f" {done / args.seconds:,.0f} hits/s",
                        flush=True,
                    )
        finally:
            process.terminate()
            process.wait()
    print()
    print("| client | CPU us per hit (median) | hits/s (median) |")
    print("|---|---|---|")
    for name, runs in figures.items():
        cpu = statistics.median(run[0] for run in runs)
        rate = statistics.median(run[1] for run in runs)
        print(f"| {name} | {cpu:.1f} | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
