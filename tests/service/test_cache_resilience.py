"""Cache, coalescing, retries, circuit breaker and stale-if-error, through a real running connector.

A ``SwitchableApi`` wraps the ``api`` fixture: the test flips it between up, down (503), slow (held
on an event, or past ``request-timeout`` when never released), flapping (503, then 200, ...) and
forbidden (403), and it counts the calls per key. Sleeps appear only where the passing of time is
the behaviour under test (a TTL, a stale window, a breaker cooldown); everything else awaits events
or a bounded condition.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any, Literal

import pytest
from aiohttp import web

from conftest import FakeApi, endpoint_address, endpoint_config, netstring, running_connector
from postfix_rest_api_connector.config import DEFAULT_FAILURE_ACTION, ConfigError, parse_config
from postfix_rest_api_connector.runtime.daemon import Daemon
from postfix_rest_api_connector.service import EndpointService

LOOKUP_MODES = ["tcp-lookup", "socketmap-lookup"]
DOWN = "API answered HTTP 503"
TIMED_OUT = "API did not answer in time"
BREAKER_OPEN = "API circuit breaker open"
POLICY_FAILURE = f"action={DEFAULT_FAILURE_ACTION}\n\n".encode()

ApiMode = Literal["up", "down", "slow", "flapping", "forbidden"]


class SwitchableApi:
    """The REST API with a switch, counting calls per key.

    up: ``["value-of-KEY"]`` (or ``values[KEY]``), 404 for keys starting with ``unknown`` unless
    added to ``exists``, and for keys in ``gone``; policy answers ``REJECT value-of-KEY``.
    down: 503. slow: waits for ``release``, then answers as up. flapping: 503, 200, 503, ...
    forbidden: 403. ``cache_control`` is sent as the ``Cache-Control`` header of every answer.
    """

    def __init__(self, api: FakeApi) -> None:
        self.mode: ApiMode = "up"
        self.calls: Counter[str] = Counter()
        self.values: dict[str, str] = {}
        self.exists: set[str] = set()
        self.gone: set[str] = set()
        self.cache_control: str | None = None
        self.delay = 0.0
        """Seconds every answer takes (the API being slow, not a test synchronisation)."""
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self._flaps = 0
        self.url = f"{api.url}/lookup"
        api.handler = self._handle

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            key = str((await request.post()).get("recipient", ""))
        else:
            key = request.query.get("key", "")
        self.calls[key] += 1
        self.arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        mode = self.mode
        if mode == "flapping":
            self._flaps += 1
            mode = "down" if self._flaps % 2 else "up"
        if mode == "slow":
            await self.release.wait()
            mode = "up"
        headers = {"Cache-Control": self.cache_control} if self.cache_control else None
        if mode == "down":
            return web.json_response(["ignored"], status=503, headers=headers)
        if mode == "forbidden":
            return web.json_response(["ignored"], status=403, headers=headers)
        if request.method == "POST":
            return web.Response(text=f"REJECT value-of-{key}", headers=headers)
        unknown = key.startswith("unknown") and key not in self.exists
        if unknown or key in self.gone:
            return web.json_response([], status=404, headers=headers)
        value = self.values.get(key, f"value-of-{key}")
        return web.json_response([value], headers=headers)


@pytest.fixture
def switch(api: FakeApi) -> SwitchableApi:
    return SwitchableApi(api)


async def ask(mode: str, address: tuple[str, int], key: str, map_name: str = "aliases") -> bytes:
    """One request the way Postfix sends it, on its own connection; returns the whole reply."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        if mode == "tcp-lookup":
            writer.write(b"get " + key.encode() + b"\n")
            return await asyncio.wait_for(reader.readline(), 10)
        if mode == "socketmap-lookup":
            writer.write(netstring(f"{map_name} {key}"))
            length = await asyncio.wait_for(reader.readuntil(b":"), 10)
            rest = await asyncio.wait_for(reader.readexactly(int(length[:-1]) + 1), 10)
            return length + rest
        writer.write(f"request=smtpd_access_policy\nrecipient={key}\n\n".encode())
        return await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


