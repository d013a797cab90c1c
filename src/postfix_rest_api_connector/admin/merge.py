"""Several workers' metric families as one view, and the compact form a worker sends a peer.

Labels are decided where each family is made (``metrics.py``, prometheus-client's
``ProcessCollector``); this module decides only how equal families of several workers combine,
by family name and type:

- counters and histograms are summed (a histogram's cumulative buckets, count and sum add up);
- gauges are labelled by ``worker``, except those in ``SUMMED_GAUGES``, whose sum has a meaning
  (a gauge added later is therefore never summed into nonsense by default);
- ``PER_WORKER`` families and every ``process_*`` family are labelled by ``worker`` whatever
  their type (one process's CPU, memory and descriptors; a worker's reloads);
- info families show each distinct label set once.

Two families exist only in the merged view: ``worker_up`` (1 for each worker whose figures are
in, 0 for one that did not answer: the gap is labelled) and ``worker_requests`` (replies by
worker, all endpoints: how the kernel spread the connections).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.metrics_core import METRIC_TYPES, Metric
from prometheus_client.registry import Collector

from .metrics import PREFIX

SUMMED_GAUGES = frozenset(
    {
        f"{PREFIX}_connections_open",
        f"{PREFIX}_requests_in_flight",
        f"{PREFIX}_cache_entries",
        f"{PREFIX}_breaker_state",
    }
)
"""Open connections and requests waiting are the service's; cache entries are what all workers
hold (a key cached by two counts twice); a breaker state's sum is how many workers are in it."""
PER_WORKER = frozenset({f"{PREFIX}_config_reloads"})
"""Each worker reloads the file itself, and one may fail what another applied."""
WORKER_UP = f"{PREFIX}_worker_up"
WORKER_REQUESTS = f"{PREFIX}_worker_requests"
_REQUESTS = f"{PREFIX}_requests"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
"""Family, sample and label names as the classic text format writes them unquoted."""

Wire = list[list[Any]]
"""``[[name, type, help, [[sample name, {label: value}, value], ...]], ...]``: JSON."""


class BadFigures(ValueError):
    """A peer's document is not what ``to_wire`` makes."""


def to_wire(families: Iterable[Metric]) -> Wire:
    """The families as plain lists, for ``json.dumps`` (no text to parse again at the peer)."""
    return [
        [family.name, family.type, family.documentation, [list(s[:3]) for s in family.samples]]
        for family in families
    ]


def from_wire(document: object) -> list[Metric]:
    """The families a peer sent; ``BadFigures`` for anything but the shape ``to_wire`` makes."""
    if not isinstance(document, list):
        raise BadFigures("not a list of families")
    families = []
    for item in document:
        match item:
            case [str(name), str(kind), str(text), list(samples)] if (
                kind in METRIC_TYPES and _NAME.fullmatch(name)
            ):
                family = Metric(name, text, kind)
                for sample in samples:
                    family.add_sample(*_sample(sample))
                families.append(family)
            case _:
                raise BadFigures("a family is not [name, type, help, samples]")
    return families


def _sample(sample: object) -> tuple[str, dict[str, str], float]:
    match sample:
        case [str(name), dict(labels), int() | float() as value] if not isinstance(
            value, bool
        ) and _NAME.fullmatch(name):
            if all(
                isinstance(k, str) and _NAME.fullmatch(k) and isinstance(v, str)
                for k, v in labels.items()
            ):
                return name, labels, float(value)
    raise BadFigures("a sample is not [name, {label: value}, number]")


def _per_worker(family: Metric) -> bool:
    if family.name in PER_WORKER or family.name.startswith("process_"):
        return True
    return family.type == "gauge" and family.name not in SUMMED_GAUGES


def merge(by_worker: Mapping[int, list[Metric]], missing: Iterable[int] = ()) -> list[Metric]:
    """One family per name over every worker's figures (in the order first seen), plus
    ``worker_up`` and ``worker_requests``; ``missing``: workers whose figures are not in."""
    merged: dict[str, Metric] = {}
    samples: dict[str, dict[tuple[str, frozenset[tuple[str, str]]], list[Any]]] = {}
    for worker, families in sorted(by_worker.items()):
        for family in families:
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type)
                samples[family.name] = {}
            per_worker, into = _per_worker(family), samples[family.name]
            for sample in family.samples:
                labels = {**sample.labels, "worker": str(worker)} if per_worker else sample.labels
                seen = into.setdefault((sample.name, frozenset(labels.items())), [labels, 0.0])
                if family.type == "info":  # the same label set in every worker: shown once
                    seen[1] = max(seen[1], sample.value)
                else:
                    seen[1] += sample.value
    for name, family in merged.items():
        for (sample_name, _), (labels, value) in samples[name].items():
            family.add_sample(sample_name, labels, value)
    return [*merged.values(), *_fleet_families(by_worker, missing)]


def _fleet_families(
    by_worker: Mapping[int, list[Metric]], missing: Iterable[int]
) -> Iterator[Metric]:
    up = Metric(
        WORKER_UP, "1 if this worker's figures are in this scrape, 0 if it did not answer", "gauge"
    )
    requests = Metric(
        WORKER_REQUESTS, "Replies sent to Postfix by each worker, all endpoints", "counter"
    )
    answered = dict.fromkeys(by_worker, 1.0) | dict.fromkeys(missing, 0.0)
    for worker, value in sorted(answered.items()):
        up.add_sample(WORKER_UP, {"worker": str(worker)}, value)
    for worker, families in sorted(by_worker.items()):
        total = sum(
            sample.value
            for family in families
            if family.name == _REQUESTS
            for sample in family.samples
            if sample.name == f"{_REQUESTS}_total"
        )
        requests.add_sample(f"{WORKER_REQUESTS}_total", {"worker": str(worker)}, total)
    yield from (up, requests)


class Snapshot(Collector):
    """Families already collected, for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
