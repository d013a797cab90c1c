"""Plain counters the hot path bumps; ``metrics.py`` turns them into Prometheus metrics at scrape.

An increment of a Python int costs far less than a prometheus-client ``inc()`` (which takes a
lock), and nothing here imports the exporter, so the lower layers stay free of it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds; from a cached-at-the-API answer to a request near Postfix's patience."""


@dataclass(slots=True)
class LatencyHistogram:
    """Counts per bucket (value <= bound; the last slot is +Inf) and the sum, as Prometheus has."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


@dataclass(slots=True)
class ApiStats:
    """What one endpoint's REST target answered: by HTTP status or failure kind, and how fast."""

    responses: Counter[int] = field(default_factory=Counter)
    """By HTTP status."""
    errors: Counter[str] = field(default_factory=Counter)
    """Calls without a usable answer: ``timeout``, ``too-large``, ``transport`` or
    ``oauth2-token``."""
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass(slots=True)
class ServiceStats:
    """One endpoint's lookup service: cache use, coalescing, breaker and requests in progress."""

    api_calls: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    coalesced: int = 0
    stale_answers: int = 0
    breaker_rejections: int = 0
    in_flight: int = 0
    """Requests waiting for the API (or for another request's shared API call) right now."""


@dataclass(slots=True)
class SharedTierStats:
    """One process's use of the shared cache tier (Redis or Valkey), all endpoints together."""

    hits: int = 0
    misses: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    """By kind: ``timeout``, ``connection``, ``out-of-memory``, ``read-only``, ``garbage``,
    ``busy`` (every connection of the process in use), ``other``."""
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    lock_waits: int = 0
    """Lookups that waited for another instance's API call of the same key."""
    takeovers: int = 0
    """Waiters that fetched themselves once the fetcher's lock had expired."""
    invalidations: int = 0
    """Invalidation messages received (``purge``, or the web application's own)."""
    available: bool = True
