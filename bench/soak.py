"""The soak (issue #16): the real connector (2 workers) at a steady moderate load for 30 minutes,
the API failing for 10 s at the start of every minute (dropping connections and answering 503 in
turn); once a minute, in the same quiet phase of it, the workers' asyncio tasks (``/metrics``),
descriptors, pooled API connections and RSS (``/proc``) are sampled. The report is the curve and
the growth from the end of the warm-up to the end; exit status 1 on a wrong answer.

    bash bench/soak.sh [--minutes 30] [--connections 150] [--rate 1500]

Stops by itself; loopback only. It reuses the chaos driver's API, config and figures
(``tests/chaos_load.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from chaos_load import (
    API_TIMEOUT,
    MODES,
    REQUEST_DEADLINE,
    Api,
    config_document,
    figures,
    is_temporary_error,
    read_reply,
    request_for,
    reserved_ports,
    right_reply,
    start_api,
    start_connector,
    stop_connector,
    until_quiet,
)

FAILING_SECONDS = 10.0
SAMPLE_AT = 45.0
"""Seconds into each minute a sample is taken: the API has been up again for 35 s."""


async def paced_client(
    index: int, ports: list[int], interval: float, stop: asyncio.Event, counts: Counter[str]
) -> None:
    """One Postfix-style connection sending a request every ``interval`` s (or as soon as the
    last is answered, if later); it reconnects if the connection is lost."""
    mode, port = MODES[index % len(MODES)], ports[index % len(MODES)]
    number = 0
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["connect failed"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            while not stop.is_set():
                due = time.monotonic() + interval
                key = f"s{index}-{number % 500}@example.com"  # keys come back: the cache-less path
                number += 1
                writer.write(request_for(mode, key))
                try:
                    reply = await asyncio.wait_for(read_reply(mode, reader), REQUEST_DEADLINE)
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    counts["lost"] += 1
                    break
                if reply == right_reply(mode, key):
                    counts["right"] += 1
                elif is_temporary_error(mode, reply):
                    counts["temporary error"] += 1
                else:
                    counts[f"WRONG {mode}: {reply[:60]!r}"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(due - time.monotonic(), 0))
        finally:
            writer.close()


async def fail_every_minute(api: Api, started: float, stop: asyncio.Event) -> None:
    """The API fails for ``FAILING_SECONDS`` at the start of every minute, down and 503 in turn."""
    minute = 0
    while not stop.is_set():
        api.state = ("down", "error")[minute % 2]
        api.changes[api.state] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                stop.wait(), started + minute * 60 + FAILING_SECONDS - time.monotonic()
            )
        api.state = "up"
        minute += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), started + minute * 60 - time.monotonic())


async def soak(minutes: int, connections: int, rate: float, workdir: Path) -> dict[str, object]:
    api = Api()
    runner, target = await start_api(api)
    api_port = int(target.rsplit(":", 1)[1])
    config = workdir / "soak.json"
    samples: list[dict[str, object]] = []
    counts: Counter[str] = Counter()
    with reserved_ports(len(MODES) + 1) as reserved, (workdir / "soak.log").open("wb") as stderr:
        ports, metrics_port = reserved[:-1], reserved[-1]
        config.write_text(json.dumps(config_document(target, ports, API_TIMEOUT, metrics_port)))
        process = await start_connector(config, stderr, [*ports, metrics_port], metrics_port)
        try:
            idle = await figures(process.pid, metrics_port, api_port)
            stop = asyncio.Event()
            started = time.monotonic()
            interval = connections / rate
            tasks = [
                asyncio.create_task(paced_client(i, ports, interval, stop, counts))
                for i in range(connections)
            ]
            tasks.append(asyncio.create_task(fail_every_minute(api, started, stop)))
            for minute in range(minutes):
                await asyncio.sleep(started + minute * 60 + SAMPLE_AT - time.monotonic())
                sample = asdict(await figures(process.pid, metrics_port, api_port))
                samples.append({"minute": minute + 1, **sample, "answers": sum(counts.values())})
                print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_DEADLINE + 5)
            await until_quiet(process.pid, metrics_port)
            after = await figures(process.pid, metrics_port, api_port)
        finally:
            await stop_connector(process)
            await runner.cleanup()
    warm, last = samples[min(1, len(samples) - 1)], samples[-1]
    return {
        "minutes": minutes,
        "connections": connections,
        "rate": rate,
        **counts,
        "idle before": asdict(idle),
        "idle after": asdict(after),
        "growth from minute 2 to the last": {
            name: round(float(last[name]) - float(warm[name]), 1)  # type: ignore[arg-type]
            for name in ("tasks", "descriptors", "api_sockets", "rss_mib")
        },
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--connections", type=int, default=150)
    parser.add_argument("--rate", type=float, default=1500.0, help="requests per second, all told")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as directory:
        report = asyncio.run(soak(args.minutes, args.connections, args.rate, Path(directory)))
    print(json.dumps(report))
    if any(str(key).startswith("WRONG") for key in report):
        sys.exit(1)


if __name__ == "__main__":
    main()
