"""The Prometheus view of a daemon: every endpoint's counters as metric families.

The hot path only bumps plain counters (``core.stats``, ``Endpoint.answered``); this collector reads
them at scrape time, so metrics cost nothing per request beyond those increments. Endpoints are
looked up at every scrape, so a reload's new endpoints appear at once (their counters start at 0,
which Prometheus treats as a counter reset).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import __version__
from ..core.model import Found, NotFound, PermanentError, TemporaryError, Timeout
from ..core.stats import LATENCY_BUCKETS, LatencyHistogram, SharedTierStats
from ..runtime.endpoint import Endpoint
from ..service.resilience import BreakerState

PREFIX = "postfix_rest_api_connector"
OUTCOME_LABELS = {
    Found: "found",
    NotFound: "not_found",
    TemporaryError: "temporary",
    PermanentError: "permanent",
    Timeout: "timeout",
}
LOGIN_OUTCOME_LABELS = {
    Found: "ok",
    NotFound: "failed",
    PermanentError: "failed",
    TemporaryError: "temporary",
    Timeout: "temporary",
}
"""sasl: a login succeeded, was refused (by the API, or by the connector for input it cannot
use), or failed for now (smtpd answers 454)."""


def _by_outcome(mode: str, answered: Counter[type]) -> dict[str, int]:
    """Replies sent, by the outcome label the mode's metrics use."""
    if mode != "sasl":
        return {label: answered[kind] for kind, label in OUTCOME_LABELS.items()}
    counts = dict.fromkeys(LOGIN_OUTCOME_LABELS.values(), 0)
    for kind, label in LOGIN_OUTCOME_LABELS.items():
        counts[label] += answered[kind]
    return counts


class Observed(Protocol):
    """What the daemon shows the admin listener."""

    @property
    def endpoints(self) -> Sequence[Endpoint]: ...

    @property
    def ready(self) -> bool: ...

    @property
    def reloads(self) -> Counter[str]: ...

    @property
    def shared_tier_stats(self) -> Sequence[SharedTierStats]:
        """The shared cache tier's figures; empty without ``shared-cache``."""
        ...


