"""One API call per key across the fleet, through the shared cache tier.

An instance that misses both tiers takes the key's fetch lock (it expires within
``request-timeout``), asks the API, and publishes the answer: stored for the others, and sent
to those waiting. An instance that finds the lock taken waits for that answer, asking for the
lock again at growing intervals; if the fetcher died, its lock expires and a waiter takes over.
Nobody waits past its own ``request-timeout``. The shared tier failing in any way only means
fetching without it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from ..cache.shared import Published, SharedEntry, SharedTier
from ..core.model import Answer, Found, LookupRequest, NotFound, TemporaryError

FIRST_POLL = 0.01
"""Seconds before a waiter asks for the lock again (doubling, at most ``LAST_POLL``): the
answer normally comes sooner, by the ``fetched`` channel."""
LAST_POLL = 0.2
WAITED_TOO_LONG = TemporaryError("another instance's API call of this key did not end in time")


class FleetLookups:
    """One endpoint's use of the shared tier."""

    def __init__(
        self, tier: SharedTier, endpoint: str, target: str, stale_for: float, timeout: float
    ) -> None:
        self._tier = tier
        self._endpoint = endpoint
        self._target = target
        self._stale_for = stale_for
        self._timeout = timeout

    def key(self, request: LookupRequest) -> bytes:
        return self._tier.key(self._endpoint, request.map_name, request.key)

    async def get(self, rkey: bytes) -> SharedEntry | None:
        return await self._tier.get(rkey, self._target)

    async def fetch(
        self,
        rkey: bytes,
        from_api: Callable[[], Awaitable[Answer]],
        ttl_of: Callable[[Answer], float],
    ) -> Answer | SharedEntry:
        """The API's answer (this instance asked it), or the one another instance published."""
        deadline = time.monotonic() + self._timeout
        poll, waited = FIRST_POLL, False
        while True:
            lock = await self._tier.lock(rkey, self._timeout, self._target)
            if isinstance(lock, SharedEntry):
                return lock  # stored by the instance that fetched meanwhile
            if lock is not False:
                if waited:
                    self._tier.stats.takeovers += 1  # the fetcher died: its lock expired
                return await self._ask_and_publish(rkey, from_api, ttl_of, lock)
            if not waited:
                self._tier.stats.lock_waits += 1
                waited = True
            left = deadline - time.monotonic()
            if left <= 0:
                return Answer(WAITED_TOO_LONG)
            published = await self._tier.wait(rkey, min(poll, left))
            poll = min(poll * 2, LAST_POLL)
            if isinstance(published, TemporaryError):
                return Answer(published)
            if published is not None:
                return published

    async def _ask_and_publish(
        self,
        rkey: bytes,
        from_api: Callable[[], Awaitable[Answer]],
        ttl_of: Callable[[Answer], float],
        lock: str | bool,
    ) -> Answer:
        token = lock if isinstance(lock, str) else None
        answer = await from_api()
        outcome = answer.outcome
        published: Published
        if isinstance(outcome, Found | NotFound):
            now = time.time()
            ttl = ttl_of(answer)
            published = SharedEntry(outcome, self._target, now, now + ttl)
            keep_for = max(ttl, self._stale_for if isinstance(outcome, Found) else 0.0)
        else:
            published, keep_for = TemporaryError(outcome.reason), 0.0
        if token is not None or isinstance(published, SharedEntry):
            self._tier.publish_soon(rkey, published, keep_for, token)
        return answer

    def stale(self, entry: SharedEntry | None, now: float) -> Found | None:
        """The fleet's last found answer, if fetched within ``stale-if-error``."""
        if entry is None or not isinstance(entry.outcome, Found):
            return None
        return entry.outcome if now - entry.fetched_at <= self._stale_for else None
