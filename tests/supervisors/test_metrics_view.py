"""One metrics view of several workers: every worker listens on the one ``metrics`` port, and
the one that gets a scrape asks the others over their private sockets. Real processes, real
scrapes over loopback (fresh connections, so the kernel picks the worker), parsed by
prometheus-client's parser."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from test_workers import start, two_workers, worker_pids

from conftest import DEADLINE, Connector, FakeApi, Spawn, endpoint_config, write_config
from ports import reserved_ports
from postfix_rest_api_connector import __version__
from postfix_rest_api_connector.admin.view import PEER_DEADLINE

PREFIX = "postfix_rest_api_connector_"
ADMIN_LISTENING = re.compile(r"metrics, healthz and readyz on http://127\.0\.0\.1:(\d+)")
RELOADED_WITH_METRICS = re.compile(r"on http://127\.0\.0\.1:\d+|reloaded: ")
ENDPOINT = "test-tcp-lookup"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


async def http_get(port: int, path: str) -> tuple[int, str]:
    """One request on a new connection (so the kernel chooses the worker anew)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


def parse(text: str) -> Samples:
    return {
        (sample.name.removeprefix(PREFIX), frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(port: int) -> Samples:
    status, text = await asyncio.wait_for(http_get(port, "/metrics"), DEADLINE)
    assert status == 200, text
    return parse(text)


async def admin_listening(connector: Connector, port: int, workers: int = 2) -> None:
    """Until ``workers`` workers said their admin listener is up, all on ``port``."""
    for _ in range(workers):
        assert int((await connector.expect(ADMIN_LISTENING))[1]) == port


async def lookups(port: int, keys: list[str]) -> list[bytes]:
    """``keys`` asked one after the other on one connection: the reply lines."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        replies = []
        for key in keys:
            writer.write(f"get {key}\n".encode())
            replies.append(await asyncio.wait_for(reader.readline(), DEADLINE))
        return replies
    finally:
        writer.close()


async def send_requests(port: int, connections: int, per_connection: int) -> None:
    """Distinct keys (one API call each) over many connections, so both workers get some."""
    replies = await asyncio.gather(
        *(lookups(port, [f"k{c}-{r}" for r in range(per_connection)]) for c in range(connections))
    )
    assert {reply for batch in replies for reply in batch} == {b"200 v\n"}


def assert_sums(samples: Samples, total: int, api: FakeApi) -> None:
    """``samples`` show exactly ``total`` replies, served by both workers, and as many API calls
    (histogram counts and status counters summed) as the API saw."""
    found = labels(endpoint=ENDPOINT, mode="tcp-lookup", outcome="found")
    assert samples[("requests_total", found)] == total
    per_worker = [samples[("worker_requests_total", labels(worker=w))] for w in "01"]
    assert all(count > 0 for count in per_worker), per_worker
    assert sum(per_worker) == total
    assert len(api.seen) == total
    endpoint = labels(endpoint=ENDPOINT)
    assert samples[("api_request_duration_seconds_count", endpoint)] == total
    inf = labels(endpoint=ENDPOINT, le="+Inf")
    assert samples[("api_request_duration_seconds_bucket", inf)] == total
    assert samples[("api_responses_total", labels(endpoint=ENDPOINT, status="200"))] == total
    assert samples[("api_calls_total", endpoint)] == total
    assert samples[("worker_up", labels(worker="0"))] == 1
    assert samples[("worker_up", labels(worker="1"))] == 1


async def test_one_scrape_sums_the_requests_of_every_worker(
    api: FakeApi, tmp_path: Path, spawn: Spawn
) -> None:
    api.answer_json(["v"])
    with reserved_ports(2) as (port, metrics_port):
        config = two_workers(tmp_path, api, port, metrics={"bind-port": metrics_port})
        connector = await start(spawn, config)
        await admin_listening(connector, metrics_port)
        await send_requests(port, connections=40, per_connection=3)
        samples = await scrape(metrics_port)
        assert_sums(samples, 120, api)
        for worker in "01":  # one process's figures are shown per worker, never summed
            assert samples[("process_resident_memory_bytes", labels(worker=worker))] > 0
            assert ("config_reloads_total", labels(worker=worker, result="ok")) in samples
        assert ("process_resident_memory_bytes", frozenset()) not in samples
        assert samples[("build_info", labels(version=__version__))] == 1
        assert samples[("breaker_state", labels(endpoint=ENDPOINT, state="closed"))] == 2
        for _ in range(6):  # whichever worker the kernel picks shows the same figures
            assert_sums(await scrape(metrics_port), 120, api)
        connector.process.send_signal(signal.SIGTERM)
        assert await connector.finish() == 0
    assert "does not answer its peers" not in connector.stderr


async def process_exit(pid: int) -> None:
    """Until process ``pid`` (not our child) has exited and its sockets are closed."""
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    descriptor = os.pidfd_open(pid)
    loop.add_reader(descriptor, exited.set)
    try:
        await asyncio.wait_for(exited.wait(), DEADLINE)
    finally:
        loop.remove_reader(descriptor)
        os.close(descriptor)


async def test_readyz_names_a_worker_that_is_down_until_it_is_back(
    api: FakeApi, tmp_path: Path, spawn: Spawn
) -> None:
    """The supervisor is held (SIGSTOP) so that it cannot restart the killed worker before the
    scrapes; once it goes on, the restarted worker makes the service ready again."""
    api.answer_json(["v"])
    with reserved_ports(2) as (port, metrics_port):
        config = two_workers(tmp_path, api, port, metrics={"bind-port": metrics_port})
        connector = await start(spawn, config)
        await admin_listening(connector, metrics_port)
        assert await http_get(metrics_port, "/readyz") == (200, "ready\n")
        await send_requests(port, connections=20, per_connection=2)
        supervisor = connector.process.pid
        victim = worker_pids(supervisor)[0]
        os.kill(supervisor, signal.SIGSTOP)
        try:
            os.kill(victim, signal.SIGKILL)
            await process_exit(victim)
            status, text = await asyncio.wait_for(http_get(metrics_port, "/readyz"), DEADLINE)
            assert status == 503
            refused = r"not ready: worker (\d): not answering \(Connection refused\)\n"
            down = re.fullmatch(refused, text)
            assert down, text
            dead, alive = down[1], "1" if down[1] == "0" else "0"
            samples = await scrape(metrics_port)  # the dead worker's figures: a labelled gap
            assert samples[("worker_up", labels(worker=dead))] == 0
            assert samples[("worker_up", labels(worker=alive))] == 1
            assert ("worker_requests_total", labels(worker=dead)) not in samples
            alive_requests = samples[("worker_requests_total", labels(worker=alive))]
            found = labels(endpoint=ENDPOINT, mode="tcp-lookup", outcome="found")
            assert samples[("requests_total", found)] == alive_requests < 40
        finally:
            os.kill(supervisor, signal.SIGCONT)
        await connector.expect(re.compile(rf"worker {dead} \(pid {victim}\) exited with status -9"))
        await admin_listening(connector, metrics_port, workers=1)
        assert await http_get(metrics_port, "/readyz") == (200, "ready\n")
        samples = await scrape(metrics_port)
        assert samples[("worker_up", labels(worker=dead))] == 1
        assert samples[("worker_requests_total", labels(worker=dead))] == 0  # a new process
        connector.process.send_signal(signal.SIGTERM)
        assert await connector.finish() == 0


async def from_a_running_worker(port: int, path: str) -> tuple[float, int, str]:
    """``path`` asked over 16 connections at once, while one worker is stopped: those the
    kernel gives it wait, so the first answer comes from the other. Seconds it took, status,
    body."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    attempts = [asyncio.create_task(http_get(port, path)) for _ in range(16)]
    try:
        done, _ = await asyncio.wait(attempts, timeout=DEADLINE, return_when="FIRST_COMPLETED")
        took = loop.time() - began
        assert done, "every connection went to the stopped worker"
        status, text = done.pop().result()
        return took, status, text
    finally:
        for attempt in attempts:
            attempt.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)


async def test_a_hung_peer_holds_a_scrape_only_until_the_deadline(
    api: FakeApi, tmp_path: Path, spawn: Spawn
) -> None:
    """A stopped worker (SIGSTOP) accepts its peers' connections but never answers."""
    api.answer_json(["v"])
    with reserved_ports(2) as (port, metrics_port):
        config = two_workers(tmp_path, api, port, metrics={"bind-port": metrics_port})
        connector = await start(spawn, config)
        await admin_listening(connector, metrics_port)
        stopped = worker_pids(connector.process.pid)[0]
        os.kill(stopped, signal.SIGSTOP)
        try:
            took, status, text = await from_a_running_worker(metrics_port, "/readyz")
            assert PEER_DEADLINE <= took < PEER_DEADLINE + 1.5, took
            assert status == 503
            late = rf"not ready: worker (\d): no answer within {PEER_DEADLINE:g} s\n"
            hung = re.fullmatch(late, text)
            assert hung, text
            took, status, text = await from_a_running_worker(metrics_port, "/metrics")
            assert PEER_DEADLINE <= took < PEER_DEADLINE + 1.5, took
            assert status == 200
            assert parse(text)[("worker_up", labels(worker=hung[1]))] == 0
        finally:
            os.kill(stopped, signal.SIGCONT)
        assert await asyncio.wait_for(http_get(metrics_port, "/readyz"), DEADLINE) == (
            200,
            "ready\n",
        )
        connector.process.send_signal(signal.SIGTERM)
        assert await connector.finish() == 0
    assert f"worker {hung[1]} does not answer its peers: no answer within" in connector.stderr


async def test_metrics_turned_on_by_a_reload_show_every_worker(
    api: FakeApi, tmp_path: Path, spawn: Spawn
) -> None:
    """The peers' sockets come with the first metrics listener, whenever that starts."""
    api.answer_json(["v"])
    with reserved_ports(2) as (port, metrics_port):
        config = two_workers(tmp_path, api, port)
        connector = await start(spawn, config)
        for _ in range(2):
            await connector.expect(re.compile(r"listening on 127"))
        await send_requests(port, connections=30, per_connection=2)
        document = {
            "workers": 2,
            "endpoints": [endpoint_config("tcp-lookup", api.url, **{"bind-port": port})],
            "metrics": {"bind-port": metrics_port},
        }
        write_config(tmp_path, document)
        connector.process.send_signal(signal.SIGHUP)
        seen = [(await connector.expect(RELOADED_WITH_METRICS))[0] for _ in range(4)]
        assert sorted(seen) == [*[f"on http://127.0.0.1:{metrics_port}"] * 2, *["reloaded: "] * 2]
        samples = await scrape(metrics_port)
        assert_sums(samples, 60, api)
        for worker in "01":
            assert samples[("config_reloads_total", labels(worker=worker, result="ok"))] == 1
        connector.process.send_signal(signal.SIGTERM)
        assert await connector.finish() == 0
