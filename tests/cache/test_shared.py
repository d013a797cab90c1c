"""The shared tier against a real redis-server: the entry format, the lock, the channels, and
every way the server can fail turned into "nothing here", within the tier's timeout."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import FakeApi, endpoint_config, write_config
from postfix_rest_api_connector.cache.pipelined import MAX_UNPARSED_BYTES
from postfix_rest_api_connector.cache.shared import (
    FAILURES_IN_A_ROW,
    SharedCacheSettings,
    SharedEntry,
    SharedTier,
    decode_entry,
    encode_entry,
    redis_key,
)
from postfix_rest_api_connector.config import parse_config
from postfix_rest_api_connector.core.model import Found, NotFound, TemporaryError
from postfix_rest_api_connector.runtime.daemon import Daemon
from redis_server import RedisServer, free_port, redis_server
from test_tls import _issue, _make_ca

PREFIX = "test:"
TIMEOUT = 0.05
TARGET = "http://api/lookup"


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    async with redis_server() as server:
        yield server


async def open_tier(url: str) -> SharedTier:
    tier = SharedTier(SharedCacheSettings(url=url, key_prefix=PREFIX, timeout=TIMEOUT))
    tier.start()
    return tier


def entry(value: str | None = "v", ttl: float = 60.0) -> SharedEntry:
    now = time.time()
    outcome = Found(value) if value is not None else NotFound()
    return SharedEntry(outcome, TARGET, now, now + ttl)


# the entry format, pure


def test_the_key_names_prefix_endpoint_map_and_key() -> None:
    assert redis_key("p:", "maps", b"aliases", b"a b:c") == b"p:maps:aliases:a b:c"
    assert redis_key("p:", "domains", None, b"example.com") == b"p:domains::example.com"


@given(st.text(min_size=1), st.floats(0, 2e9), st.floats(0, 2e9))
def test_entries_round_trip(value: str, fetched: float, fresh: float) -> None:
    for outcome in (Found(value), NotFound()):
        shared = SharedEntry(outcome, TARGET, fetched, fresh)
        assert decode_entry(encode_entry(shared)) == shared


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'"found"',
        b'{"v":2,"t":"x","f":1,"u":2,"o":"not_found"}',
        b'{"v":1,"t":"x","f":1,"u":2}',
        b'{"v":1,"t":"x","f":"1","u":2,"o":"not_found"}',
        b'{"v":1,"t":"x","f":1,"u":NaN,"o":"not_found"}',
        b'{"v":1,"t":"x","f":1,"u":2,"o":"found"}',
        b'{"v":1,"t":"x","f":1,"u":2,"o":"found","value":""}',
        b'{"v":1,"t":"x","f":1,"u":2,"o":"found","value":["a"]}',
        b'{"v":1,"t":"x","f":1,"u":2,"o":"maybe","value":"a"}',
        b'{"v":1,"t":7,"f":1,"u":2,"o":"not_found"}',
        b"[" * 100_000,
        b"\xff\xfe",
    ],
)
def test_anything_else_under_our_keys_is_no_entry(data: bytes) -> None:
    assert decode_entry(data) is None


# against the server


async def test_an_entry_stored_is_found_by_another_process_view(redis: RedisServer) -> None:
    writer, reader = await open_tier(redis.url), await open_tier(redis.unix_url)
    try:
        rkey = writer.key("e", None, b"k")
        await writer.publish(rkey, entry("v"), 60.0, None)
        found = await reader.get(rkey, TARGET)
        other_target = await reader.get(rkey, "http://other/lookup")
        ttl = int(await redis.cli("PTTL", rkey.decode()))
    finally:
        await writer.close()
        await reader.close()

    assert found is not None
    assert found.outcome == Found("v")
    assert other_target is None, "an entry of another target counts as none"
    assert 59_000 < ttl <= 60_000, "Redis expiry does the deleting"
    assert (reader.stats.hits, reader.stats.misses) == (1, 1)


async def test_reads_in_one_turn_of_the_loop_go_in_one_mget(redis: RedisServer) -> None:
    """Fifty lookups at once cost the server one command, and each gets its own key's entry."""
    tier = await open_tier(redis.url)
    try:
        keys = [tier.key("e", None, f"k{i}".encode()) for i in range(50)]
        for number, rkey in enumerate(keys[:25]):
            await tier.publish(rkey, entry(f"v{number}"), 60.0, None)
        await redis.cli("CONFIG", "RESETSTAT")
        found = await asyncio.gather(*(tier.get(rkey, TARGET) for rkey in keys + keys[:5]))
        stats = await redis.cli("INFO", "commandstats")
    finally:
        await tier.close()

    values = [None if e is None else e.outcome for e in found]
    assert values == [Found(f"v{n}") for n in range(25)] + [None] * 25 + [
        Found(f"v{n}") for n in range(5)
    ]
    assert "cmdstat_mget:calls=1," in stats, stats
    assert "cmdstat_get:" not in stats, stats
    assert (tier.stats.hits, tier.stats.misses) == (30, 25)


