"""The shared cache tier: lookup answers in Redis or Valkey, for every worker of every instance.

It is never in the failure path of mail: every operation has a short deadline (``timeout``), and
any failure (unreachable, slow, out of memory, read-only, restarted, garbage under our keys) makes
it answer "nothing here", so the caller asks the API as if there were no shared tier. After a
failure it stays out of the way until a background probe finds the server again; each change of
state is logged once.

Key format (documented in the README, so that a web application can drop an entry itself):
``<key-prefix><endpoint>:<map>:<key>`` (``<map>`` empty for tcp lookups; the key as Postfix sent
it, raw bytes). Entries are JSON; a value that does not parse is ignored. Channels:
``<key-prefix>invalidate`` (message: a key; every instance drops it from its in-process tier) and
``<key-prefix>fetched`` (an instance's answer for a key, for the instances waiting on its lock).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from ..core.model import Found, NotFound, TemporaryError
from ..core.stats import SharedTierStats
from .pipelined import PipelinedReads, ReadFailed, Server, Values

log = logging.getLogger(__name__)

FAILURES_IN_A_ROW = 3
"""Operations that fail one after the other before the tier gets out of the way: one slow
answer (a busy event loop counts its own delay too) costs only the lookup that waited for it."""
PROBE_INTERVAL = 1.0
"""Seconds between attempts to reach the server again while it is out of the way."""
MAX_CONNECTIONS = 128
"""Connections to the server per process (redis-py's pool: one per operation in flight). A
lookup that finds none free goes without the shared tier at once (``busy``) rather than wait
in line: redis-py's blocking pool measured 1.6 times the CPU per operation under contention."""
MAX_BATCH = 256
"""Keys read in one ``MGET``. The reads that lookups start in one turn of the event loop go
together, on a connection of their own (``pipelined``): one round trip and one reply to parse
instead of one per lookup (docs/performance.md)."""
ENTRY_VERSION = 1

_LOCK_UNLESS_FRESH = """
local entry = redis.call('get', KEYS[1])
if entry then
  local ok, document = pcall(cjson.decode, entry)
  if ok and type(document) == 'table' and tonumber(document['u'])
      and tonumber(document['u']) > tonumber(ARGV[3]) then
    return {1, entry}
  end
end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
"""
"""The key's fresh entry, or else its fetch lock, in one step: between a lookup's miss and its
lock another instance may have stored the answer and dropped its lock (Lua's cjson reads the
entry's ``fresh_until``; one that does not parse counts as none)."""

_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
"""Drop a lock only if it is still ours: it may have expired and been taken over."""


@dataclass(frozen=True, slots=True)
class SharedCacheSettings:
    url: str
    key_prefix: str
    timeout: float
    """Seconds for any one operation."""
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return f"SharedCacheSettings(url={self.url!r}, key_prefix={self.key_prefix!r})"


@dataclass(frozen=True, slots=True)
class SharedEntry:
    """A definite answer as the fleet shares it: wall-clock times, and the target it came from
    (an entry of another target, after a config change, counts as no entry)."""

    outcome: Found | NotFound
    target: str
    fetched_at: float
    fresh_until: float


Published = SharedEntry | TemporaryError
"""What an instance tells those waiting on its lock: its answer, or that it has none."""


def redis_key(prefix: str, endpoint: str, map_name: bytes | None, key: bytes) -> bytes:
    return b"%s%s:%s:%s" % (prefix.encode(), endpoint.encode(), map_name or b"", key)


def encode_entry(entry: SharedEntry) -> bytes:
    document: dict[str, Any] = {
        "v": ENTRY_VERSION,
        "t": entry.target,
        "f": entry.fetched_at,
        "u": entry.fresh_until,
    }
    if isinstance(entry.outcome, Found):
        document.update(o="found", value=entry.outcome.value)
    else:
        document["o"] = "not_found"
    return json.dumps(document, separators=(",", ":")).encode()


def decode_entry(data: bytes) -> SharedEntry | None:
    """``None`` for anything that is not an entry of ours, whatever it holds."""
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("v") != ENTRY_VERSION:
            return None
        target, fetched, fresh = document["t"], document["f"], document["u"]
        kind = document["o"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if not isinstance(target, str) or not all(
        isinstance(time_, int | float) and math.isfinite(time_) for time_ in (fetched, fresh)
    ):
        return None
    if kind == "not_found":
        return SharedEntry(NotFound(), target, float(fetched), float(fresh))
    value = document.get("value")
    if kind != "found" or not isinstance(value, str) or not value:
        return None
    return SharedEntry(Found(value), target, float(fetched), float(fresh))


def _encode_published(rkey: bytes, published: Published) -> bytes:
    body = b'{"o":"error"}' if isinstance(published, TemporaryError) else encode_entry(published)
    return rkey + b"\x00" + body


Invalidated = Callable[[bytes | None, bytes], None]
"""Told a (map name, key) that an invalidation named, for one endpoint's in-process tier."""


class SharedTier:
    """One process's connection to the shared tier, for all its endpoints.

    Every method returns at once with "nothing" while the server is out of the way, and within
    ``timeout`` otherwise; none raises for the server's sake.
    """

    def __init__(self, settings: SharedCacheSettings) -> None:
        from redis.asyncio import ConnectionPool, Redis  # noqa: PLC0415 - only if used

        self.settings = settings
        self.stats = SharedTierStats()
        self._prefix = settings.key_prefix
        self._timeout = settings.timeout
        pool = ConnectionPool.from_url(
            settings.url,
            max_connections=MAX_CONNECTIONS,
            username=settings.username,
            password=settings.password,
            socket_timeout=None,  # each operation has its own deadline (``_call``)
            socket_connect_timeout=settings.timeout,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._client = Redis.from_pool(pool)  # closing the client closes its connections
        self._reads_on_own_connection = PipelinedReads(
            Server.of(settings.url, settings.username, settings.password), settings.timeout
        )
        self._unlock = self._client.register_script(_UNLOCK)
        self._lock = self._client.register_script(_LOCK_UNLESS_FRESH)
        self._invalidated: dict[str, Invalidated] = {}
        self._waiting: dict[bytes, list[asyncio.Future[Published]]] = {}
        self._available = True
        self._failures = 0
        """Operations failed in a row, all kinds but garbage."""
        self._probe: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        """Stores and publications under way, awaited by ``close``."""
        self._reads: dict[bytes, list[asyncio.Future[Any]]] = {}
        """Keys to read in the next ``MGET``, each with the lookups waiting for it."""
        self._read_scheduled = False
        self._closed = False

    @property
    def invalidate_channel(self) -> bytes:
        return self._prefix.encode() + b"invalidate"

    @property
    def fetched_channel(self) -> bytes:
        return self._prefix.encode() + b"fetched"

    def key(self, endpoint: str, map_name: bytes | None, key: bytes) -> bytes:
        return redis_key(self._prefix, endpoint, map_name, key)

    def start(self) -> None:
        """Listen for invalidations and answers (in the background, reconnecting as needed)."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    def on_invalidate(self, endpoint: str, callback: Invalidated) -> Callable[[], None]:
        """Register an endpoint's in-process tier; returns what unregisters it (and only it)."""
        self._invalidated[endpoint] = callback

        def unregister() -> None:
            if self._invalidated.get(endpoint) is callback:
                del self._invalidated[endpoint]

        return unregister

    async def get(self, rkey: bytes, target: str) -> SharedEntry | None:
        if not self._available or self._closed:
            return None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._reads.setdefault(rkey, []).append(future)
        if len(self._reads) >= MAX_BATCH:
            self._read_batch()
        elif not self._read_scheduled:
            self._read_scheduled = True
            asyncio.get_running_loop().call_soon(self._read_scheduled_batch)
        data = await future
        if not isinstance(data, bytes):
            if data is None and self._available:
                self.stats.misses += 1
            return None
        entry = decode_entry(data)
        if entry is None:
            self._failed("garbage")
            return None
        if entry.target != target:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return entry

    def _read_scheduled_batch(self) -> None:
        self._read_scheduled = False
        self._read_batch()

    def _read_batch(self) -> None:
        """One ``MGET`` for the keys asked since the last, pipelined (``PipelinedReads``): each
        lookup waits only for its own future, which gets its key's value, ``None``, or
        ``_FAILED`` for all of them (one failure of the server, counted once)."""
        reads, self._reads = self._reads, {}
        if not reads:
            return
        keys = list(reads)
        started = time.perf_counter()

        def delivered(values: Values | ReadFailed) -> None:
            self.stats.latency.observe(time.perf_counter() - started)
            if isinstance(values, ReadFailed):
                self._failed(values.kind)
                replies: list[Any] = [_FAILED] * len(keys)
            else:
                self._failures = 0
                replies = values
            for key, value in zip(keys, replies, strict=True):
                for future in reads[key]:
                    if not future.done():  # a lookup cancelled meanwhile
                        future.set_result(value)

        if not self._available or self._closed:
            delivered(ReadFailed("connection"))  # not counted: out of the way already
            return
        self._reads_on_own_connection.mget(keys, delivered)

    async def lock(self, rkey: bytes, seconds: float, target: str) -> SharedEntry | str | bool:
        """The fresh entry another instance stored meanwhile; else a token if this instance now
        holds the key's fetch lock; ``False`` if another one does; ``True`` if the tier cannot
        say (out of the way, or an entry it cannot use): fetch without a lock."""
        token = os.urandom(12).hex()
        px = str(max(int(seconds * 1000), 1))
        reply = await self._call(
            self._lock, keys=[rkey, rkey + b"\x00lock"], args=[token, px, repr(time.time())]
        )
        if reply is _FAILED or not isinstance(reply, list) or not reply:
            return True
        if reply[0] == 2:
            return token
        if reply[0] == 1 and len(reply) == 2 and isinstance(reply[1], bytes):
            entry = decode_entry(reply[1])
            if entry is not None and entry.target == target:
                self.stats.hits += 1
                return entry
            self._failed("garbage")
            return True
        return False

    async def publish(
        self, rkey: bytes, published: Published, keep_for: float, token: str | None
    ) -> None:
        """Tell the waiters, store the answer (for ``keep_for`` seconds, if any), drop the lock.

        When this instance held the key's lock, each step is tried even if one before failed (a
        full server refuses the store, not the message): a lock left behind would hold the other
        instances' lookups of this key until it expires. It runs in the background, so a failing
        server costs no lookup its time."""
        held = token is not None  # others may wait on this lock: they must hear, and it must go
        message = _encode_published(rkey, published)
        await self._call(self._client.publish, self.fetched_channel, message, anyway=held)
        if isinstance(published, SharedEntry) and keep_for > 0:
            px = max(int(keep_for * 1000), 1)
            await self._call(self._client.set, rkey, encode_entry(published), px=px, anyway=held)
        elif isinstance(published, SharedEntry):
            await self._call(self._client.delete, rkey, anyway=held)  # no-store: nothing may stay
        if token is not None:
            await self._call_script(rkey + b"\x00lock", token)

    def publish_soon(
        self, rkey: bytes, published: Published, keep_for: float, token: str | None
    ) -> None:
        """``publish`` in the background: never in the way of the answer it publishes."""
        self._in_background(self.publish(rkey, published, keep_for, token))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait(self, rkey: bytes, seconds: float) -> Published | None:
        """Another instance's answer for ``rkey``, if it comes within ``seconds``."""
        future: asyncio.Future[Published] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(rkey, [])
        waiting.append(future)
        try:
            return await asyncio.wait_for(future, seconds)
        except TimeoutError:
            return None
        finally:
            waiting.remove(future)
            if not waiting:
                self._waiting.pop(rkey, None)

    async def invalidate(self, rkey: bytes) -> bool:
        """Delete the entry and tell every instance (the ``purge`` command)."""
        deleted = await self._call(self._client.delete, rkey)
        published = await self._call(self._client.publish, self.invalidate_channel, rkey)
        return deleted is not _FAILED and published is not _FAILED

    async def close(self) -> None:
        """After what is being published; then nothing more is sent."""
        await asyncio.gather(*self._background, return_exceptions=True)
        self._closed = True
        for task in (self._listener, self._probe):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(task for task in (self._listener, self._probe) if task), return_exceptions=True
        )
        self._reads_on_own_connection.close()
        await self._client.aclose()

    # the server, behind deadlines

    async def _call(
        self,
        operation: Callable[..., Awaitable[Any]],
        *args: Any,
        anyway: bool = False,
        **options: Any,
    ) -> Any:
        """The command's reply, or ``_FAILED`` (counted, maybe logged) when there is none;
        while the server is out of the way, at once, unless ``anyway`` (in the background)."""
        if (not self._available and not anyway) or self._closed:
            return _FAILED
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                reply = await operation(*args, **options)
        except TimeoutError:
            self._failed("timeout")
        except Exception as error:  # noqa: BLE001 - every failure of the tier means "nothing"
            self._failed(_error_kind(error))
        else:
            self._failures = 0
            return reply
        finally:
            self.stats.latency.observe(time.perf_counter() - started)
        return _FAILED

    async def _call_script(self, lock_key: bytes, token: str) -> None:
        """Drop the lock if it is still ours; tried even while the server is out of the way
        (in the background: see ``publish``)."""
        if self._closed:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._unlock(keys=[lock_key], args=[token])
        except TimeoutError:
            self._failed("timeout")
        except Exception as error:  # noqa: BLE001 - the lock expires by itself anyway
            self._failed(_error_kind(error))

    def _failed(self, kind: str) -> None:
        self.stats.errors[kind] += 1
        if kind in ("garbage", "busy") or not self._available or self._closed:
            return  # one entry's problem, or ours (all connections in use), not the server's
        self._failures += 1
        if self._failures < FAILURES_IN_A_ROW and kind in ("timeout", "connection"):
            return  # a server that refuses (full, read-only) says so for good: at once
        self._available = self.stats.available = False
        log.warning(
            "shared cache %s: %s; answering from the API without it until it is back",
            self.settings.url.split("@")[-1],
            kind,
        )
        self._probe = asyncio.get_running_loop().create_task(self._until_back())

    async def _until_back(self) -> None:
        while not self._closed:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                async with asyncio.timeout(max(self._timeout, 0.2)):
                    await self._client.ping()
                    # a server with no room or no writes is not back: it would fail every store
                    await self._client.set(self._prefix + "probe", b"1", px=1000)
            except Exception as error:  # noqa: BLE001 - still away: try again later
                log.debug("shared cache still unavailable: %s", _error_kind(error))
                continue
            self._available = self.stats.available = True
            self._failures = 0
            log.warning("shared cache %s is back", self.settings.url.split("@")[-1])
            return

    async def _listen(self) -> None:
        """Invalidations and answers, from a subscription renewed whenever it breaks."""
        while not self._closed:
            pubsub = self._client.pubsub()
            failure: BaseException | None = None
            try:
                await self._receive(pubsub)
            except BaseException as error:  # noqa: BLE001 - raised again once it is closed
                failure = error
            # not in a ``finally``: compiled with mypyc, an ``await`` there can re-raise an
            # exception handled earlier
            await asyncio.shield(cast(Any, pubsub).aclose())  # untyped in redis-py
            if failure is not None and not isinstance(failure, Exception):
                raise failure  # cancelled
            if failure is not None:  # subscribe again after a pause
                log.debug("shared cache subscription lost: %s", _error_kind(failure))
                await asyncio.sleep(PROBE_INTERVAL)

    async def _receive(self, pubsub: Any) -> None:
        await pubsub.subscribe(self.invalidate_channel, self.fetched_channel)
        while not self._closed:
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=PROBE_INTERVAL
            )
            if message is not None:
                self._received(message["channel"], message["data"])

    def _received(self, channel: bytes, data: Any) -> None:
        if not isinstance(data, bytes):
            return
        if channel == self.invalidate_channel:
            self.stats.invalidations += 1
            self._drop(data)
        elif channel == self.fetched_channel:
            rkey, _, body = data.partition(b"\x00")
            waiting = self._waiting.get(rkey)
            if not waiting:
                return
            published: Published | None = (
                TemporaryError("the fetching instance got no answer from the API")
                if body == b'{"o":"error"}'
                else decode_entry(body)
            )
            if published is None:
                return
            for future in waiting:
                if not future.done():
                    future.set_result(published)

    def _drop(self, rkey: bytes) -> None:
        """``<prefix><endpoint>:<map>:<key>``: endpoint names hold no ``:`` (checked at load),
        nor do Postfix's map names."""
        prefix = self._prefix.encode()
        if not rkey.startswith(prefix):
            return
        endpoint, _, rest = rkey[len(prefix) :].partition(b":")
        map_name, colon, key = rest.partition(b":")
        callback = self._invalidated.get(endpoint.decode("utf-8", "replace"))
        if callback is not None and colon and key:
            callback(map_name or None, key)


_FAILED: Any = object()
"""What ``_call`` returns for a command that got no reply."""


def _error_kind(error: BaseException) -> str:
    """By kind only: a server's message may carry a key, and a URL a password."""
    from redis import exceptions  # noqa: PLC0415 - only where the shared tier is configured

    if isinstance(error, exceptions.MaxConnectionsError):
        return "busy"
    if isinstance(error, exceptions.OutOfMemoryError):
        return "out-of-memory"
    if isinstance(error, exceptions.ReadOnlyError):
        return "read-only"
    if isinstance(error, exceptions.TimeoutError):
        return "timeout"
    if isinstance(error, exceptions.ConnectionError | OSError):
        return "connection"
    return "other"