class ConnectorCollector(Collector):
    """Every endpoint's counters as Prometheus metric families, read at scrape time."""

    def __init__(self, daemon: Observed) -> None:
        self._daemon = daemon

    def collect(self) -> Iterator[Metric]:
        endpoints = list(self._daemon.endpoints)
        yield InfoMetricFamily(
            f"{PREFIX}_build", "Version of the connector", {"version": __version__}
        )
        yield from self._requests(endpoints)
        yield from self._api(endpoints)
        yield from self._service(endpoints)
        reloads = CounterMetricFamily(
            f"{PREFIX}_config_reloads", "SIGHUP reloads, by result", labels=["result"]
        )
        for result in ("ok", "failed"):
            reloads.add_metric([result], self._daemon.reloads[result])
        yield reloads
        tasks = GaugeMetricFamily(
            f"{PREFIX}_event_loop_tasks",
            "asyncio tasks alive in this process: back to its idle figure once the load is gone",
        )
        tasks.add_metric([], len(asyncio.all_tasks()))
        yield tasks
        tiers = self._daemon.shared_tier_stats
        if tiers:
            yield from _shared_tier(tiers)

    @staticmethod
    def _requests(endpoints: list[Endpoint]) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            f"{PREFIX}_requests",
            "Replies sent to Postfix, by outcome (policy: found is an action from the API)",
            labels=["endpoint", "mode", "outcome"],
        )
        connections = GaugeMetricFamily(
            f"{PREFIX}_connections_open", "Open Postfix connections", labels=["endpoint"]
        )
        for endpoint in endpoints:
            name = endpoint.config.name
            mode = endpoint.config.mode
            for outcome, count in _by_outcome(mode, endpoint.answered).items():
                requests.add_metric([name, mode, outcome], count)
            connections.add_metric([name], len(endpoint.tracker.open))
        yield requests
        yield connections

    @staticmethod
    def _api(endpoints: list[Endpoint]) -> Iterator[Metric]:
        responses = CounterMetricFamily(
            f"{PREFIX}_api_responses", "API answers, by HTTP status", labels=["endpoint", "status"]
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_api_errors",
            "API calls without a usable answer (timeout, too-large, transport, oauth2-token)",
            labels=["endpoint", "kind"],
        )
        latency = HistogramMetricFamily(
            f"{PREFIX}_api_request_duration_seconds",
            "Time from sending an API request to its answer or failure",
            labels=["endpoint"],
        )
        for endpoint in endpoints:
            name, stats = endpoint.config.name, endpoint.api_stats
            for status, count in sorted(stats.responses.items()):
                responses.add_metric([name, str(status)], count)
            for kind, count in sorted(stats.errors.items()):
                errors.add_metric([name, kind], count)
            latency.add_metric([name], _buckets(stats.latency), stats.latency.total)
        yield from (responses, errors, latency)

    @staticmethod
    def _service(endpoints: list[Endpoint]) -> Iterator[Metric]:
        counters = {
            "cache_hits": "Lookups answered from the cache",
            "cache_misses": "Lookups the cache could not answer",
            "coalesced": "Lookups that shared another lookup's API call",
            "stale_answers": "Lookups answered with a stale value because the API failed",
            "breaker_rejections": "Requests failed at once by the open circuit breaker",
            "api_calls": "API calls made, retries included",
        }
        families = {
            field: CounterMetricFamily(f"{PREFIX}_{field}", text, labels=["endpoint"])
            for field, text in counters.items()
        }
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_requests_in_flight", "Requests waiting for the API", labels=["endpoint"]
        )
        entries = GaugeMetricFamily(
            f"{PREFIX}_cache_entries", "Entries in the lookup cache", labels=["endpoint"]
        )
        breaker = GaugeMetricFamily(
            f"{PREFIX}_breaker_state",
            "Circuit breaker state: 1 for the current one",
            labels=["endpoint", "state"],
        )
        for endpoint in endpoints:
            name, service = endpoint.config.name, endpoint.service
            for field, family in families.items():
                family.add_metric([name], getattr(service.stats, field))
            in_flight.add_metric([name], service.stats.in_flight)
            entries.add_metric([name], service.cache_entries)
            for state in BreakerState:
                breaker.add_metric([name, state.value], float(state.value == service.breaker_state))
        yield from families.values()
        yield from (in_flight, entries, breaker)


def _shared_tier(tiers: Sequence[SharedTierStats]) -> Iterator[Metric]:
    """The process's shared cache tier (``shared-cache``): one set, all endpoints together."""
    counters = {
        "hits": "Lookups answered from the shared cache tier",
        "misses": "Lookups the shared cache tier did not have",
        "lock_waits": "Lookups that waited for another instance's API call of the same key",
        "takeovers": "Waiters that asked the API once the fetching instance's lock expired",
        "invalidations": "Invalidations received (purge, or the web application's own)",
    }
    for field, text in counters.items():
        family = CounterMetricFamily(f"{PREFIX}_shared_cache_{field}", text)
        family.add_metric([], sum(getattr(stats, field) for stats in tiers))
        yield family
    errors = CounterMetricFamily(
        f"{PREFIX}_shared_cache_errors",
        "Shared cache operations without an answer, by kind",
        labels=["kind"],
    )
    kinds: Counter[str] = Counter()
    for stats in tiers:
        kinds.update(stats.errors)
    for kind, count in sorted(kinds.items()):
        errors.add_metric([kind], count)
    yield errors
    latency = HistogramMetricFamily(
        f"{PREFIX}_shared_cache_duration_seconds", "Time of one shared cache operation"
    )
    merged = LatencyHistogram()
    for stats in tiers:
        merged.counts = [a + b for a, b in zip(merged.counts, stats.latency.counts, strict=True)]
        merged.total += stats.latency.total
    latency.add_metric([], _buckets(merged), merged.total)
    yield latency
    up = GaugeMetricFamily(
        f"{PREFIX}_shared_cache_up",
        "1 while the shared cache tier is in use, 0 while it is out of the way",
    )
    up.add_metric([], float(all(stats.available for stats in tiers)))
    yield up


def _buckets(histogram: LatencyHistogram) -> list[tuple[str, float]]:
    cumulative, buckets = 0, []
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), histogram.counts, strict=True):
        cumulative += count
        buckets.append((_le(bound), float(cumulative)))
    return buckets


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
