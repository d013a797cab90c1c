"""The admin listener: real scrapes of ``/metrics``, ``/healthz`` and ``/readyz`` over loopback."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from conftest import FakeApi, endpoint_address, endpoint_config, running_connector, send_and_read
from postfix_rest_api_connector.config import ConfigError, parse_config
from postfix_rest_api_connector.runtime.daemon import Daemon, StartupError

METRICS = {"bind-address": "127.0.0.1", "bind-port": 0}
PREFIX = "postfix_rest_api_connector_"


async def fetch(daemon: Daemon, path: str) -> tuple[int, str]:
    assert daemon.admin is not None
    host, port = daemon.admin.addresses[0]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{host}:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def scrape(daemon: Daemon) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics`` by name and labels, parsed by prometheus-client's parser."""
    status, text = await fetch(daemon, "/metrics")
    assert status == 200
    return {
        (sample.name.removeprefix(PREFIX), frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


async def get(daemon: Daemon, key: str) -> bytes:
    """One tcp_table request on its own connection: the reply line."""
    reader, writer = await asyncio.open_connection(*endpoint_address(daemon))
    try:
        writer.write(f"get {key}\n".encode())
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def test_requests_api_answers_and_latency_are_counted(api: FakeApi) -> None:
    async def by_key(request: web.Request) -> web.StreamResponse:
        key = request.query["key"]
        if key == "found":
            return web.json_response(["v"])
        if key == "broken":
            return web.json_response({"error": "x"}, status=503)
        return web.json_response([], status=404)

    api.handler = by_key
    endpoint = endpoint_config("tcp-lookup", api.url, **{"cache-ttl": 60_000, "retries": 0})
    async with running_connector(endpoint, metrics=METRICS) as daemon:
        assert await get(daemon, "found") == b"200 v\n"
        assert await get(daemon, "found") == b"200 v\n"  # a cache hit: no API call
        assert (await get(daemon, "missing")).startswith(b"500 ")
        assert (await get(daemon, "broken")).startswith(b"400 ")
        samples = await scrape(daemon)
    name = "test-tcp-lookup"
    by_outcome = {
        outcome: samples[
            ("requests_total", labels(endpoint=name, mode="tcp-lookup", outcome=outcome))
        ]
        for outcome in ("found", "not_found", "temporary", "permanent", "timeout")
    }
    assert by_outcome == {"found": 2, "not_found": 1, "temporary": 1, "permanent": 0, "timeout": 0}
    assert samples[("api_responses_total", labels(endpoint=name, status="200"))] == 1
    assert samples[("api_responses_total", labels(endpoint=name, status="404"))] == 1
    assert samples[("api_responses_total", labels(endpoint=name, status="503"))] == 1
    assert samples[("api_request_duration_seconds_count", labels(endpoint=name))] == 3
    assert samples[("api_request_duration_seconds_bucket", labels(endpoint=name, le="+Inf"))] == 3
    assert 0 < samples[("api_request_duration_seconds_sum", labels(endpoint=name))] < 3
    assert samples[("cache_hits_total", labels(endpoint=name))] == 1
    assert samples[("cache_misses_total", labels(endpoint=name))] == 3
    assert samples[("cache_entries", labels(endpoint=name))] == 1
    assert samples[("api_calls_total", labels(endpoint=name))] == 3
    assert samples[("breaker_state", labels(endpoint=name, state="closed"))] == 1
    assert samples[("connections_open", labels(endpoint=name))] == 0
    assert samples[("config_reloads_total", labels(result="ok"))] == 0
    assert ("process_resident_memory_bytes", frozenset()) in {
        (n.removeprefix(PREFIX), lbl) for n, lbl in samples
    }
    assert not [key for key in samples if key[0].startswith("worker_")]  # one process: as ever


async def test_open_connections_and_requests_in_flight_are_gauges(api: FakeApi) -> None:
    stalled = api.stall(["late"])
    endpoint = endpoint_config("tcp-lookup", api.url, **{"request-timeout": 10_000})
    async with running_connector(endpoint, metrics=METRICS) as daemon:
        reader, writer = await asyncio.open_connection(*endpoint_address(daemon))
        writer.write(b"get k\n")
        await asyncio.wait_for(stalled.received.wait(), 10)
        samples = await scrape(daemon)
        stalled.release.set()
        assert await asyncio.wait_for(reader.readline(), 10) == b"200 late\n"
        writer.close()
        after = await scrape(daemon)
    name = labels(endpoint="test-tcp-lookup")
    assert samples[("connections_open", name)] == 1
    assert samples[("requests_in_flight", name)] == 1
    assert after[("requests_in_flight", name)] == 0
    # the request's task (and its API call's) are gone with it
    assert samples[("event_loop_tasks", labels())] > after[("event_loop_tasks", labels())] > 0


async def test_breaker_state_and_errors_by_kind(api: FakeApi) -> None:
    api.answer_json([], status=500)
    endpoint = endpoint_config("socketmap-lookup", api.url, **{"breaker-failures": 1, "retries": 0})
    async with running_connector(endpoint, metrics=METRICS) as daemon:
        address = endpoint_address(daemon)
        for expected in (b"TEMP API answered HTTP 500", b"TEMP API circuit breaker open"):
            wire = b"%d:%s," % (len(expected), expected)
            assert await send_and_read(address, b"6:m key1,", len(wire)) == wire
        samples = await scrape(daemon)
    name = "test-socketmap-lookup"
    assert samples[("breaker_state", labels(endpoint=name, state="open"))] == 1
    assert samples[("breaker_state", labels(endpoint=name, state="closed"))] == 0
    assert samples[("breaker_rejections_total", labels(endpoint=name))] == 1
    assert samples[("api_calls_total", labels(endpoint=name))] == 1


async def test_api_errors_are_counted_by_kind_without_a_status(api: FakeApi) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    endpoint = endpoint_config("tcp-lookup", dead_url, retries=0)
    async with running_connector(endpoint, metrics=METRICS) as daemon:
        assert (await get(daemon, "k")).startswith(b"400 ")
        samples = await scrape(daemon)
    name = "test-tcp-lookup"
    assert samples[("api_errors_total", labels(endpoint=name, kind="transport"))] == 1
    assert not [key for key in samples if key[0] == "api_responses_total"]


async def test_policy_outcomes_and_no_secret_in_metrics(api: FakeApi) -> None:
    api.answer_text("action=REJECT no")
    endpoint = endpoint_config("policy", api.url)
    async with running_connector(endpoint, metrics=METRICS) as daemon:
        expected = b"action=REJECT no\n\n"
        request = b"request=smtpd_access_policy\n\n"
        assert await send_and_read(endpoint_address(daemon), request, len(expected)) == expected
        status, text = await fetch(daemon, "/metrics")
    assert status == 200
    assert 'outcome="found"} 1.0' in text
    assert "s3cret-token" not in text


async def test_health_and_readiness(api: FakeApi) -> None:
    endpoints = [
        endpoint_config("tcp-lookup", api.url),
        endpoint_config("policy", api.url),
    ]
    async with running_connector(*endpoints, metrics=METRICS) as daemon:
        assert await fetch(daemon, "/healthz") == (200, "ok\n")
        assert await fetch(daemon, "/readyz") == (200, "ready\n")
        daemon.endpoints[1].stop_accepting()
        assert await fetch(daemon, "/healthz") == (200, "ok\n")
        assert await fetch(daemon, "/readyz") == (503, "not ready: not listening: test-policy\n")
        status, _ = await fetch(daemon, "/nothing-here")
        assert status == 404


async def test_metrics_port_taken_fails_start_naming_the_key(api: FakeApi) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = Daemon(
            parse_config(
                {
                    "endpoints": [endpoint_config("tcp-lookup", api.url)],
                    "metrics": {"bind-port": port},
                }
            )
        )
        with pytest.raises(StartupError, match=rf"^metrics: cannot listen on 127\.0\.0\.1:{port}"):
            await daemon.start()
    assert not daemon.endpoints[0].is_serving


@pytest.mark.parametrize(
    ("metrics", "problem"),
    [
        ({"bind-port": 70000}, "metrics.bind-port: Input should be less than or equal to 65535"),
        ({"port": 9000}, "metrics.port: unknown key"),
        ({}, "metrics.bind-port: Field required"),
        ({"bind-address": "nowhere!", "bind-port": 1}, "metrics.bind-address: "),
        ({"bind-port": 10025}, "endpoints[0].bind-port: 127.0.0.1:10025 is the metrics listener's"),
    ],
)
def test_metrics_config_problems_name_their_key(metrics: dict[str, Any], problem: str) -> None:
    endpoint = endpoint_config("tcp-lookup", "http://127.0.0.1/", **{"bind-port": 10025})
    with pytest.raises(ConfigError) as raised:
        parse_config({"endpoints": [endpoint], "metrics": metrics})
    assert any(line.startswith(problem) for line in raised.value.problems), raised.value.problems


@pytest.mark.parametrize("metrics_port", [10024, 10026, 65535])
def test_workers_share_one_metrics_port(metrics_port: int) -> None:
    """Every worker listens on metrics.bind-port itself: the ports beside it are free to use."""
    endpoint = endpoint_config("tcp-lookup", "http://127.0.0.1/", **{"bind-port": 10025})
    document = {"workers": 4, "endpoints": [endpoint], "metrics": {"bind-port": metrics_port}}
    assert parse_config(document).metrics is not None