def found(mode: str, value: str) -> bytes:
    return f"200 {value}\n".encode() if mode == "tcp-lookup" else netstring(f"OK {value}")


def not_found(mode: str) -> bytes:
    return b"500 not%20found\n" if mode == "tcp-lookup" else netstring("NOTFOUND ")


def error(mode: str, reason: str, socketmap_word: str = "TEMP") -> bytes:
    """tcp_table has one error code (400); socketmap says TEMP, PERM or TIMEOUT."""
    if mode == "tcp-lookup":
        return f"400 {reason.replace(' ', '%20')}\n".encode()
    return netstring(f"{socketmap_word} {reason}")


def service(daemon: Daemon, index: int = 0) -> EndpointService:
    return daemon.endpoints[index].service


def config(mode: str, switch: SwitchableApi, **extra: Any) -> dict[str, Any]:
    return endpoint_config(mode, switch.url, **extra)


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) for a state the code under test exposes no event for."""
    for _ in range(2500):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition not reached within 5 s")


def connector(*endpoints: dict[str, Any]) -> AbstractAsyncContextManager[Daemon]:
    """The real daemon; a short shutdown grace so a failing test with a held API ends quickly."""
    return running_connector(*endpoints, **{"shutdown-timeout": 500})


def closed_port() -> int:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port: int = placeholder.getsockname()[1]
    return port


# --- defaults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_nothing_is_cached_and_no_breaker_by_default(
    switch: SwitchableApi, mode: str
) -> None:
    async with connector(config(mode, switch)) as daemon:
        address = endpoint_address(daemon)
        for _ in range(3):
            assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
            assert await ask(mode, address, "unknown-bob") == not_found(mode)
        assert switch.calls == {"alice": 3, "unknown-bob": 3}
        switch.mode = "down"
        for _ in range(5):
            assert await ask(mode, address, "alice") == error(mode, DOWN)
        stats = service(daemon).stats
        assert switch.calls["alice"] == 3 + 5 * 2, "one retry per failed lookup by default"
        assert stats.cache_hits == stats.stale_answers == stats.breaker_rejections == 0
        assert service(daemon).breaker_state == "closed"


# --- positive and negative cache --------------------------------------------------------------


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_found_answer_is_cached_for_the_ttl(switch: SwitchableApi, mode: str) -> None:
    async with connector(config(mode, switch, **{"cache-ttl": 300})) as daemon:
        address = endpoint_address(daemon)
        assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
        switch.values["alice"] = "changed"
        assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
        assert switch.calls["alice"] == 1
        assert service(daemon).stats.cache_hits == 1
        assert service(daemon).stats.api_calls == 1
        await asyncio.sleep(0.35)  # the TTL expires
        assert await ask(mode, address, "alice") == found(mode, "changed")
        assert switch.calls["alice"] == 2
        assert service(daemon).stats.cache_hits == 1


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_not_found_is_not_cached_by_default(switch: SwitchableApi, mode: str) -> None:
    async with connector(config(mode, switch, **{"cache-ttl": 60_000})) as daemon:
        address = endpoint_address(daemon)
        assert await ask(mode, address, "unknown-x") == not_found(mode)
        assert await ask(mode, address, "unknown-x") == not_found(mode)
        assert switch.calls["unknown-x"] == 2
        assert service(daemon).stats.cache_hits == 0


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_new_mailbox_is_unknown_no_longer_than_the_negative_ttl(
    switch: SwitchableApi, mode: str
) -> None:
    extra = {"cache-ttl": 60_000, "negative-cache-ttl": 200}
    async with connector(config(mode, switch, **extra)) as daemon:
        address = endpoint_address(daemon)
        assert await ask(mode, address, "unknown-new") == not_found(mode)
        switch.exists.add("unknown-new")  # the mailbox is created
        assert await ask(mode, address, "unknown-new") == not_found(mode)
        assert switch.calls["unknown-new"] == 1
        assert service(daemon).stats.cache_hits == 1
        await asyncio.sleep(0.25)  # the negative TTL expires
        assert await ask(mode, address, "unknown-new") == found(mode, "value-of-unknown-new")
        assert switch.calls["unknown-new"] == 2


async def test_cache_max_entries_evicts_the_least_recently_used(switch: SwitchableApi) -> None:
    extra = {"cache-ttl": 60_000, "cache-max-entries": 2}
    async with connector(config("tcp-lookup", switch, **extra)) as daemon:
        address = endpoint_address(daemon)
        for key in ["a", "b", "a", "c"]:
            assert await ask("tcp-lookup", address, key) == found("tcp-lookup", f"value-of-{key}")
        assert switch.calls == {"a": 1, "b": 1, "c": 1}
        assert await ask("tcp-lookup", address, "a") == found("tcp-lookup", "value-of-a")
        assert switch.calls["a"] == 1, "a was used recently: still cached"
        assert await ask("tcp-lookup", address, "b") == found("tcp-lookup", "value-of-b")
        assert switch.calls["b"] == 2, "b was the least recently used: evicted by c"
        assert service(daemon).stats.cache_hits == 2


async def test_socketmap_maps_are_cached_and_asked_separately(switch: SwitchableApi) -> None:
    async with connector(config("socketmap-lookup", switch, **{"cache-ttl": 60_000})) as d:
        address = endpoint_address(d)
        for map_name in ["aliases", "virtual", "aliases", "virtual"]:
            reply = await ask("socketmap-lookup", address, "alice", map_name)
            assert reply == found("socketmap-lookup", "value-of-alice")
        assert service(d).stats.api_calls == 2
        assert service(d).stats.cache_hits == 2


# --- Cache-Control ----------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["max-age=0", "no-store", "no-cache", "private, no-store"])
@pytest.mark.parametrize("key", ["alice", "unknown-x"])
@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_api_can_forbid_caching(
    switch: SwitchableApi, mode: str, key: str, header: str
) -> None:
    switch.cache_control = header
    extra = {"cache-ttl": 60_000, "negative-cache-ttl": 60_000}
    async with connector(config(mode, switch, **extra)) as daemon:
        address = endpoint_address(daemon)
        expected = not_found(mode) if key.startswith("unknown") else found(mode, f"value-of-{key}")
        assert await ask(mode, address, key) == expected
        assert await ask(mode, address, key) == expected
        assert switch.calls[key] == 2
        assert service(daemon).stats.cache_hits == 0


async def test_max_age_caps_the_configured_ttl(switch: SwitchableApi) -> None:
    switch.cache_control = "public, max-age=1"
    async with connector(config("tcp-lookup", switch, **{"cache-ttl": 60_000})) as daemon:
        address = endpoint_address(daemon)
        assert await ask("tcp-lookup", address, "alice") == found("tcp-lookup", "value-of-alice")
        assert await ask("tcp-lookup", address, "alice") == found("tcp-lookup", "value-of-alice")
        assert switch.calls["alice"] == 1
        await asyncio.sleep(1.05)  # max-age=1 expires, long before the 60 s TTL
        assert await ask("tcp-lookup", address, "alice") == found("tcp-lookup", "value-of-alice")
        assert switch.calls["alice"] == 2


async def test_max_age_never_extends_the_configured_ttl(switch: SwitchableApi) -> None:
    switch.cache_control = "max-age=3600"
    async with connector(config("tcp-lookup", switch, **{"cache-ttl": 200})) as daemon:
        address = endpoint_address(daemon)
        await ask("tcp-lookup", address, "alice")
        await ask("tcp-lookup", address, "alice")
        assert switch.calls["alice"] == 1
        await asyncio.sleep(0.25)  # the configured TTL expires
        await ask("tcp-lookup", address, "alice")
        assert switch.calls["alice"] == 2


async def test_max_age_cannot_turn_caching_on(switch: SwitchableApi) -> None:
    switch.cache_control = "max-age=3600"
    async with connector(config("tcp-lookup", switch)) as daemon:
        address = endpoint_address(daemon)
        await ask("tcp-lookup", address, "alice")
        await ask("tcp-lookup", address, "alice")
        assert switch.calls["alice"] == 2


@pytest.mark.parametrize("header", ["no-store", "max-age=0"])
async def test_cache_control_false_ignores_the_header(switch: SwitchableApi, header: str) -> None:
    switch.cache_control = header
    extra = {"cache-ttl": 60_000, "cache-control": False}
    async with connector(config("tcp-lookup", switch, **extra)) as daemon:
        address = endpoint_address(daemon)
        await ask("tcp-lookup", address, "alice")
        assert await ask("tcp-lookup", address, "alice") == found("tcp-lookup", "value-of-alice")
        assert switch.calls["alice"] == 1
        assert service(daemon).stats.cache_hits == 1


async def test_no_store_answer_is_not_kept_for_outages(switch: SwitchableApi) -> None:
    switch.cache_control = "no-store"
    extra = {"cache-ttl": 100, "stale-if-error": 5_000, "retries": 0}
    async with connector(config("tcp-lookup", switch, **extra)) as daemon:
        address = endpoint_address(daemon)
        assert await ask("tcp-lookup", address, "alice") == found("tcp-lookup", "value-of-alice")
        switch.mode = "down"
        assert await ask("tcp-lookup", address, "alice") == error("tcp-lookup", DOWN)
        assert service(daemon).stats.stale_answers == 0


# --- coalescing -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_concurrent_identical_lookups_share_one_api_call(
    switch: SwitchableApi, mode: str
) -> None:
    switch.mode = "slow"
    async with connector(config(mode, switch, **{"request-timeout": 10_000})) as daemon:
        address = endpoint_address(daemon)
        stats = service(daemon).stats
        lookups = [asyncio.create_task(ask(mode, address, "alice")) for _ in range(100)]
        await asyncio.wait_for(switch.arrived.wait(), 5)
        await until(lambda: stats.coalesced == 99)
        assert not any(lookup.done() for lookup in lookups)
        switch.release.set()
        replies = await asyncio.wait_for(asyncio.gather(*lookups), 10)
    assert replies == [found(mode, "value-of-alice")] * 100
    assert switch.calls == {"alice": 1}
    assert stats.api_calls == 1
    assert stats.cache_hits == 0


async def test_different_keys_are_not_coalesced(switch: SwitchableApi) -> None:
    switch.mode = "slow"
    keys = [f"user{n}" for n in range(10)]
    async with connector(config("tcp-lookup", switch)) as daemon:
        address = endpoint_address(daemon)
        lookups = [asyncio.create_task(ask("tcp-lookup", address, key)) for key in keys]
        await until(lambda: len(switch.calls) == len(keys))
        switch.release.set()
        replies = await asyncio.wait_for(asyncio.gather(*lookups), 10)
    assert replies == [found("tcp-lookup", f"value-of-{key}") for key in keys]
    assert switch.calls == dict.fromkeys(keys, 1)
    assert service(daemon).stats.coalesced == 0


async def test_a_client_leaving_does_not_cancel_the_shared_call(switch: SwitchableApi) -> None:
    switch.mode = "slow"
    async with connector(config("tcp-lookup", switch)) as daemon:
        address = endpoint_address(daemon)
        tracker = daemon.endpoints[0].tracker
        _, leaver = await asyncio.open_connection(*address)
        leaver.write(b"get alice\n")
        await asyncio.wait_for(switch.arrived.wait(), 5)
        stayer = asyncio.create_task(ask("tcp-lookup", address, "alice"))
        await until(lambda: service(daemon).stats.coalesced == 1)
        # a reset, not a FIN: a half-closed client is still answered, a reset one is gone
        linger = struct.pack("ii", 1, 0)
        leaver.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        leaver.transport.abort()
        await until(lambda: len(tracker.open) == 1)
        switch.release.set()
        assert await asyncio.wait_for(stayer, 5) == found("tcp-lookup", "value-of-alice")
    assert switch.calls == {"alice": 1}


# --- stale-if-error ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_stale_value_answers_an_outage_but_never_past_its_age(
    switch: SwitchableApi, mode: str
) -> None:
    extra = {"cache-ttl": 100, "stale-if-error": 1000, "retries": 0}
    async with connector(config(mode, switch, **extra)) as daemon:
        address = endpoint_address(daemon)
        stats = service(daemon).stats
        assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
        fetched = time.monotonic()
        await asyncio.sleep(0.15)  # the TTL expires; the value is now only good for outages
        switch.mode = "down"
        assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
        assert stats.stale_answers == 1
        assert switch.calls["alice"] == 2, "a stale answer is given only after asking the API"
        assert await ask(mode, address, "bob") == error(mode, DOWN), "nothing stale for bob"
        await asyncio.sleep(fetched + 1.05 - time.monotonic())  # stale-if-error elapses
        assert await ask(mode, address, "alice") == error(mode, DOWN)
        assert stats.stale_answers == 1
        switch.mode = "up"
        switch.values["alice"] = "fresh"
        assert await ask(mode, address, "alice") == found(mode, "fresh")


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_no_stale_answers_by_default(switch: SwitchableApi, mode: str) -> None:
    async with connector(config(mode, switch, **{"cache-ttl": 100})) as daemon:
        address = endpoint_address(daemon)
        assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
        await asyncio.sleep(0.15)  # the TTL expires
        switch.mode = "down"
        assert await ask(mode, address, "alice") == error(mode, DOWN)
        assert service(daemon).stats.stale_answers == 0


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_not_found_is_never_served_stale(switch: SwitchableApi, mode: str) -> None:
    extra = {"cache-ttl": 100, "negative-cache-ttl": 100, "stale-if-error": 5000, "retries": 0}
    async with connector(config(mode, switch, **extra)) as daemon:
        address = endpoint_address(daemon)
        assert await ask(mode, address, "unknown-x") == not_found(mode)
        assert await ask(mode, address, "unknown-x") == not_found(mode)
        assert switch.calls["unknown-x"] == 1
        await asyncio.sleep(0.15)  # the negative TTL expires
        switch.mode = "down"
        assert await ask(mode, address, "unknown-x") == error(mode, DOWN)
        assert service(daemon).stats.stale_answers == 0


@pytest.mark.parametrize("negative_ttl", [0, 100])
@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_deleted_mailbox_is_not_resurrected_by_an_outage(
    switch: SwitchableApi, mode: str, negative_ttl: int
) -> None:
    extra = {
        "cache-ttl": 100,
        "negative-cache-ttl": negative_ttl,
        "stale-if-error": 5000,
        "retries": 0,
    }
    async with connector(config(mode, switch, **extra)) as daemon:
        address = endpoint_address(daemon)
        assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
        await asyncio.sleep(0.15)  # the TTL expires
        switch.gone.add("alice")
        assert await ask(mode, address, "alice") == not_found(mode)
        await asyncio.sleep(0.15)  # the negative TTL (if any) expires
        switch.mode = "down"
        assert await ask(mode, address, "alice") == error(mode, DOWN)
        assert service(daemon).stats.stale_answers == 0


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_timeout_falls_back_to_the_stale_value(switch: SwitchableApi, mode: str) -> None:
    extra = {"cache-ttl": 100, "stale-if-error": 5000, "request-timeout": 200}
    async with connector(config(mode, switch, **extra)) as daemon:
        address = endpoint_address(daemon)
        assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
        await asyncio.sleep(0.15)  # the TTL expires
        switch.mode = "slow"  # never released: past request-timeout
        started = time.monotonic()
        assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
        assert 0.15 < time.monotonic() - started < 0.2 + 0.5
        assert service(daemon).stats.stale_answers == 1
        assert await ask(mode, address, "bob") == error(mode, TIMED_OUT, "TIMEOUT")


# --- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_lookup_retries_once_by_default(switch: SwitchableApi, mode: str) -> None:
    switch.mode = "flapping"  # 503 first, 200 on the retry
    async with connector(config(mode, switch)) as daemon:
        assert await ask(mode, endpoint_address(daemon), "alice") == found(mode, "value-of-alice")
    assert switch.calls["alice"] == 2
    assert service(daemon).stats.api_calls == 2


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_no_retry_with_retries_zero(switch: SwitchableApi, mode: str) -> None:
    switch.mode = "flapping"
    async with connector(config(mode, switch, retries=0)) as daemon:
        assert await ask(mode, endpoint_address(daemon), "alice") == error(mode, DOWN)
    assert switch.calls["alice"] == 1


@pytest.mark.parametrize(
    ("retries", "expected", "posts"),
    [
        (None, POLICY_FAILURE, 1),
        (0, POLICY_FAILURE, 1),
        (1, b"action=REJECT value-of-r@example.com\n\n", 2),
    ],
)
async def test_policy_retries_only_when_configured(
    switch: SwitchableApi, retries: int | None, expected: bytes, posts: int
) -> None:
    switch.mode = "flapping"
    extra = {} if retries is None else {"retries": retries}
    async with connector(config("policy", switch, **extra)) as daemon:
        assert await ask("policy", endpoint_address(daemon), "r@example.com") == expected
    assert switch.calls == {"r@example.com": posts}


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_retries_stay_within_request_timeout(switch: SwitchableApi, mode: str) -> None:
    switch.mode = "down"
    switch.delay = 0.12  # every attempt takes 120 ms, then fails
    extra = {"request-timeout": 300, "retries": 10, "retry-backoff": 25}
    async with connector(config(mode, switch, **extra)) as daemon:
        started = time.monotonic()
        reply = await ask(mode, endpoint_address(daemon), "alice")
        elapsed = time.monotonic() - started
    assert reply in {error(mode, DOWN), error(mode, TIMED_OUT, "TIMEOUT")}
    assert 2 <= switch.calls["alice"] <= 3, "retried, but not ten times"
    assert elapsed < 0.3 + 0.25


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_no_retry_after_a_timeout_used_the_budget(switch: SwitchableApi, mode: str) -> None:
    switch.mode = "slow"  # never released
    extra = {"request-timeout": 300, "retries": 5}
    async with connector(config(mode, switch, **extra)) as daemon:
        started = time.monotonic()
        reply = await ask(mode, endpoint_address(daemon), "alice")
        elapsed = time.monotonic() - started
    assert reply == error(mode, TIMED_OUT, "TIMEOUT")
    assert switch.calls["alice"] == 1
    assert elapsed < 0.3 + 0.25


@pytest.mark.parametrize("mode", [*LOOKUP_MODES, "policy"])
async def test_definite_answers_are_not_retried(switch: SwitchableApi, mode: str) -> None:
    async with connector(config(mode, switch, retries=3)) as daemon:
        address = endpoint_address(daemon)
        if mode != "policy":
            assert await ask(mode, address, "unknown-x") == not_found(mode)
        switch.mode = "forbidden"
        reply = await ask(mode, address, "alice")
    if mode == "policy":
        assert reply == POLICY_FAILURE
    else:
        assert reply == error(mode, "API answered HTTP 403", "PERM")
        assert switch.calls["unknown-x"] == 1
    assert switch.calls["alice"] == 1


# --- circuit breaker --------------------------------------------------------------------------

BREAKER = {"breaker-failures": 3, "breaker-cooldown": 300, "retries": 0}


async def open_breaker(mode: str, daemon: Daemon, switch: SwitchableApi) -> None:
    switch.mode = "down"
    for n in range(3):
        assert service(daemon).breaker_state == "closed"
        assert await ask(mode, endpoint_address(daemon), f"key{n}") == error(mode, DOWN)
    assert service(daemon).breaker_state == "open"
    assert switch.total == 3


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_breaker_opens_rejects_fast_and_closes_after_a_good_probe(
    switch: SwitchableApi, mode: str
) -> None:
    async with connector(config(mode, switch, **BREAKER)) as daemon:
        address = endpoint_address(daemon)
        stats = service(daemon).stats
        await open_breaker(mode, daemon, switch)
        started = time.monotonic()
        assert await ask(mode, address, "alice") == error(mode, BREAKER_OPEN)
        assert time.monotonic() - started < 0.05
        assert stats.breaker_rejections == 1
        assert switch.total == stats.api_calls == 3
        switch.mode = "up"
        assert await ask(mode, address, "alice") == error(mode, BREAKER_OPEN), "still cooling"
        assert switch.total == 3
        await asyncio.sleep(0.35)  # the cooldown passes
        assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
        assert service(daemon).breaker_state == "closed"
        assert await ask(mode, address, "bob") == found(mode, "value-of-bob")
        assert switch.total == stats.api_calls == 5
        assert stats.breaker_rejections == 2


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_breaker_reopens_when_the_probe_fails(switch: SwitchableApi, mode: str) -> None:
    async with connector(config(mode, switch, **BREAKER)) as daemon:
        address = endpoint_address(daemon)
        await open_breaker(mode, daemon, switch)
        await asyncio.sleep(0.35)  # the cooldown passes; the API is still down
        assert await ask(mode, address, "alice") == error(mode, DOWN)
        assert switch.total == 4, "the probe went through"
        assert service(daemon).breaker_state == "open"
        assert await ask(mode, address, "alice") == error(mode, BREAKER_OPEN)
        assert switch.total == 4
        switch.mode = "up"
        await asyncio.sleep(0.35)  # a new cooldown passes
        assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
        assert service(daemon).breaker_state == "closed"


async def test_breaker_lets_one_probe_through_at_a_time(switch: SwitchableApi) -> None:
    async with connector(config("tcp-lookup", switch, **BREAKER)) as daemon:
        address = endpoint_address(daemon)
        await open_breaker("tcp-lookup", daemon, switch)
        await asyncio.sleep(0.35)  # the cooldown passes
        switch.mode = "slow"
        switch.arrived.clear()
        probe = asyncio.create_task(ask("tcp-lookup", address, "alice"))
        await asyncio.wait_for(switch.arrived.wait(), 5)
        assert service(daemon).breaker_state == "half-open"
        assert await ask("tcp-lookup", address, "bob") == error("tcp-lookup", BREAKER_OPEN)
        assert switch.calls["bob"] == 0
        switch.release.set()
        assert await asyncio.wait_for(probe, 5) == found("tcp-lookup", "value-of-alice")
        assert service(daemon).breaker_state == "closed"
        assert await ask("tcp-lookup", address, "bob") == found("tcp-lookup", "value-of-bob")


async def test_breaker_counts_consecutive_failures_only(switch: SwitchableApi) -> None:
    async with connector(config("tcp-lookup", switch, **BREAKER)) as daemon:
        address = endpoint_address(daemon)
        states: list[ApiMode] = ["down", "down", "up", "down", "down", "forbidden", "down", "down"]
        for state in states:
            switch.mode = state  # a 404 (up, unknown key) or a 403 resets the count
            await ask("tcp-lookup", address, "unknown-x")
        assert service(daemon).breaker_state == "closed"
        assert switch.total == 8


async def test_breaker_opens_on_refused_connections_per_endpoint(switch: SwitchableApi) -> None:
    refusing = endpoint_config("tcp-lookup", f"http://127.0.0.1:{closed_port()}/", **BREAKER)
    refusing["name"] = "refusing"
    async with connector(refusing, config("tcp-lookup", switch, **BREAKER)) as daemon:
        dead, alive = endpoint_address(daemon, 0), endpoint_address(daemon, 1)
        refused = error("tcp-lookup", "API request failed: ConnectError")
        for _ in range(3):
            assert await ask("tcp-lookup", dead, "alice") == refused
        assert await ask("tcp-lookup", dead, "alice") == error("tcp-lookup", BREAKER_OPEN)
        assert service(daemon, 0).stats.api_calls == 3
        assert service(daemon, 0).stats.breaker_rejections == 1
        assert await ask("tcp-lookup", alive, "alice") == found("tcp-lookup", "value-of-alice")
        assert service(daemon, 1).breaker_state == "closed"


@pytest.mark.parametrize("mode", LOOKUP_MODES)
async def test_open_breaker_serves_the_stale_value(switch: SwitchableApi, mode: str) -> None:
    extra = {**BREAKER, "cache-ttl": 100, "stale-if-error": 5000}
    async with connector(config(mode, switch, **extra)) as daemon:
        address = endpoint_address(daemon)
        assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
        switch.calls.clear()
        await open_breaker(mode, daemon, switch)
        await asyncio.sleep(0.15)  # alice's TTL expires (the breaker is still cooling down)
        assert await ask(mode, address, "alice") == found(mode, "value-of-alice")
        assert switch.calls["alice"] == 0
        assert service(daemon).stats.breaker_rejections == 1
        assert service(daemon).stats.stale_answers == 1


# --- config -----------------------------------------------------------------------------------

CACHE_KEYS = {
    "cache-ttl": 100,
    "negative-cache-ttl": 100,
    "cache-max-entries": 10,
    "cache-control": False,
    "stale-if-error": 100,
}


SASL_CACHE_KEYS = {"cache-ttl", "cache-max-entries"}
"""A sasl endpoint may cache its successes."""


@pytest.mark.parametrize(("key", "value"), CACHE_KEYS.items())
def test_cache_keys_are_rejected_on_a_policy_endpoint(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(
            {"endpoints": [endpoint_config("policy", "http://127.0.0.1:1/", **{key: value})]}
        )
    modes = "the lookup modes and mode 'sasl'" if key in SASL_CACHE_KEYS else "the lookup modes"
    assert raised.value.problems == [f"endpoints[0].{key}: only applies to {modes}"]


@pytest.mark.parametrize("mode", LOOKUP_MODES)
def test_cache_and_resilience_keys_load_on_lookup_endpoints(mode: str) -> None:
    extra = {**CACHE_KEYS, "retries": 2, "retry-backoff": 10, **BREAKER}
    parsed = parse_config({"endpoints": [endpoint_config(mode, "http://127.0.0.1:1/", **extra)]})
    endpoint = parsed.endpoints[0]
    assert (endpoint.cache_ttl, endpoint.stale_if_error, endpoint.cache_control) == (
        100,
        100,
        False,
    )
    assert endpoint.effective_retries == 0
    assert endpoint.breaker_cooldown == 300


def test_retry_keys_are_accepted_on_a_policy_endpoint() -> None:
    extra = {"retries": 2, "retry-backoff": 10}
    parsed = parse_config(
        {"endpoints": [endpoint_config("policy", "http://127.0.0.1:1/", **extra)]}
    )
    assert parsed.endpoints[0].effective_retries == 2


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cache-ttl", -1),
        ("negative-cache-ttl", -1),
        ("cache-max-entries", -1),
        ("cache-max-entries", 0),
        ("stale-if-error", -1),
        ("retries", -1),
        ("retry-backoff", -1),
        ("breaker-failures", -1),
        ("breaker-cooldown", -1),
        ("cache-ttl", True),
        ("cache-ttl", "300"),
        ("cache-control", "yes"),
    ],
)
def test_invalid_values_are_rejected(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(
            {"endpoints": [endpoint_config("tcp-lookup", "http://127.0.0.1:1/", **{key: value})]}
        )
    [problem] = raised.value.problems
    assert problem.startswith(f"endpoints[0].{key}: ")
