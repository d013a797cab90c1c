"""The Grafana dashboard and the Prometheus alerts in ``packaging/``, against a real Prometheus.

Debian's ``promtool`` checks the rules. Then a Prometheus (Debian's ``prometheus``, on a free
loopback port, its config and data in tmp_path) scrapes two live connectors and a port where
nothing listens, while the test sends traffic that makes every alert condition true: replies that
defer mail (an API that refuses connections), an open circuit breaker, a rejected reload, API
answers close to the timeout (an API that takes 1.8 s), a target that is down. Driving each
condition, rather than only evaluating the selectors an expression is built from, is what shows
that the expression as written (its labels, its thresholds, its arithmetic) can fire: an alert
that is empty when healthy and also empty when broken is what this must catch. Every panel query
is evaluated too, with the dashboard's variables filled in, and must return series that sum over
the scrape targets (no ``instance`` label), so it holds whether each worker is a target of its own
or one port serves the whole service. Prometheus has no event for "scraped", so the test asks its
HTTP API again every quarter second until the answers are there, within a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conftest import (
    DEADLINE,
    LISTENING,
    Connector,
    FakeApi,
    Spawn,
    endpoint_config,
    netstring,
    running_connector,
    tcp_get,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "packaging" / "grafana" / "postfix-rest-api-connector.json"
ALERTS = ROOT / "packaging" / "prometheus" / "alerts.yml"
PREFIX = "postfix_rest_api_connector_"
JOB = "postfix-rest-api-connector"
"""The scrape job the alert rules expect (alerts.yml says so)."""
SCRAPED_DEADLINE = 40.0
"""Prometheus scrapes and evaluates every second here; the slow API takes 1.8 s."""
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's prometheus (scripts/test.sh does)")
    return path


def test_alert_rules_pass_promtool() -> None:
    result = subprocess.run(
        [_tool("promtool"), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def test_dashboard_is_a_grafana_dashboard() -> None:
    """What Grafana's import needs, and a data source chosen at import, never a fixed one."""
    document = dashboard()
    assert document["uid"] == "postfix-rest-api-connector"
    assert isinstance(document["schemaVersion"], int)
    variables = {variable["name"]: variable for variable in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in document["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the dashboard"
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"{panel['title']} has no query"
        references = [target["refId"] for target in panel["targets"]]
        assert len(references) == len(set(references)), f"{panel['title']}: refIds repeat"


def substitute(expr: str, values: dict[str, str]) -> str:
    """The query Grafana would send: ``$name`` and ``${name}`` replaced by their values."""

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in values:
            pytest.fail(f"{expr!r} uses ${name}, which the test has no value for")
        return values[name]

    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", value, expr)


def variable_values() -> dict[str, str]:
    """Each dashboard variable as the test sets it: All for a multi-value one, the default for a
    text box, this test's job for the job."""
    values = dict(BUILTIN_VARIABLES)
    for variable in dashboard()["templating"]["list"]:
        name = variable["name"]
        if variable["type"] == "datasource":
            continue
        if variable.get("includeAll"):
            values[name] = variable["allValue"]
        elif variable["type"] in {"textbox", "custom", "constant"}:
            values[name] = variable["current"]["value"]
        elif name == "job":
            values[name] = JOB
        else:
            pytest.fail(f"the test has no value for the dashboard variable ${name}")
    return values


async def test_the_dashboard_shows_every_metric_the_connector_exports(api: FakeApi) -> None:
    """A metric added to the connector without a panel fails here (``process_*`` excepted)."""
    endpoint = endpoint_config("tcp-lookup", api.url, **{"cache-ttl": 1000})
    async with running_connector(endpoint, metrics={"bind-port": 0}) as daemon:
        assert daemon.admin is not None
        host, port = daemon.admin.addresses[0]
        async with aiohttp.ClientSession() as session:
            response = await session.get(f"http://{host}:{port}/metrics")
            text = await response.text()
    families = set(re.findall(rf"^# TYPE ({PREFIX}\w+) ", text, re.MULTILINE))
    assert len(families) > 10, text
    queries = " ".join(expr for _, expr in panel_queries())
    unshown = sorted(
        family for family in families if not re.search(rf"\b{family}(?:_bucket)?\b", queries)
    )
    assert not unshown, f"metrics no panel shows: {unshown}"


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening, held for the test: a connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def slow_or_quick(request: web.Request) -> web.StreamResponse:
    """The API: /slow answers after 1.8 s, /policy with an action, anything else at once."""
    if request.path == "/slow":
        await asyncio.sleep(1.8)
    if request.path == "/policy":
        return web.Response(text="action=DUNNO")
    return web.json_response(["a"])


def connector_config(api: FakeApi, refused: int) -> dict[str, Any]:
    """Four endpoints, each to drive one part of the dashboard and the alerts."""
    return {
        "workers": 1,
        "metrics": {"bind-port": 0},
        "endpoints": [
            endpoint_config(
                "tcp-lookup", f"{api.url}/quick", name="lookups", **{"cache-ttl": 60000}
            ),
            endpoint_config(
                "tcp-lookup",
                f"http://127.0.0.1:{refused}/",
                name="failing",
                retries=0,
                **{"breaker-failures": 1, "breaker-cooldown": 3_600_000},
            ),
            endpoint_config(
                "socketmap-lookup", f"{api.url}/slow", name="slow", **{"request-timeout": 5000}
            ),
            endpoint_config("policy", f"{api.url}/policy", name="policy"),
        ],
    }


METRICS_LISTENING = re.compile(
    r"metrics, healthz and readyz on http://127\.0\.0\.1:(?P<metrics>\d+)"
)


async def start_connector(spawn: Spawn, config: Path) -> tuple[Connector, dict[str, int], int]:
    """The daemon, its endpoint ports by name and its metrics port, from its log lines."""
    connector = await spawn(str(config))
    either = re.compile(f"{LISTENING.pattern}|{METRICS_LISTENING.pattern}")
    ports: dict[str, int] = {}
    metrics = 0
    while len(ports) < 4 or not metrics:
        line = await connector.expect(either)
        if line["name"]:
            ports[line["name"]] = int(line["port"])
        else:
            metrics = int(line["metrics"])
    return connector, ports, metrics


@asynccontextmanager
async def prometheus(tmp_path: Path, targets: list[str]) -> AsyncIterator[str]:
    """Prometheus scraping ``targets`` as job ``JOB`` every second, with the alert rules loaded;
    yields its base URL. Its output is shown if it does not become ready."""
    binary = _tool("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
            }
        )
    )
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        lines: list[str] = []
        settled = asyncio.Event()
        drain = asyncio.create_task(_drain(process, lines, settled))
        try:
            await asyncio.wait_for(settled.wait(), DEADLINE)
            if any(READY in line for line in lines):
                yield f"http://127.0.0.1:{port}"
                return
            if not any("address already in use" in line for line in lines):
                pytest.fail("prometheus exited:\n" + "\n".join(lines[-30:]))
        except TimeoutError:
            pytest.fail("prometheus not ready within the deadline:\n" + "\n".join(lines[-30:]))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            await drain
    pytest.fail("prometheus found no free port in three tries")


