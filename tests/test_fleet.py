"""A fleet on one shared tier: several connector processes, each with two workers, a real
redis-server, a real API. One API call per key across all of them, stale answers for a fresh
instance, invalidation everywhere, and the shared tier failing under load without one wrong or
slow answer."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from conftest import DEADLINE, MODULE, Connector, FakeApi, Spawn, run_to_end, write_config
from ports import reserved_ports
from redis_server import RedisServer, redis_server

PREFIX = "fleet:"
ENDPOINT = "users"
READY_LINE = re.compile(
    r"(endpoint users \(tcp-lookup\) listening on)|(metrics, healthz and readyz on http://)"
)
SHARED_TIMEOUT_MS = 100


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    async with redis_server() as server:
        yield server


@contextmanager
def instance_ports(count: int) -> Iterator[list[tuple[int, int]]]:
    """(lookup port, metrics port) for each instance."""
    with reserved_ports(2 * count) as ports:
        yield [(ports[2 * i], ports[2 * i + 1]) for i in range(count)]


def fleet_config(
    tmp_path: Path,
    name: str,
    api: FakeApi,
    redis: RedisServer,
    ports: tuple[int, int],
    **extra: Any,
) -> Path:
    endpoint = {
        "name": ENDPOINT,
        "mode": "tcp-lookup",
        "target": f"{api.url}/users",
        "bind-address": "127.0.0.1",
        "bind-port": ports[0],
        "request-timeout": 3000,
        "cache-ttl": 60_000,
        "stale-if-error": 600_000,
        **extra,
    }
    directory = tmp_path / name
    directory.mkdir()
    return write_config(
        directory,
        {
            "workers": 2,
            "metrics": {"bind-port": ports[1]},
            "shared-cache": {
                "url": redis.url,
                "key-prefix": PREFIX,
                "timeout": SHARED_TIMEOUT_MS,
            },
            "endpoints": [endpoint],
        },
    )


async def started(spawn: Spawn, config: Path) -> Connector:
    connector = await spawn(str(config), "--log-level", "INFO")
    seen = [0, 0]
    while min(seen) < 2:  # both workers' endpoint and metrics listeners, in any order
        line = await connector.expect(READY_LINE)
        seen[0 if line[1] else 1] += 1
    return connector


async def scrape(port: int) -> dict[str, float]:
    """The whole instance's figures (all workers), by metric name and labels."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return {
        sample.name.removeprefix("postfix_rest_api_connector_")
        + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Polls an outside process's figures (nothing to await), within the deadline."""
    try:
        async with asyncio.timeout(DEADLINE):
            while not await condition():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"never: {what}")


async def lookup(port: int, key: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"get {key}\n".encode())
        return await asyncio.wait_for(reader.readline(), DEADLINE)
    finally:
        writer.close()


@asynccontextmanager
async def fleet(
    spawn: Spawn, tmp_path: Path, api: FakeApi, redis: RedisServer, count: int, **extra: Any
) -> AsyncIterator[list[tuple[Connector, int, int]]]:
    """``count`` instances of two workers each: (process, lookup port, metrics port)."""
    with instance_ports(count) as ports:
        members = []
        for number, pair in enumerate(ports):
            config = fleet_config(tmp_path, f"i{number}", api, redis, pair, **extra)
            members.append((await started(spawn, config), *pair))
        yield members


def api_calls(api: FakeApi, key: str) -> int:
    return sum(1 for seen in api.seen if seen.query.get("key") == key)


async def test_concurrent_misses_of_one_key_on_two_instances_make_one_api_call(
    api: FakeApi, redis: RedisServer, tmp_path: Path, spawn: Spawn
) -> None:
    stalled = api.stall(["alice@example.com"])
    async with fleet(spawn, tmp_path, api, redis, 2) as members:
        asked = [asyncio.ensure_future(lookup(members[n % 2][1], "alice")) for n in range(50)]
        await asyncio.wait_for(stalled.received.wait(), DEADLINE)

        async def all_waiting() -> bool:
            waiting = 0.0
            for _, _, metrics in members:
                figures = await scrape(metrics)
                waiting += figures.get("coalesced_total{endpoint=users}", 0)
                waiting += figures.get("shared_cache_lock_waits_total", 0)
            return waiting >= 49

        await until(all_waiting, "the 49 other lookups wait for the one API call")
        stalled.release.set()
        replies = await asyncio.gather(*asked)

    assert replies == [b"200 alice@example.com\n"] * 50
    assert api_calls(api, "alice") == 1


async def test_a_fresh_instance_answers_from_the_fleet_while_the_api_is_down(
    api: FakeApi, redis: RedisServer, tmp_path: Path, spawn: Spawn
) -> None:
    api.answer_json(["bob@example.com"])
    with instance_ports(2) as ports:
        first = await started(
            spawn, fleet_config(tmp_path, "i0", api, redis, ports[0], **{"cache-ttl": 500})
        )
        assert await lookup(ports[0][0], "bob") == b"200 bob@example.com\n"
        await asyncio.sleep(0.6)  # past the TTL: only stale-if-error may answer now
        api.answer_text("down", status=503)
        second = await started(
            spawn, fleet_config(tmp_path, "i1", api, redis, ports[1], **{"cache-ttl": 500})
        )
        reply = await lookup(ports[1][0], "bob")
        figures = await scrape(ports[1][1])
        missing = await lookup(ports[1][0], "nobody")
        assert first.process.returncode is None
        assert second.process.returncode is None

    assert reply == b"200 bob@example.com\n", "the fleet's last good answer, though stale"
    assert figures["stale_answers_total{endpoint=users}"] == 1
    assert missing.startswith(b"400 "), "a key the fleet never knew stays an error, not a miss"


