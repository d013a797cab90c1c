"""The lookup service between connections and the REST backend.

Per request: an id, then the cache, then coalescing (concurrent lookups of one key share one API
call), then the circuit breaker and bounded retries inside ``request-timeout``, and, when the API
fails, the last good answer if it is recent enough. Any unexpected exception becomes a temporary
error: nothing here can turn a failure into "not found".

Logins (sasl) take the same path without coalescing or stale answers: only a success is cached,
under an HMAC of the credentials, and a refusal is held back until ``failure-delay`` has passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from ..cache import Cache, CacheKey
from ..cache.shared import SharedEntry
from ..core.context import new_request_id, request_id
from ..core.model import (
    Answer,
    Failure,
    Found,
    LoginRequest,
    LookupRequest,
    NotFound,
    Outcome,
    PolicyRequest,
    TemporaryError,
)
from ..core.stats import ServiceStats
from .fleet import FleetLookups
from .resilience import CircuitBreaker, RetryPolicy, is_transient
from .single_flight import SingleFlight

log = logging.getLogger(__name__)

INTERNAL_ERROR = TemporaryError("internal error")
"""Whatever goes wrong in our own code, Postfix gets a temporary error, never a miss."""
INTERRUPTED = TemporaryError("interrupted")
"""What a ``finally`` records if its fetch never finished (built once, not per request)."""
_UNEXPECTED = "%s: unexpected error, answering a temporary error"
MIN_ATTEMPT = 0.05
"""Seconds an API attempt needs at least; a retry that would get less is not made."""


class Backend(Protocol):
    def refusal(self, request: LookupRequest) -> Failure | None:
        """A lookup that cannot be asked (socketmap: a map without a target), answered now."""
        ...

    async def lookup(
        self, request: LookupRequest, request_id: str, budget: float | None
    ) -> Answer: ...

    async def check_policy(
        self, request: PolicyRequest, request_id: str, budget: float | None
    ) -> Answer: ...

    async def authenticate(
        self, request: LoginRequest, request_id: str, budget: float | None
    ) -> Answer: ...


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """The per-endpoint knobs, in seconds and counts (0 disables a feature)."""

    timeout: float
    retry: RetryPolicy
    cache_scope: str = ""
    """Names the endpoint and its target in every cache key (``cache.cache_scope``)."""
    cache_ttl: float = 0.0
    negative_cache_ttl: float = 0.0
    respect_cache_control: bool = True
    breaker_failures: int = 0
    breaker_cooldown: float = 5.0
    failure_delay: float = 0.0
    """Logins: seconds after its arrival before a refused login is answered."""


class EndpointService:
    """Answers one endpoint's requests from its cache and backend."""

    def __init__(
        self,
        endpoint_name: str,
        backend: Backend,
        settings: ServiceSettings,
        cache: Cache,
        fleet: FleetLookups | None = None,
    ) -> None:
        self._name = endpoint_name
        self._fleet = fleet
        """The shared tier (``shared-cache``), or ``None``: each process on its own."""
        self._backend = backend
        self._settings = settings
        self._scope = settings.cache_scope
        self._cache = cache
        self._breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown)
        self._answers_fresh = settings.cache_ttl > 0 or settings.negative_cache_ttl > 0
        self._in_flight: SingleFlight[CacheKey, Outcome] = SingleFlight()
        """The lookups being fetched: concurrent ones of one key share one API call."""
        self._login_secret = os.urandom(32)
        """Keys the login cache's HMACs: random, and never out of this process's memory."""
        self.stats = ServiceStats()

    @property
    def breaker_state(self) -> str:
        return self._breaker.state.value

    @property
    def cache_entries(self) -> int:
        return len(self._cache)

    def cached(self, request: LookupRequest) -> Found | NotFound | None:
        """A fresh cached answer, found without awaiting anything (the connection's fast path)."""
        if not self._answers_fresh:
            return None  # without TTLs, entries only serve stale-if-error
        outcome = self._cache.fresh((self._scope, request.map_name, request.key), time.time())
        if outcome is not None:
            self.stats.cache_hits += 1
        return outcome

    async def lookup(self, request: LookupRequest) -> Outcome:
        request_id.set(new_request_id())
        cached = self.cached(request)
        if cached is not None:
            return cached
        refused = self._backend.refusal(request)
        if refused is not None:  # no API call: neither the breaker nor a retry may see it
            self._log_outcome(request, refused)
            return refused
        key: CacheKey = (self._scope, request.map_name, request.key)
        stats = self.stats
        stats.cache_misses += 1
        stats.in_flight += 1
        shared = self._in_flight.join(key)
        if shared is not None:
            stats.coalesced += 1
            try:
                # shield: a waiter that is cancelled must not cancel the others' shared answer
                return await asyncio.shield(shared)
            finally:
                stats.in_flight -= 1
        # This asker leads: it fetches inline and publishes the outcome to whoever joined
        # meanwhile. Connections never cancel a request in flight, so the fetch runs to its end
        # even if this asker's client has gone.
        outcome: Outcome = INTERRUPTED
        try:
            outcome = await self._fetch(request, key)
        except Exception:
            log.exception(_UNEXPECTED, self._name)
            outcome = INTERNAL_ERROR
        finally:
            stats.in_flight -= 1
            self._in_flight.finish(key, outcome)
        self._log_outcome(request, outcome)
        return outcome

    async def check_policy(self, request: PolicyRequest) -> Outcome:
        request_id.set(new_request_id())
        self.stats.in_flight += 1
        try:
            outcome = (await self._attempts(partial(self._backend.check_policy, request))).outcome
        except Exception:
            log.exception(_UNEXPECTED, self._name)
            outcome = INTERNAL_ERROR
        finally:
            self.stats.in_flight -= 1
        self._log_outcome(request, outcome)
        return outcome

    def cached_login(self, request: LoginRequest) -> Found | None:
        """A success still within ``cache-ttl`` for exactly these credentials (the fast path)."""
        if self._settings.cache_ttl <= 0:
            return None
        outcome = self._cache.fresh(self._login_key(request), time.time())
        if isinstance(outcome, Found):
            self.stats.cache_hits += 1
            return outcome
        return None

    async def authenticate(self, request: LoginRequest) -> Outcome:
        """The API's verdict on a login. Never coalesced (a password is not a key to share),
        never answered stale; any API failure is temporary, never "authentication failed"."""
        request_id.set(new_request_id())
        arrived = time.monotonic()
        cached = self.cached_login(request)
        if cached is not None:
            return cached
        stats = self.stats
        if self._settings.cache_ttl > 0:
            stats.cache_misses += 1
        stats.in_flight += 1
        try:
            ask = partial(self._backend.authenticate, request)
            outcome = (await self._attempts(ask)).outcome
        except Exception:
            log.exception(_UNEXPECTED, self._name)
            outcome = INTERNAL_ERROR
        finally:
            stats.in_flight -= 1
        if isinstance(outcome, Found) and self._settings.cache_ttl > 0:
            key = self._login_key(request)
            self._cache.store(key, outcome, time.time(), self._settings.cache_ttl)
        self._log_outcome(request, outcome)
        if isinstance(outcome, NotFound):
            # From the login's arrival: a quick "no such user" then looks like a slow check.
            await asyncio.sleep(max(self._settings.failure_delay - time.monotonic() + arrived, 0))
        return outcome

    def _login_key(self, request: LoginRequest) -> CacheKey:
        """Nothing reversible: an HMAC of user name and password (neither may hold a NUL)."""
        credentials = f"{request.username}\x00{request.password}".encode()
        digest = hmac.new(self._login_secret, credentials, hashlib.sha256).digest()
        return (self._scope, None, digest)

    def _log_outcome(
        self, request: LookupRequest | PolicyRequest | LoginRequest, outcome: Outcome
    ) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %r -> %r", self._name, request, outcome)

    async def _fetch(self, request: LookupRequest, key: CacheKey) -> Outcome:
        if self._fleet is not None:
            return await self._fetch_through_fleet(self._fleet, request, key)
        answer = await self._attempts(partial(self._backend.lookup, request))
        return self._settle(key, answer, None)

    async def _fetch_through_fleet(
        self, fleet: FleetLookups, request: LookupRequest, key: CacheKey
    ) -> Outcome:
        """The shared tier first; on a miss, the fleet's one API call of this key."""
        rkey = fleet.key(request)
        shared = await fleet.get(rkey)
        if shared is None or shared.fresh_until <= time.time():
            ask = partial(self._attempts, partial(self._backend.lookup, request))
            result = await fleet.fetch(rkey, ask, self._answer_ttl)
            if isinstance(result, Answer):
                return self._settle(key, result, shared)
            shared = result  # another instance's answer, maybe already past its TTL: shared
        fetched = shared.fetched_at  # kept for the TTL left, and for stale use after
        self._cache.store(key, shared.outcome, fetched, shared.fresh_until - fetched)
        return shared.outcome

    def _settle(self, key: CacheKey, answer: Answer, shared: SharedEntry | None) -> Outcome:
        """Cache a definite answer by its TTL; replace a failure by a recent found answer, from
        this process or (``shared``) from the fleet, when ``stale-if-error`` allows."""
        outcome = answer.outcome
        if isinstance(outcome, Found | NotFound):
            if self._settings.respect_cache_control and answer.max_age == 0:
                self._cache.forget(key)  # no-store: keep nothing, not even for outages
            else:
                self._cache.store(key, outcome, time.time(), self._answer_ttl(answer))
        elif is_transient(outcome):
            now = time.time()
            stale = self._cache.stale(key, now)
            if stale is None and self._fleet is not None:
                stale = self._fleet.stale(shared, now)
            if stale is not None:
                self.stats.stale_answers += 1
                log.debug("%s: API failed (%r); answering the last good value", self._name, outcome)
                return stale
        return outcome

    async def _attempts(self, ask: Callable[[str, float | None], Awaitable[Answer]]) -> Answer:
        """Through the circuit breaker, with up to ``retries`` more attempts on transient
        failures, all within the timeout. Every end is recorded in the breaker, even an exception
        or a cancellation, so a half-open breaker can never get stuck."""
        if not self._breaker.allow(time.monotonic()):
            self.stats.breaker_rejections += 1
            return Answer(TemporaryError("API circuit breaker open"))
        outcome: Outcome = INTERRUPTED
        try:
            rid = request_id.get()
            attempt = 0
            budget = None  # the first attempt has the whole timeout, the client's default
            deadline = time.monotonic() + self._settings.timeout
            while True:
                self.stats.api_calls += 1
                answer = await ask(rid, budget)
                outcome = answer.outcome
                if not is_transient(outcome) or attempt >= self._settings.retry.retries:
                    return answer
                delay = self._settings.retry.delay(attempt)
                if time.monotonic() + delay + MIN_ATTEMPT > deadline:
                    return answer
                await asyncio.sleep(delay)
                attempt += 1
                budget = max(deadline - time.monotonic(), MIN_ATTEMPT)
        finally:
            self._breaker.record(outcome, time.monotonic())

    def _answer_ttl(self, answer: Answer) -> float:
        """Seconds a definite answer stays fresh: its TTL, capped by ``Cache-Control``."""
        outcome, max_age = answer.outcome, answer.max_age
        ttl = (
            self._settings.cache_ttl
            if isinstance(outcome, Found)
            else self._settings.negative_cache_ttl
        )
        if self._settings.respect_cache_control and max_age is not None:
            ttl = min(ttl, max_age)
        return ttl