READY = "Server is ready to receive web requests"


async def _drain(
    process: asyncio.subprocess.Process, lines: list[str], settled: asyncio.Event
) -> None:
    """Read Prometheus's log to its end (a full pipe would stall it); ``settled`` once it is
    ready or has exited."""
    assert process.stderr is not None
    async for raw in process.stderr:
        line = raw.decode("utf-8", "replace").rstrip()
        lines.append(line)
        if READY in line:
            settled.set()
    settled.set()


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> list[dict[str, Any]]:
    """An instant query; a query Prometheus cannot parse or run fails the test at once."""
    async with session.get(f"{base}/api/v1/query", params={"query": promql}) as response:
        body = await response.json()
    if body.get("status") != "success":
        pytest.fail(f"Prometheus rejected {promql!r}: {body.get('errorType')}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def until(check: Callable[[], Awaitable[list[str]]]) -> list[str]:
    """Ask ``check`` again until it finds no problem or the deadline passes; its last problems."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SCRAPED_DEADLINE
    while True:
        problems = await check()
        if not problems or loop.time() >= deadline:
            return problems
        await asyncio.sleep(0.25)


def alert_names() -> set[str]:
    """The ``alert:`` names in alerts.yml (Prometheus's /api/v1/rules gives the rest)."""
    return set(re.findall(r"^\s*- alert: (\S+)$", ALERTS.read_text(encoding="utf-8"), re.MULTILINE))


async def drive_traffic(ports: dict[str, int]) -> None:
    """Cache misses and a hit, refused API calls that open the breaker, slow socketmap
    lookups in parallel, one policy request."""
    assert await tcp_get(ports["lookups"], "k1") == b"200 a\n"
    assert await tcp_get(ports["lookups"], "k1") == b"200 a\n"
    assert await tcp_get(ports["lookups"], "k2") == b"200 a\n"
    for _ in range(3):
        assert (await tcp_get(ports["failing"], "x")).startswith(b"400 ")

    async def socketmap(key: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports["slow"])
        try:
            writer.write(netstring(f"maps {key}"))
            return await asyncio.wait_for(reader.readexactly(len(netstring("OK a"))), DEADLINE)
        finally:
            writer.close()

    answers = await asyncio.gather(*(socketmap(f"k{i}") for i in range(3)))
    assert answers == [netstring("OK a")] * 3
    reader, writer = await asyncio.open_connection("127.0.0.1", ports["policy"])
    try:
        writer.write(b"request=smtpd_access_policy\nrecipient=a@example.com\n\n")
        assert await asyncio.wait_for(reader.readuntil(b"\n\n"), DEADLINE) == b"action=DUNNO\n\n"
    finally:
        writer.close()


async def test_every_panel_query_and_alert_expression_on_a_live_connector(
    api: FakeApi, spawn: Spawn, tmp_path: Path
) -> None:
    api.handler = slow_or_quick
    with closed_port() as refused:
        busy_dir, idle_dir = tmp_path / "busy", tmp_path / "idle"
        busy_dir.mkdir()
        idle_dir.mkdir()
        busy_config = write_config(busy_dir, connector_config(api, refused))
        idle_config = write_config(idle_dir, connector_config(api, refused))
        (busy, ports, busy_metrics), (_, _, idle_metrics) = await asyncio.gather(
            start_connector(spawn, busy_config), start_connector(spawn, idle_config)
        )
        targets = [f"127.0.0.1:{port}" for port in (busy_metrics, idle_metrics, refused)]
        async with prometheus(tmp_path, targets) as base, aiohttp.ClientSession() as session:

            async def scraped() -> list[str]:
                up = await query(session, base, f'up{{job="{JOB}"}} == 1')
                return [] if len(up) == 2 else [f"connectors scraped: {len(up)} of 2"]

            assert not await until(scraped), "Prometheus never scraped both connectors"
            await drive_traffic(ports)
            busy_config.write_text("{ not json")
            busy.process.send_signal(signal.SIGHUP)
            await busy.expect(re.compile(r"reload: config invalid"))

            rules: list[dict[str, Any]] = []

            async def evaluated() -> list[str]:
                """Every rule of alerts.yml loaded, and evaluated without an error."""
                async with session.get(f"{base}/api/v1/rules") as response:
                    groups = (await response.json())["data"]["groups"]
                rules[:] = [rule for group in groups for rule in group["rules"]]
                if {rule["name"] for rule in rules} != alert_names():
                    return [f"Prometheus loaded {sorted(rule['name'] for rule in rules)}"]
                return [
                    f"{rule['name']}: health {rule['health']} {rule.get('lastError', '')}"
                    for rule in rules
                    if rule["health"] != "ok"
                ]

            left = await until(evaluated)
            assert not left, "\n".join(left)
            values = variable_values()

            async def problems() -> list[str]:
                found = [
                    f"alert {rule['name']}: its condition does not hold: {rule['query']}"
                    for rule in rules
                    if not await query(session, base, rule["query"])
                ]
                for title, expr in panel_queries():
                    series = await query(session, base, substitute(expr, values))
                    if not series:
                        found.append(f"panel {title!r}: no series for {expr}")
                    found.extend(
                        f"panel {title!r}: {s['metric']} keeps the instance label"
                        for s in series
                        if "instance" in s["metric"]
                    )
                return found

            left = await until(problems)
            assert not left, "\n".join(left)