async def test_purge_and_a_plain_publish_make_every_instance_ask_the_api_again(
    api: FakeApi, redis: RedisServer, tmp_path: Path, spawn: Spawn
) -> None:
    api.answer_json(["carol@example.com"])
    async with fleet(spawn, tmp_path, api, redis, 2) as members:
        config = tmp_path / "i0" / "config.json"

        async def everyone_asks() -> list[bytes]:
            # several connections each, so that both workers of both instances answer
            return await asyncio.gather(
                *(lookup(port, "carol") for _, port, _ in members for _ in range(8))
            )

        async def invalidations_seen(count: int) -> bool:
            # every worker of every instance has dropped it (two workers each)
            figures = [await scrape(metrics) for _, _, metrics in members]
            return all(f.get("shared_cache_invalidations_total", 0) >= count for f in figures)

        first = await everyone_asks()
        calls_before = api_calls(api, "carol")
        status, _, stderr = await run_to_end(*MODULE, "purge", str(config), ENDPOINT, "carol")
        assert status == 0, stderr
        await until(lambda: invalidations_seen(2), "both workers of both instances heard it")
        second = await everyone_asks()
        calls_after_purge = api_calls(api, "carol")
        rkey = f"{PREFIX}{ENDPOINT}::carol"
        assert await redis.cli("EXISTS", rkey) == "1"
        await redis.cli("DEL", rkey)
        await redis.cli("PUBLISH", f"{PREFIX}invalidate", rkey)  # as the web application would
        await until(lambda: invalidations_seen(4), "the plain publish reached everyone")
        await everyone_asks()
        calls_after_publish = api_calls(api, "carol")

    assert set(first) == set(second) == {b"200 carol@example.com\n"}
    assert calls_before == 1
    assert calls_after_purge == 2, "one fetch for the whole fleet after the purge"
    assert calls_after_publish == 3


class SteadyLoad:
    """Lookups of many keys on every instance, each checked: the value must be the key's own,
    and no answer may take longer than the shared tier's timeout plus the API's time."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = ports
        self.answers = 0
        self.wrong: list[tuple[str, bytes]] = []
        self.slowest = 0.0
        self.phase = "warm-up"
        self.slow: list[tuple[str, str, float]] = []
        """(phase, key, seconds) of every answer slower than half a second."""
        self._stop = asyncio.Event()
        self._goal = 0
        self._reached = asyncio.Event()

    async def _client(self, port: int, number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            sequence = 0
            while not self._stop.is_set():
                key = f"u{(number * 7 + sequence) % 40}"
                sequence += 1
                began = time.monotonic()
                writer.write(f"get {key}\n".encode())
                reply = await asyncio.wait_for(reader.readline(), DEADLINE)
                took = time.monotonic() - began
                self.slowest = max(self.slowest, took)
                if took > 0.5:
                    self.slow.append((self.phase, key, took))
                self.answers += 1
                if self.answers >= self._goal:
                    self._reached.set()
                if reply != f"200 {key}@example.com\n".encode():
                    self.wrong.append((key, reply))
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SteadyLoad]:
        tasks = [
            asyncio.ensure_future(self._client(port, number))
            for port in self._ports
            for number in range(6)
        ]
        try:
            yield self
        finally:
            self._stop.set()
            await asyncio.gather(*tasks)

    async def answered(self, count: int, phase: str) -> None:
        """Until ``count`` more answers came in ``phase`` (the load goes on meanwhile)."""
        self.phase = phase
        self._goal = self.answers + count
        self._reached.clear()
        try:
            await asyncio.wait_for(self._reached.wait(), DEADLINE)
        except TimeoutError:
            pytest.fail(f"the load stalled: {self.answers} answers, waiting for {self._goal}")


async def _keyed(request: web.Request) -> web.StreamResponse:
    key = request.query.get("key", "")
    return web.json_response([f"{key}@example.com"])


async def test_the_shared_tier_failing_under_load_costs_no_wrong_or_slow_answer(
    api: FakeApi, redis: RedisServer, tmp_path: Path, spawn: Spawn
) -> None:
    api.handler = _keyed
    # a short in-process TTL, so that the load keeps reaching the shared tier
    async with (
        fleet(spawn, tmp_path, api, redis, 2, **{"cache-ttl": 200}) as members,
        AsyncExitStack() as stack,
    ):
        load = await stack.enter_async_context(SteadyLoad([p for _, p, _ in members]).running())
        await load.answered(200, "healthy")

        await redis.kill()
        await load.answered(200, "unreachable")
        await redis.start()
        await load.answered(200, "started again")
        pause = asyncio.ensure_future(redis.cli("DEBUG", "SLEEP", "2"))
        await load.answered(200, "paused")
        await pause
        await redis.restart()  # its connections and entries gone
        await load.answered(200, "restarted")
        await redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        await redis.cli("CONFIG", "SET", "maxmemory", "1")
        await load.answered(200, "full")
        await redis.cli("CONFIG", "SET", "maxmemory", "0")
        for number in range(40):
            await redis.cli("SET", f"{PREFIX}{ENDPOINT}::u{number}", "{not json")
        await load.answered(200, "garbage")
        figures = [await scrape(metrics) for _, _, metrics in members]

    assert load.wrong == []
    assert load.slowest < SHARED_TIMEOUT_MS / 1000 + 1.0, load.slow
    errors = sum(
        value
        for f in figures
        for name, value in f.items()
        if name.startswith("shared_cache_errors_total")
    )
    assert errors > 0, "the faults were seen (and counted), not missed"
    assert all(f["shared_cache_hits_total"] > 0 for f in figures)