async def test_one_lock_holder_at_a_time_and_its_answer_reaches_the_waiter(
    redis: RedisServer,
) -> None:
    first, second = await open_tier(redis.url), await open_tier(redis.url)
    try:
        rkey = first.key("e", None, b"k")
        token = await first.lock(rkey, 5.0, TARGET)
        assert isinstance(token, str)
        assert await second.lock(rkey, 5.0, TARGET) is False
        await asyncio.sleep(0.1)  # both subscriptions are up (nothing to await from outside)
        waiting = asyncio.ensure_future(second.wait(rkey, 5.0))
        await asyncio.sleep(0)
        await first.publish(rkey, entry("answer"), 60.0, token)
        published = await waiting
        relocked = await second.lock(rkey, 5.0, TARGET)
    finally:
        await first.close()
        await second.close()

    assert isinstance(published, SharedEntry)
    assert published.outcome == Found("answer")
    assert isinstance(relocked, SharedEntry), "the lock step finds the answer stored meanwhile"
    assert relocked.outcome == Found("answer")


async def test_a_failure_is_told_to_the_waiters_and_not_stored(redis: RedisServer) -> None:
    first, second = await open_tier(redis.url), await open_tier(redis.url)
    try:
        rkey = first.key("e", None, b"k")
        token = await first.lock(rkey, 5.0, TARGET)
        assert isinstance(token, str)
        await asyncio.sleep(0.1)
        waiting = asyncio.ensure_future(second.wait(rkey, 5.0))
        await asyncio.sleep(0)
        await first.publish(rkey, TemporaryError("API answered HTTP 503"), 0.0, token)
        published = await waiting
        stored = await second.get(rkey, TARGET)
        relocked = await second.lock(rkey, 5.0, TARGET)
    finally:
        await first.close()
        await second.close()

    assert isinstance(published, TemporaryError)
    assert stored is None
    assert isinstance(relocked, str), "publishing dropped the lock"


async def test_an_expired_lock_can_be_taken_over(redis: RedisServer) -> None:
    tier = await open_tier(redis.url)
    try:
        rkey = tier.key("e", None, b"k")
        assert isinstance(await tier.lock(rkey, 0.05, TARGET), str)
        assert await tier.lock(rkey, 0.05, TARGET) is False
        await asyncio.sleep(0.1)
        assert isinstance(await tier.lock(rkey, 0.05, TARGET), str)
    finally:
        await tier.close()


async def test_an_invalidation_reaches_the_registered_endpoint(redis: RedisServer) -> None:
    tier = await open_tier(redis.url)
    dropped: list[tuple[bytes | None, bytes]] = []
    got_one = asyncio.Event()

    def forget(map_name: bytes | None, key: bytes) -> None:
        dropped.append((map_name, key))
        got_one.set()

    tier.on_invalidate("maps", forget)
    try:
        await asyncio.sleep(0.1)
        # as the web application would: a plain client, the documented channel and key
        await redis.cli("PUBLISH", f"{PREFIX}invalidate", f"{PREFIX}maps:aliases:a:b c")
        await asyncio.wait_for(got_one.wait(), 5)
    finally:
        await tier.close()

    assert dropped == [(b"aliases", b"a:b c")]
    assert tier.stats.invalidations == 1


