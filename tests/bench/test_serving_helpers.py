"""The serving benchmark's bookkeeping: Prometheus parsing, request plans, transcript checks."""

from pathlib import Path

import pytest

from bench.service_process import histogram_quantile, metric
from bench.serving import Clip, _requests, compare_texts

METRICS = """\
# HELP pqm_adapter_load_seconds Loading an adapter.
# TYPE pqm_adapter_load_seconds histogram
pqm_adapter_load_seconds_bucket{le="0.01"} 0.0
pqm_adapter_load_seconds_bucket{le="0.02"} 50.0
pqm_adapter_load_seconds_bucket{le="0.05"} 99.0
pqm_adapter_load_seconds_bucket{le="+Inf"} 100.0
pqm_adapter_load_seconds_count 100.0
pqm_adapter_load_seconds_sum 2.0
pqm_adapters_resident{tier="slots"} 16.0
"""


def test_metric_reads_one_sample() -> None:
    assert metric(METRICS, 'pqm_adapters_resident{tier="slots"}') == 16
    assert metric(METRICS, "pqm_adapter_load_seconds_count") == 100
    assert metric(METRICS, "pqm_missing") is None


def test_histogram_quantiles_interpolate_within_buckets() -> None:
    assert histogram_quantile(METRICS, "pqm_adapter_load_seconds", 0.5) == pytest.approx(0.02)
    assert histogram_quantile(METRICS, "pqm_adapter_load_seconds", 0.25) == pytest.approx(0.015)
    assert histogram_quantile(METRICS, "pqm_adapter_load_seconds", 0.99) == pytest.approx(0.05)
    assert histogram_quantile(METRICS, "pqm_nothing", 0.5) is None


def test_every_request_of_a_plan_is_a_different_clip() -> None:
    clips = [Clip(Path(f"{i}.wav"), f"text {i}", b"", 1.0) for i in range(12)]
    keys = [(f"key{c}", f"adapter{c}") for c in range(3)]
    plan = _requests(clips, keys, clients=3, per_client=4)
    paths = [request.clip.path for requests in plan for request in requests]
    assert len(paths) == len(set(paths)) == 12
    assert all(r.key == f"key{c}" for c, requests in enumerate(plan) for r in requests)


def test_compare_texts_counts_every_difference() -> None:
    concurrent = {"texts": {"0/0": "a", "0/1": "b", "1/0": "c"}}
    alone = {"texts": {"0/0": "a", "0/1": "B", "1/0": "c"}}
    assert compare_texts(concurrent, alone) == {"compared": 3, "mismatches": 1, "keys": ["0/1"]}
