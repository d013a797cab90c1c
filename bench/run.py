"""Run the benchmark scenarios against the real connector and print the table.

Started by ``bench/run.sh``, which installs nginx with the echo module and builds the load
generator. Each scenario starts a fresh connector process with one endpoint, drives it with
``loadgen`` (N persistent Postfix-like connections), and reads the connector's CPU time and memory
from /proc. nginx is the API: ``echo_sleep`` adds the latency without burning CPU.
Loopback only; every run is bounded in time and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"

NGINX_CONF = """
load_module {echo_module};
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp};
    proxy_temp_path {tmp};
    fastcgi_temp_path {tmp};
    uwsgi_temp_path {tmp};
    scgi_temp_path {tmp};
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /status {{ stub_status; }}
        location = /lookup/0 {{ default_type application/json; echo '["value"]'; }}
        location = /lookup/30 {{
            default_type application/json; echo_sleep 0.03; echo '["value"]';
        }}
        location = /policy/0 {{ default_type text/plain; echo 'action=DUNNO'; }}
        location = /policy/30 {{ default_type text/plain; echo_sleep 0.03; echo 'action=DUNNO'; }}
        location = /oauth2/token {{
            default_type application/json;
            echo '{{"access_token": "{token}", "token_type": "Bearer", "expires_in": {lifetime}}}';
        }}
        location = /oauth2/lookup/0 {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            default_type application/json; echo '["value"]';
        }}
        location = /oauth2/lookup/30 {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            default_type application/json; echo_sleep 0.03; echo '["value"]';
        }}
    }}
}}
"""

MODES = {"tcp": "tcp-lookup", "socketmap": "socketmap-lookup", "policy": "policy"}
IDLE_SETTLE = 1.0
"""Seconds a started connector is left alone before its idle memory is read."""
OAUTH2_TOKEN = "bench-oauth2-token"  # noqa: S105 - the fake API's, not a secret
OAUTH2_LIFETIME = 4
"""Seconds a bench token is valid: renewed every 3.2 s, so a run includes several renewals."""
API_ALONE = "api-alone"
"""A scenario without the connector: the load generator asks nginx itself (HTTP)."""


@dataclass(frozen=True)
class Launcher:
    """How one connector under test is started: its command line, where ``{config}`` stands for
    the config file (in the predecessors' format, which every connector here reads), and what
    it adds to the environment."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def ours(cls, source: Path | None = None) -> Launcher:
        """This checkout's install, or another checkout's ``src`` first on ``PYTHONPATH``."""
        argv = (sys.executable, "-m", "postfix_rest_api_connector", "{config}")
        env = (("PYTHONPATH", str(source)),) if source is not None else ()
        return cls((*argv, "--log-level", "WARNING"), env)

    @classmethod
    def from_template(cls, template: str) -> Launcher:
        """``'NAME=VALUE ... COMMAND ARG... {config}'``: leading assignments go to the
        environment (``RUST_LOG=warn ./connector {config}``)."""
        words = shlex.split(template)
        env = []
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            env.append((name, value))
        if "{config}" not in words:
            raise SystemExit(f"--peer-cmd {template!r}: no {{config}} argument")
        return cls(tuple(words), tuple(env))

    def start(self, config: Path) -> subprocess.Popen[bytes]:
        argv = [str(config) if word == "{config}" else word for word in self.argv]
        return subprocess.Popen(argv, env={**os.environ, **dict(self.env)})


@dataclass(frozen=True)
class Scenario:
    mode: str
    latency_ms: int
    conns: int
    hot_keys: int = 0
    cache: bool = False
    oauth2: bool = False
    """The endpoint authenticates with an OAuth2 token from nginx's ``/oauth2/token``, and
    nginx answers 401 to any other ``Authorization``."""
    peer: bool = False
    """Only for naming the peer's results (``--peer-src``)."""

    @property
    def name(self) -> str:
        keys = f" hot{self.hot_keys}" if self.hot_keys else ""
        cache = " cache" if self.cache else ""
        oauth2 = " oauth2" if self.oauth2 else ""
        peer = "peer " if self.peer else ""
        return f"{peer}{self.mode} {self.latency_ms}ms {self.conns}c{keys}{cache}{oauth2}"

    @property
    def bound(self) -> float | None:
        """Little's law: N connections with one request each, each taking the API's latency."""
        return self.conns / (self.latency_ms / 1000) if self.latency_ms else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (a supervisor's workers, and theirs), all threads' children."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


def workers_of(pid: int) -> list[int]:
    """The processes that serve: the worker children of a supervisor, or the process itself."""
    return descendants(pid) or [pid]


def pss_mib(pid: int) -> dict[str, float]:
    """Proportional set sizes: the whole service's (forked workers share pages, which summed
    RSS counts once per process) and the top process's own (a supervisor's, with workers)."""

    def pss(process: int) -> float:
        rollup = Path(f"/proc/{process}/smaps_rollup").read_text()
        return int(re.search(r"^Pss:\s+(\d+)", rollup, re.MULTILINE)[1]) / 1024  # type: ignore[index]

    top = pss(pid)
    return {"PSS_total": top + sum(pss(child) for child in descendants(pid)), "PSS_top": top}


def cpu_seconds(pid: int) -> float:
    """User and system time of the process and of every process below it, all threads."""
    total = 0.0
    for process in {pid, *descendants(pid)}:
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    return total


def memory_mib(pid: int) -> dict[str, float]:
    """The largest worker's VmRSS and VmHWM (the targets are per worker), and the total RSS."""
    per_process = []
    for process in workers_of(pid):
        status = Path(f"/proc/{process}/status").read_text()
        per_process.append(
            {
                key: int(re.search(rf"^{key}:\s+(\d+)", status, re.MULTILINE)[1]) / 1024  # type: ignore[index]
                for key in ("VmRSS", "VmHWM")
            }
        )
    return {
        "VmRSS": max(memory["VmRSS"] for memory in per_process),
        "VmHWM": max(memory["VmHWM"] for memory in per_process),
        "RSS_total": sum(memory["VmRSS"] for memory in per_process),
        "workers": len(per_process),
    }


def nginx_accepts(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        numbers = response.read().decode().splitlines()[2].split()
    return int(numbers[0])


def start_nginx(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            echo_module=ECHO_MODULE,
            tmp=tmp,
            port=port,
            token=OAUTH2_TOKEN,
            lifetime=OAUTH2_LIFETIME,
        )
    )
    process = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            nginx_accepts(port)
        except OSError:
            time.sleep(0.05)
            continue
        return process, port
    raise RuntimeError(f"nginx did not start: {(tmp / 'nginx-error.log').read_text()}")


def start_connector(
    tmp: Path,
    scenario: Scenario,
    api_port: int,
    workers: int | None,
    launcher: Launcher,
    *,
    start_deadline: float = 15,
) -> tuple[subprocess.Popen[bytes], int]:
    """A connector on one endpoint, configured with the keys both predecessors require (they
    ignore the others: ``max-connections``, ``cache-ttl``, ``workers``)."""
    port = free_port()
    path = "policy" if scenario.mode == "policy" else "lookup"
    endpoint: dict[str, Any] = {
        "name": "bench",
        "mode": MODES[scenario.mode],
        "target": f"http://127.0.0.1:{api_port}/{path}/{scenario.latency_ms}",
        "bind-address": "127.0.0.1",
        "bind-port": port,
        "auth-token": "bench-token",
        "request-timeout": 5000,
        "max-connections": 10000,
    }
    if scenario.cache:
        endpoint["cache-ttl"] = 60_000
    if scenario.oauth2:
        secret = tmp / "client-secret"
        secret.write_text("bench-secret\n")
        api = f"http://127.0.0.1:{api_port}"
        del endpoint["auth-token"]
        endpoint["target"] = f"{api}/oauth2/{path}/{scenario.latency_ms}"
        endpoint["oauth2"] = {
            "token-url": f"{api}/oauth2/token",
            "client-id": "bench",
            "client-secret-file": str(secret),
        }
    config = tmp / "connector.json"
    document: dict[str, Any] = {"user-agent": "bench", "endpoints": [endpoint]}
    if workers is not None:
        document["workers"] = workers
    config.write_text(json.dumps(document))
    process = launcher.start(config)
    deadline = time.monotonic() + start_deadline
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
            continue
        return process, port
    process.kill()
    raise RuntimeError("the connector did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_loadgen(
    loadgen: Path,
    *,
    mode: str,
    port: int,
    conns: int,
    warmup: float,
    duration: float,
    keys: int,
    path: str = "/",
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(loadgen),
            *("--mode", mode, "--port", str(port), "--conns", str(conns)),
            *("--warmup", str(warmup), "--duration", str(duration), "--keys", str(keys)),
            *("--path", path),
            "--reconnect",
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def measure_api_alone(
    loadgen: Path, scenario: Scenario, *, api_port: int, warmup: float, duration: float
) -> dict[str, Any]:
    """The load generator straight against nginx: the ceiling the rig allows a connector."""
    generator = run_loadgen(
        loadgen,
        mode="http",
        port=api_port,
        conns=scenario.conns,
        warmup=warmup,
        duration=duration,
        keys=0,
        path=f"/lookup/{scenario.latency_ms}",
    )
    out, _ = generator.communicate(timeout=duration + warmup + 60)
    if generator.returncode != 0:
        raise RuntimeError(f"loadgen failed for {scenario.name}")
    result: dict[str, Any] = json.loads(out)
    if scenario.bound:
        result["of_bound"] = result["req_per_s"] / scenario.bound
    return result


def measure(
    loadgen: Path,
    tmp: Path,
    scenario: Scenario,
    *,
    api_port: int,
    warmup: float,
    duration: float,
    workers: int | None,
    launcher: Launcher,
) -> dict[str, Any]:
    connector, port = start_connector(tmp, scenario, api_port, workers, launcher)
    try:
        time.sleep(IDLE_SETTLE)
        idle = pss_mib(connector.pid)
        generator = run_loadgen(
            loadgen,
            mode=scenario.mode,
            port=port,
            conns=scenario.conns,
            warmup=warmup,
            duration=duration,
            keys=scenario.hot_keys,
        )
        time.sleep(warmup)
        cpu_start, accepts_start = cpu_seconds(connector.pid), nginx_accepts(api_port)
        time.sleep(duration)
        cpu_end, accepts_end = cpu_seconds(connector.pid), nginx_accepts(api_port)
        memory = {**memory_mib(connector.pid), **pss_mib(connector.pid)}
        memory.update({"PSS_idle": idle["PSS_total"], "PSS_top_idle": idle["PSS_top"]})
        out, _ = generator.communicate(timeout=60)
        if generator.returncode != 0:
            raise RuntimeError(f"loadgen failed for {scenario.name}")
        result: dict[str, Any] = json.loads(out)
    finally:
        stop(connector)
    requests = max(result["requests"], 1)
    result["cpu_us_per_req"] = (cpu_end - cpu_start) / requests * 1e6
    # the second status request is itself one accepted connection
    result["new_api_conns_per_1000"] = (accepts_end - accepts_start - 1) / requests * 1000
    result.update(memory)
    if scenario.bound:
        result["of_bound"] = result["req_per_s"] / scenario.bound
    return result


def loadgen_capacity(loadgen: Path, duration: float) -> dict[str, dict[str, float]]:
    """The generator against a stub that answers at once: its own CPU per request."""
    capacity = {}
    for mode in MODES:
        port = free_port()
        stub = subprocess.Popen([str(loadgen), "--stub", "--mode", mode, "--port", str(port)])
        try:
            time.sleep(0.3)
            before = os.times()
            generator = run_loadgen(
                loadgen, mode=mode, port=port, conns=100, warmup=1, duration=duration, keys=0
            )
            out, _ = generator.communicate(timeout=60)
            after = os.times()
            result = json.loads(out)
            child_cpu = (after.children_user - before.children_user) + (
                after.children_system - before.children_system
            )
            capacity[mode] = {
                "req_per_s": result["req_per_s"],
                "loadgen_cpu_us_per_req": child_cpu / max(result["requests"], 1) * 1e6,
            }
        finally:
            stub.terminate()
            stub.wait()
    return capacity


SCENARIO_SETS = {
    "all": [
        Scenario(mode, latency, conns)
        for mode in MODES
        for latency in (0, 30)
        for conns in (100, 1000)
    ]
    + [Scenario("tcp", 30, 100, hot_keys=100), Scenario("tcp", 30, 100, hot_keys=100, cache=True)]
    + [Scenario(API_ALONE, 30, conns) for conns in (100, 1000)],
    "quick": [Scenario(mode, latency, 100) for mode in MODES for latency in (0, 30)]
    + [Scenario(API_ALONE, 30, 100)],
    "hotkeys": [
        Scenario("tcp", 30, 100, hot_keys=100),
        Scenario("tcp", 30, 100, hot_keys=100, cache=True),
    ],
    "oauth2": [
        Scenario("tcp", latency, 100, oauth2=oauth2)
        for latency in (0, 30)
        for oauth2 in (False, True)
    ],
}
"""``oauth2``: each plain scenario and its OAuth2 twin in turn, in every round, so that the
CPU per request of both is measured in the same run (the ratio follows the table)."""


def table(results: dict[str, list[dict[str, Any]]], scenarios: list[Scenario]) -> str:
    lines = [
        "| scenario | bound req/s | req/s | of bound | p50 ms | p99 ms | p99.9 ms | max ms"
        " | errors | reconnects | CPU us/req | new API conns /1000 | workers"
        " | VmRSS MiB per worker | PSS MiB idle | PSS MiB loaded |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in scenarios:
        runs = results[scenario.name]

        def median(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return float(statistics.median(run[key] for run in runs))

        bound = f"{scenario.bound:,.0f}" if scenario.bound else "-"
        of_bound = f"{median('of_bound'):.1%}" if scenario.bound else "-"
        connector = (
            " | - | - | - | - | - | -"  # the API alone: no connector to measure
            if scenario.mode == API_ALONE
            else f" | {median('cpu_us_per_req'):.1f} | {median('new_api_conns_per_1000'):.2f}"
            f" | {runs[0]['workers']} | {median('VmRSS'):.0f} | {median('PSS_idle'):.0f}"
            f" | {median('PSS_total'):.0f}"
        )
        lines.append(
            f"| {scenario.name} | {bound} | {median('req_per_s'):,.0f} | {of_bound}"
            f" | {median('p50_ms'):.2f} | {median('p99_ms'):.2f} | {median('p999_ms'):.2f}"
            f" | {median('max_ms'):.1f} | {max(run['errors'] for run in runs)}"
            f" | {max(run.get('reconnects', 0) for run in runs)}{connector} |"
        )
    return "\n".join(lines)


def ratios(results: dict[str, list[dict[str, Any]]], scenarios: list[Scenario]) -> str:
    """This checkout against the peer, from the medians of runs made in turn, in one run."""
    lines = [
        "| scenario | req/s: this / peer | CPU us/req: this / peer | p99: this / peer"
        " | PSS loaded: this / peer | PSS idle: this / peer |",
        "|---|---|---|---|---|---|",
    ]
    for scenario in scenarios:

        def ratio(key: str, name: str = scenario.name) -> str:
            this = statistics.median(run[key] for run in results[name])
            peer = statistics.median(run[key] for run in results[f"peer {name}"])
            return f"{this / peer:.2f}"

        lines.append(
            f"| {scenario.name} | {ratio('req_per_s')} | {ratio('cpu_us_per_req')}"
            f" | {ratio('p99_ms')} | {ratio('PSS_total')} | {ratio('PSS_idle')} |"
        )
    return "\n".join(lines)


def oauth2_ratios(results: dict[str, list[dict[str, Any]]], scenarios: list[Scenario]) -> str:
    """Each OAuth2 scenario's median CPU per request against its plain twin's."""
    lines = ["| scenario | CPU us/req: oauth2 / plain |", "|---|---|"]
    for scenario in scenarios:
        if scenario.oauth2:
            plain = replace(scenario, oauth2=False).name

            def cpu(name: str) -> float:
                return float(statistics.median(run["cpu_us_per_req"] for run in results[name]))

            ratio = cpu(scenario.name) / cpu(plain)
            lines.append(f"| {scenario.name} | {ratio:.3f} |")
    return "\n".join(lines)


def _arguments() -> tuple[argparse.Namespace, Launcher | None]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loadgen", type=Path, required=True)
    parser.add_argument("--scenarios", choices=sorted(SCENARIO_SETS), default="all")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument(
        "--workers", type=int, help="the connector's workers (default: its own, one per CPU)"
    )
    peers = parser.add_mutually_exclusive_group()
    peers.add_argument(
        "--peer-src",
        type=Path,
        help="another checkout's src directory: each scenario also runs it, interleaved with this"
        " one, and a table of ratios follows (e.g. a git worktree of an earlier commit)",
    )
    peers.add_argument(
        "--peer-cmd",
        metavar="'COMMAND {config}'",
        help="any connector that reads the predecessors' config format, started by this command"
        " ({config} is the file; leading NAME=VALUE words set its environment), run and compared"
        " in the same way",
    )
    args = parser.parse_args()
    if args.peer_src is not None:
        return args, Launcher.ours(args.peer_src.resolve())
    if args.peer_cmd is not None:
        return args, Launcher.from_template(args.peer_cmd)
    return args, None


def _rounds(
    args: argparse.Namespace,
    scenarios: list[Scenario],
    launchers: list[tuple[str, Launcher]],
    tmp: Path,
    api_port: int,
) -> dict[str, list[dict[str, Any]]]:
    """Every round runs every scenario, each connector in turn (the peer first), so that the
    machine's drift falls on both alike."""
    results: dict[str, list[dict[str, Any]]] = {s.name: [] for s in scenarios}
    for prefix, _ in launchers[:-1]:
        results.update({f"{prefix}{s.name}": [] for s in scenarios if s.mode != API_ALONE})
    timing = {"warmup": args.warmup, "duration": args.duration}
    for run in range(args.runs):
        for scenario in scenarios:
            if scenario.mode == API_ALONE:
                result = measure_api_alone(args.loadgen, scenario, api_port=api_port, **timing)
                results[scenario.name].append(result)
                print(f"run {run + 1} {scenario.name}: {json.dumps(result)}", flush=True)
                continue
            for prefix, launcher in launchers:
                result = measure(
                    args.loadgen,
                    tmp,
                    scenario,
                    api_port=api_port,
                    workers=args.workers,
                    launcher=launcher,
                    **timing,
                )
                results[prefix + scenario.name].append(result)
                print(f"run {run + 1} {prefix}{scenario.name}: {json.dumps(result)}", flush=True)
    return results


def main() -> int:
    args, peer = _arguments()
    scenarios = SCENARIO_SETS[args.scenarios]
    launchers = [("", Launcher.ours())]
    if peer is not None:
        launchers.insert(0, ("peer ", peer))
    with tempfile.TemporaryDirectory(prefix="bench") as directory:
        tmp = Path(directory)
        nginx, api_port = start_nginx(tmp)
        try:
            build = subprocess.run(
                [sys.executable, "-m", "postfix_rest_api_connector", "--version"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            print("connector:", build, flush=True)
            capacity = loadgen_capacity(args.loadgen, args.duration)
            print("load generator against a stub:", json.dumps(capacity), flush=True)
            results = _rounds(args, scenarios, launchers, tmp, api_port)
        finally:
            nginx.terminate()
            nginx.wait()
    document: dict[str, Any] = {"connector": build, "loadgen": capacity, "results": results}
    report = [table(results, scenarios)]
    if any(scenario.oauth2 for scenario in scenarios):
        report.append(oauth2_ratios(results, scenarios))
    if peer is not None:
        document["peer"] = " ".join(peer.argv)
        connector_scenarios = [s for s in scenarios if s.mode != API_ALONE]
        report += [
            f"peer: {document['peer']}",
            table(results, [replace(s, peer=True) for s in connector_scenarios]),
            ratios(results, connector_scenarios),
        ]
    document["report"] = "\n\n".join(report)
    args.results.write_text(json.dumps(document, indent=1))
    print()
    print(document["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