async def test_garbage_under_our_key_is_ignored_and_counted(redis: RedisServer) -> None:
    tier = await open_tier(redis.url)
    try:
        rkey = tier.key("e", None, b"k")
        await redis.cli("SET", rkey.decode(), json.dumps({"v": 1, "o": "found"}))
        assert await tier.get(rkey, TARGET) is None
        assert tier.stats.available, "one bad entry is not a server problem"
    finally:
        await tier.close()
    assert tier.stats.errors["garbage"] == 1


async def test_a_server_that_is_gone_costs_a_few_tries_then_nothing(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    tier = await open_tier(redis.url)
    try:
        rkey = tier.key("e", None, b"k")
        await redis.kill()
        began = time.monotonic()
        for _ in range(FAILURES_IN_A_ROW):
            assert await tier.get(rkey, TARGET) is None
        assert not tier.stats.available, "out of the way after a few failures in a row"
        assert await tier.lock(rkey, 5.0, TARGET) is True, "no lock to be had: fetch without one"
        assert await tier.get(rkey, TARGET) is None
        took = time.monotonic() - began
        await redis.start()
        async with asyncio.timeout(10):
            # the tier's own probe decides when it is back: its flag is what there is to watch
            while not tier.stats.available:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await tier.publish(rkey, entry("v"), 60.0, None)
        assert await tier.get(rkey, TARGET) is not None
    finally:
        await tier.close()

    assert took < FAILURES_IN_A_ROW * TIMEOUT + 0.5
    assert tier.stats.errors["connection"] + tier.stats.errors["timeout"] == FAILURES_IN_A_ROW
    changes = [r.getMessage() for r in caplog.records if "shared cache" in r.getMessage()]
    assert len(changes) == 2, changes
    assert "answering from the API" in changes[0]
    assert "is back" in changes[1]


async def test_one_slow_answer_does_not_put_the_tier_out_of_the_way(redis: RedisServer) -> None:
    """A busy event loop counts its own delay in the timeout too: one slow operation costs only
    the lookup that waited for it."""
    tier = await open_tier(redis.url)
    try:
        rkey = tier.key("e", None, b"k")
        assert await tier.get(rkey, TARGET) is None  # connected
        pause = asyncio.ensure_future(redis.cli("DEBUG", "SLEEP", "0.3"))
        await asyncio.sleep(0.05)
        assert await tier.get(rkey, TARGET) is None
        await pause
        assert tier.stats.available
        await tier.publish(rkey, entry("v"), 60.0, None)
        assert await tier.get(rkey, TARGET) is not None
    finally:
        await tier.close()
    assert tier.stats.errors["timeout"] == 1


async def test_a_paused_server_is_given_up_on_within_the_timeout(redis: RedisServer) -> None:
    tier = await open_tier(redis.url)
    try:
        rkey = tier.key("e", None, b"k")
        assert await tier.get(rkey, TARGET) is None  # connected
        pause = asyncio.ensure_future(redis.cli("DEBUG", "SLEEP", "1"))
        await asyncio.sleep(0.05)
        began = time.monotonic()
        assert await tier.get(rkey, TARGET) is None
        took = time.monotonic() - began
        await pause
    finally:
        await tier.close()
    assert took < TIMEOUT + 0.1
    assert tier.stats.errors["timeout"] == 1


async def test_a_full_server_fails_stores_but_not_the_answer(redis: RedisServer) -> None:
    tier = await open_tier(redis.url)
    try:
        await redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        await redis.cli("CONFIG", "SET", "maxmemory", "1")
        rkey = tier.key("e", None, b"k")
        await tier.publish(rkey, entry("v"), 60.0, None)
        assert not tier.stats.available
        assert await tier.get(rkey, TARGET) is None
    finally:
        await tier.close()
    assert tier.stats.errors["out-of-memory"] == 1


async def test_rediss_checks_the_server_against_the_system_cas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rediss://``: the server's certificate must chain to a CA the system trusts; here the
    test's own CA is made the system's (``SSL_CERT_FILE``), then taken away again."""
    ca = _make_ca(tmp_path)
    server = _issue(tmp_path, "redis", "IP:127.0.0.1")
    tls_port = free_port()
    async with redis_server() as redis:
        await redis.restart_with(
            *("--port", "0", "--tls-port", str(tls_port), "--tls-auth-clients", "no"),
            *("--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key)),
            *("--tls-ca-cert-file", str(ca)),
        )
        url = f"rediss://127.0.0.1:{tls_port}/0"
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        trusted = await open_tier(url)
        try:
            rkey = trusted.key("e", None, b"k")
            await trusted.publish(rkey, entry("v"), 60.0, None)
            found = await trusted.get(rkey, TARGET)
        finally:
            await trusted.close()
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-file"))
        untrusted = await open_tier(url)
        try:
            refused = await untrusted.get(rkey, TARGET)
        finally:
            await untrusted.close()

    assert found is not None
    assert found.outcome == Found("v")
    assert refused is None
    assert untrusted.stats.errors["connection"] == 1, "an untrusted certificate: no connection"


async def test_a_reload_that_changes_the_section_moves_every_endpoint_to_a_new_tier(
    redis: RedisServer, api: FakeApi, tmp_path: Path
) -> None:
    api.answer_json(["v"])
    endpoint = endpoint_config("tcp-lookup", api.url, **{"cache-ttl": 60_000})
    policy = endpoint_config("policy", api.url)

    def document(prefix: str) -> dict[str, Any]:
        shared = {"url": redis.unix_url, "key-prefix": prefix}
        return {"shared-cache": shared, "endpoints": [endpoint, policy]}

    path = write_config(tmp_path, document("one:"))
    daemon = Daemon(parse_config(document("one:")), path)
    await daemon.start()
    try:
        lookups, policies = daemon.endpoints
        assert lookups.shared_tier is not None
        assert policies.shared_tier is None, "policy answers are never cached, nor shared"
        await daemon.reload()
        assert daemon.endpoints[0] is lookups, "the same section: nothing changes"
        write_config(tmp_path, document("two:"))
        assert await daemon.reload()
        moved = daemon.endpoints[0]
    finally:
        await daemon.stop()

    assert moved is not lookups
    assert moved.shared_tier is not None
    assert moved.shared_tier.settings.key_prefix == "two:"
    assert len(daemon.shared_tier_stats) == 1, "the old tier was closed"


async def test_a_full_server_still_carries_the_answer_to_the_waiters(redis: RedisServer) -> None:
    """The store fails, the message does not: a lookup waiting on another instance's lock gets
    the answer instead of waiting until the lock expires."""
    first, second = await open_tier(redis.url), await open_tier(redis.url)
    try:
        rkey = first.key("e", None, b"k")
        token = await first.lock(rkey, 5.0, TARGET)
        assert isinstance(token, str)
        await redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        await redis.cli("CONFIG", "SET", "maxmemory", "1")
        await asyncio.sleep(0.1)
        waiting = asyncio.ensure_future(second.wait(rkey, 5.0))
        await asyncio.sleep(0)
        began = time.monotonic()
        await first.publish(rkey, entry("answer"), 60.0, token)
        published = await waiting
        took = time.monotonic() - began
    finally:
        await first.close()
        await second.close()

    assert isinstance(published, SharedEntry)
    assert published.outcome == Found("answer")
    assert took < 1.0
    assert first.stats.errors["out-of-memory"] >= 1


async def test_the_lock_step_gives_a_fresh_entry_and_locks_past_a_stale_one(
    redis: RedisServer,
) -> None:
    """Between a miss and the lock another instance may store the answer: one step tells."""
    tier = await open_tier(redis.url)
    try:
        fresh, stale, junk = (tier.key("e", None, name) for name in (b"fresh", b"stale", b"junk"))
        await tier.publish(fresh, entry("new"), 60.0, None)
        await tier.publish(stale, entry("old", ttl=-1.0), 60.0, None)  # kept for stale use only
        await redis.cli("SET", junk.decode(), "{not json")
        got_fresh = await tier.lock(fresh, 5.0, TARGET)
        got_stale = await tier.lock(stale, 5.0, TARGET)
        got_junk = await tier.lock(junk, 5.0, TARGET)
        other_target = await tier.lock(fresh, 5.0, "http://other/lookup")
    finally:
        await tier.close()

    assert isinstance(got_fresh, SharedEntry)
    assert got_fresh.outcome == Found("new")
    assert isinstance(got_stale, str), "a stale entry is fetched again, under the lock"
    assert isinstance(got_junk, str), "garbage counts as no entry: fetched under the lock"
    assert other_target is True


# the read path's own connection (cache/pipelined.py)


async def test_reads_authenticate_with_username_and_password_and_use_the_urls_database(
    redis: RedisServer,
) -> None:
    """The read path connects on its own: it must log in as the rest does, and read the URL's
    database; a wrong password is no entry, counted, never a hit."""
    await redis.cli("ACL", "SETUSER", "reader", "on", ">r3ader", "~*", "&*", "+@all")
    await redis.cli("ACL", "SETUSER", "default", "off")  # only the reader may log in now
    url = f"redis://127.0.0.1:{redis.port}/3"
    settings = SharedCacheSettings(
        url=url, key_prefix=PREFIX, timeout=TIMEOUT * 10, username="reader", password="r3ader"
    )
    tier = SharedTier(settings)
    wrong = SharedTier(
        SharedCacheSettings(
            url=url, key_prefix=PREFIX, timeout=TIMEOUT * 10, username="reader", password="wrong"
        )
    )
    try:
        rkey = tier.key("e", None, b"k")
        await tier.publish(rkey, entry("v"), 60.0, None)
        found = await tier.get(rkey, TARGET)
        refused = await wrong.get(rkey, TARGET)
        in_db_3 = await redis.cli(
            "--user", "reader", "--pass", "r3ader", "-n", "3", "EXISTS", rkey.decode()
        )
    finally:
        await tier.close()
        await wrong.close()
    assert found is not None
    assert found.outcome == Found("v")
    assert in_db_3 == "1"
    assert refused is None
    assert wrong.stats.hits == 0
    assert wrong.stats.errors["other"] >= 1


async def test_a_reply_too_large_to_be_an_entry_closes_the_read_connection_only(
    redis: RedisServer,
) -> None:
    tier = SharedTier(SharedCacheSettings(url=redis.url, key_prefix=PREFIX, timeout=2.0))
    try:
        huge, small = tier.key("e", None, b"huge"), tier.key("e", None, b"small")
        await tier.publish(small, entry("v"), 60.0, None)
        await tier._client.set(huge, b"x" * (MAX_UNPARSED_BYTES + 1024))
        assert await tier.get(huge, TARGET) is None
        assert tier.stats.errors["garbage"] == 1
        found = await tier.get(small, TARGET)  # a new connection for the next read
    finally:
        await tier.close()
    assert found is not None
    assert found.outcome == Found("v")
    assert tier.stats.available


async def test_a_timed_out_read_fails_every_batch_on_its_connection_and_the_next_reconnects(
    redis: RedisServer,
) -> None:
    """Replies come in order on one connection: once one is late, the later ones could not be
    matched to their batch, so all of them fail and the connection is dropped."""
    tier = await open_tier(redis.url)
    try:
        rkey = tier.key("e", None, b"k")
        await tier.publish(rkey, entry("v"), 60.0, None)
        assert await tier.get(rkey, TARGET) is not None  # connected
        pause = asyncio.ensure_future(redis.cli("DEBUG", "SLEEP", "0.3"))
        await asyncio.sleep(0.05)
        first = asyncio.ensure_future(tier.get(rkey, TARGET))
        while not tier._reads:  # noqa: ASYNC110 - its read is queued (this loop's own state)
            await asyncio.sleep(0)
        while tier._reads:  # noqa: ASYNC110 - and written: the next goes in a batch of its own
            await asyncio.sleep(0)
        second = asyncio.ensure_future(tier.get(rkey, TARGET))
        assert (await first, await second) == (None, None)
        await pause
        again = await tier.get(rkey, TARGET)
    finally:
        await tier.close()
    assert tier.stats.errors["timeout"] == 2
    assert again is not None
