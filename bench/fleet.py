"""The fleet scenario of issue #13: several connector instances with their default workers, one
redis-server, hot keys drawn Zipf-like, a TTL, steady load; with the shared tier and without it,
in interleaved rounds on the same API (nginx) and load generator.

Started by ``bench/fleet.sh``. Loopback only; every run is bounded in time and stops by itself.

Scenarios (each round runs all four, in turn):
Load: ``CONNS_PER_INSTANCE`` connections per instance, each pausing ``THINK_MS`` after a reply.

- ``shared``: the fleet on one Redis (``cache-ttl`` 10 s): API calls per key per TTL window,
  CPU per request;
- ``local``: the same fleet without ``shared-cache`` (each process caches on its own);
- ``shared hits`` / ``local hits``: one instance, every key already cached, the in-process tier
  kept to one entry in ``shared hits`` so that nearly every lookup is a shared-tier hit: the p99
  difference is what a shared-tier hit adds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from run import Launcher, cpu_seconds, free_port, run_loadgen, start_nginx, stop

HERE = Path(__file__).resolve().parent
INSTANCES = 3
KEYS = 1000
TTL_MS = 10_000
ZIPF = 1.0
CONNS_PER_INSTANCE = 100
THINK_MS = 20
"""Each connection pauses after a reply, as Postfix's clients do between mails: a steady load
that leaves the machine room, rather than a closed loop that saturates it (where every timeout
would measure the machine, not the tier)."""


def nginx_requests(port: int) -> int:
    """The API's own count of requests served (``stub_status``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        return int(response.read().decode().splitlines()[2].split()[2])


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("redis-server not found: bench/fleet.sh installs it")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while (
        subprocess.run(
            ["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True, check=False
        ).stdout.strip()
        != "PONG"
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return process, port


def start_instance(
    tmp: Path,
    name: str,
    api_port: int,
    redis_port: int | None,
    prefix: str,
    **endpoint_extra: Any,
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    endpoint = {
        "name": "bench",
        "mode": "tcp-lookup",
        "target": f"http://127.0.0.1:{api_port}/lookup/0",
        "bind-address": "127.0.0.1",
        "bind-port": port,
        "auth-token": "bench-token",
        "request-timeout": 5000,
        "cache-ttl": TTL_MS,
        **endpoint_extra,
    }
    document: dict[str, Any] = {"user-agent": "bench", "endpoints": [endpoint]}
    if redis_port is not None:
        document["shared-cache"] = {
            "url": f"redis://127.0.0.1:{redis_port}/0",
            "key-prefix": prefix,
        }
    config = tmp / f"{name}.json"
    config.write_text(json.dumps(document))
    process = Launcher.ours().start(config)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
        else:
            return process, port
    process.kill()
    raise RuntimeError("the connector did not start")


def measure(
    loadgen: Path,
    tmp: Path,
    name: str,
    *,
    api_port: int,
    redis_port: int | None,
    instances: int,
    warmup: float,
    duration: float,
    **endpoint_extra: Any,
) -> dict[str, Any]:
    started = [
        start_instance(tmp, f"{name}-{i}", api_port, redis_port, f"{name}:", **endpoint_extra)
        for i in range(instances)
    ]
    try:
        generators = [
            run_loadgen(
                loadgen,
                mode="tcp",
                port=port,
                conns=CONNS_PER_INSTANCE,
                warmup=warmup,
                duration=duration,
                keys=KEYS,
                extra=("--zipf", str(ZIPF), "--think-ms", str(THINK_MS)),
            )
            for _, port in started
        ]
        time.sleep(warmup)
        cpu_start = sum(cpu_seconds(process.pid) for process, _ in started)
        api_start = nginx_requests(api_port)
        time.sleep(duration)
        cpu_end = sum(cpu_seconds(process.pid) for process, _ in started)
        api_end = nginx_requests(api_port)
        outputs = [json.loads(generator.communicate(timeout=60)[0]) for generator in generators]
    finally:
        for process, _ in started:
            stop(process)
    requests = max(sum(out["requests"] for out in outputs), 1)
    distinct = max(out["distinct_keys"] for out in outputs)
    api_calls = api_end - api_start - 1  # the second status request is one itself
    windows = duration / (TTL_MS / 1000)
    return {
        "requests": requests,
        "req_per_s": requests / duration,
        "errors": sum(out["errors"] for out in outputs),
        "p99_ms": max(out["p99_ms"] for out in outputs),
        "cpu_us_per_req": (cpu_end - cpu_start) / requests * 1e6,
        "api_calls": api_calls,
        "distinct_keys": distinct,
        "api_calls_per_key_per_window": api_calls / max(distinct, 1) / windows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loadgen", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--results", type=Path, default=HERE / "fleet-results.json")
    args = parser.parse_args()
    timing = {"warmup": args.warmup, "duration": args.duration}
    scenarios: dict[str, dict[str, Any]] = {
        "shared": {"instances": INSTANCES, "shared": True},
        "local": {"instances": INSTANCES, "shared": False},
        "shared hits": {
            "instances": 1,
            "shared": True,
            "cache-max-entries": 1,
            "cache-ttl": 3_600_000,
        },
        "local hits": {"instances": 1, "shared": False, "cache-ttl": 3_600_000},
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in scenarios}
    with tempfile.TemporaryDirectory(prefix="fleet") as directory:
        tmp = Path(directory)
        nginx, api_port = start_nginx(tmp)
        redis, redis_port = start_redis(tmp)
        try:
            for run in range(args.runs):
                for name, scenario in scenarios.items():
                    options = dict(scenario)
                    shared = options.pop("shared")
                    instances = options.pop("instances")
                    result = measure(
                        args.loadgen,
                        tmp,
                        name.replace(" ", "-") + str(run),
                        api_port=api_port,
                        redis_port=redis_port if shared else None,
                        instances=instances,
                        **timing,
                        **options,
                    )
                    results[name].append(result)
                    print(f"run {run + 1} {name}: {json.dumps(result)}", flush=True)
        finally:
            for process in (nginx, redis):
                process.terminate()
                process.wait()

    def median(name: str, key: str) -> float:
        return float(statistics.median(run[key] for run in results[name]))

    lines = [
        "| scenario | req/s | p99 ms | errors | CPU us/req | API calls | keys | calls per key"
        " per TTL window |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in scenarios:
        lines.append(
            f"| {name} | {median(name, 'req_per_s'):,.0f} | {median(name, 'p99_ms'):.2f}"
            f" | {max(run['errors'] for run in results[name])}"
            f" | {median(name, 'cpu_us_per_req'):.1f} | {median(name, 'api_calls'):,.0f}"
            f" | {median(name, 'distinct_keys'):,.0f}"
            f" | {median(name, 'api_calls_per_key_per_window'):.3f} |"
        )
    lines += [
        "",
        f"CPU per request, shared / local: "
        f"{median('shared', 'cpu_us_per_req') / median('local', 'cpu_us_per_req'):.2f}",
        f"p99 a shared-tier hit adds (shared hits - local hits): "
        f"{median('shared hits', 'p99_ms') - median('local hits', 'p99_ms'):.2f} ms",
    ]
    report = "\n".join(lines)
    args.results.write_text(json.dumps({"results": results, "report": report}, indent=1))
    print()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
