"""How several workers' metric families combine into one view, and their form on the wire."""

from __future__ import annotations

import json

import pytest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from postfix_rest_api_connector.admin.merge import BadFigures, from_wire, merge, to_wire

P = "postfix_rest_api_connector"


def worker_figures(requests: float, open_connections: float, other: float) -> list[Metric]:
    """One worker's families, one of each kind the merge treats differently."""
    counter = CounterMetricFamily(f"{P}_requests", "r", labels=["outcome"])
    counter.add_metric(["found"], requests)
    histogram = HistogramMetricFamily(f"{P}_api_request_duration_seconds", "h")
    histogram.add_metric([], [("0.1", requests - 1), ("+Inf", requests)], sum_value=requests / 10)
    summed = GaugeMetricFamily(f"{P}_connections_open", "c", value=open_connections)
    unknown = GaugeMetricFamily(f"{P}_some_new_gauge", "a gauge nobody chose a rule for")
    unknown.add_metric([], other)
    process = CounterMetricFamily("process_cpu_seconds", "cpu", value=other)
    info = InfoMetricFamily(f"{P}_build", "v", {"version": "1"})
    return [counter, histogram, summed, unknown, process, info]


def by_sample(families: list[Metric]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
    }


def test_counters_histograms_and_chosen_gauges_add_up_others_are_per_worker() -> None:
    merged = by_sample(merge({0: worker_figures(5, 2, 7), 1: worker_figures(3, 1, 11)}))
    assert merged == {
        (f"{P}_requests_total", frozenset({("outcome", "found")})): 8,
        (f"{P}_api_request_duration_seconds_bucket", frozenset({("le", "0.1")})): 6,
        (f"{P}_api_request_duration_seconds_bucket", frozenset({("le", "+Inf")})): 8,
        (f"{P}_api_request_duration_seconds_count", frozenset()): 8,
        (f"{P}_api_request_duration_seconds_sum", frozenset()): 0.8,
        (f"{P}_connections_open", frozenset()): 3,
        (f"{P}_some_new_gauge", frozenset({("worker", "0")})): 7,
        (f"{P}_some_new_gauge", frozenset({("worker", "1")})): 11,
        ("process_cpu_seconds_total", frozenset({("worker", "0")})): 7,
        ("process_cpu_seconds_total", frozenset({("worker", "1")})): 11,
        (f"{P}_build_info", frozenset({("version", "1")})): 1,
        (f"{P}_worker_up", frozenset({("worker", "0")})): 1,
        (f"{P}_worker_up", frozenset({("worker", "1")})): 1,
        (f"{P}_worker_requests_total", frozenset({("worker", "0")})): 5,
        (f"{P}_worker_requests_total", frozenset({("worker", "1")})): 3,
    }


def test_a_worker_missing_is_labelled_and_left_out_of_the_sums() -> None:
    merged = by_sample(merge({1: worker_figures(3, 1, 11)}, missing=[0]))
    assert merged[(f"{P}_requests_total", frozenset({("outcome", "found")}))] == 3
    assert merged[(f"{P}_worker_up", frozenset({("worker", "0")}))] == 0
    assert (f"{P}_worker_requests_total", frozenset({("worker", "0")})) not in merged


def test_families_survive_the_wire() -> None:
    families = worker_figures(5, 2, 7)
    received = from_wire(json.loads(json.dumps(to_wire(families))))
    assert [(f.name, f.type, f.documentation) for f in received] == [
        (f.name, f.type, f.documentation) for f in families
    ]
    assert by_sample(received) == by_sample(families)


@pytest.mark.parametrize(
    "document",
    [
        {"families": []},
        [["x", "gauge", "help"]],
        [["x", "no-such-type", "help", []]],
        [["x", "gauge", "help", [["x", {}, "1"]]]],
        [["x", "gauge", "help", [["x", {}, True]]]],
        [["x", "gauge", "help", [["x", {"a": 1}, 1]]]],
        [["x", "gauge", "help", [["x", 1]]]],
        [["not a name", "gauge", "help", []]],
        [["x", "gauge", "help", [["x", {"a b": "1"}, 1]]]],
    ],
    ids=[
        "not-a-list",
        "no-samples",
        "bad-type",
        "text-value",
        "bool-value",
        "label-not-text",
        "short-sample",
        "bad-name",
        "bad-label-name",
    ],
)
def test_a_document_of_another_shape_is_refused(document: object) -> None:
    with pytest.raises(BadFigures):
        from_wire(document)
