"""The serving benchmark's bookkeeping: Prometheus parsing, request plans, rounds, transcript
checks."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from app.engine.adaptation.lora.file import AdapterWeights, dump_adapter, load_adapter
from bench.service_process import (
    decode_passes,
    histogram_quantile,
    metric,
    peak_rss_bytes,
    reset_peak_rss,
)
from bench.serving import (
    Clip,
    Options,
    _requests,
    _rounds,
    combine_loads,
    compare_texts,
    synthetic_adapters,
)

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
pqm_decoded_windows_total{personalised="True",temperature="0.0"} 10.0
pqm_decoded_windows_total{personalised="False",temperature="0.0"} 5.0
pqm_decoded_windows_total{personalised="True",temperature="0.4"} 2.0
"""


def test_metric_reads_one_sample() -> None:
    assert metric(METRICS, 'pqm_adapters_resident{tier="slots"}') == 16
    assert metric(METRICS, "pqm_adapter_load_seconds_count") == 100
    assert metric(METRICS, "pqm_missing") is None


def test_decode_passes_count_every_fallback_temperature_tried() -> None:
    assert decode_passes(METRICS) == 10 + 5 + 2 * 3  # 0.4 after 0.0 and 0.2
    assert decode_passes("") == 0


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


def test_rounds_use_new_audio_and_the_same_audio_for_both_loads() -> None:
    clips = [Clip(Path(f"{i}.wav"), f"text {i}", b"", 1.0) for i in range(12)]
    keys = [(f"key{c}", f"adapter{c}") for c in range(3)]
    options = Options(2, 3, 2, 0, 0, 0, 0, "full", False, rounds=2)
    rounds = _rounds(options, clips, keys)

    def paths(plan: list[list[Any]]) -> list[Path]:
        return [request.clip.path for requests in plan for request in requests]

    assert [paths(r["base"]) for r in rounds] == [paths(r["adapters"]) for r in rounds]
    first, second = (set(paths(r["base"])) for r in rounds)
    assert len(first) == len(second) == 6
    assert not first & second
    adapter_keys = {r.key for requests in rounds[0]["adapters"] for r in requests}
    assert adapter_keys == {"key0", "key1", "key2"}
    # The same users send the base load, asking for the base model.
    base = [r for requests in rounds[0]["base"] for r in requests]
    assert {r.key for r in base} == adapter_keys
    assert all(not r.personalise and r.expected_adapter == "none" for r in base)
    adapted = [r for requests in rounds[0]["adapters"] for r in requests]
    assert all(r.personalise and r.expected_adapter == f"adapter{r.client}" for r in adapted)


def _run(requests: int, wall: float, seconds: list[float], texts: dict[str, str]) -> dict[str, Any]:
    return {
        "requests": requests,
        "failed": 0,
        "failures": [],
        "wrong_adapter_id": 0,
        "decode_passes": requests + 1,
        "wall_seconds": wall,
        "requests_per_second": requests / wall,
        "audio_seconds_per_second": requests / wall,
        "seconds": seconds,
        "texts": texts,
    }


def test_combined_rounds_rate_over_total_wall_time_and_keep_every_text() -> None:
    combined = combine_loads(
        [_run(2, 1.0, [0.1, 0.2], {"0/0": "a", "1/0": "b"}), _run(2, 3.0, [0.3, 0.4], {"0/0": "c"})]
    )
    assert combined["requests"] == 4
    assert combined["requests_per_second"] == pytest.approx(1.0)
    assert combined["rounds_requests_per_second"] == [2.0, pytest.approx(0.667, abs=1e-3)]
    assert combined["texts"] == {"0:0/0": "a", "0:1/0": "b", "1:0/0": "c"}
    assert combined["latency_ms"]["p50"] == pytest.approx(250)
    assert combined["decode_passes_per_request"] == pytest.approx(6 / 4)


def test_jittered_adapters_keep_the_templates_shapes_and_scale_yet_differ() -> None:
    name = "model.encoder.layers.0.self_attn.q_proj"
    template = AdapterWeights(
        tensors={f"{name}.lora_A": torch.ones(2, 6), f"{name}.lora_B": torch.full((4, 2), 0.5)},
        rank=2,
        alpha=16.0,
        base_fingerprint="sha256:base",
    )
    first, second = (
        load_adapter(data)
        for data in synthetic_adapters(dump_adapter(template), 2, "full", kind="jittered")
    )
    for adapter in (first, second):
        assert adapter.alpha == 16.0
        assert {k: v.shape for k, v in adapter.tensors.items()} == {
            k: v.shape for k, v in template.tensors.items()
        }
        a = adapter.tensors[f"{name}.lora_A"]
        assert 0.3 < float(a.mean()) < 1.7  # the template's entries, scaled around 1
    assert not torch.equal(first.tensors[f"{name}.lora_A"], second.tensors[f"{name}.lora_A"])


PEAK_THEN_IDLE = """
import sys
block = bytearray(64 * 2**20)  # touched: resident
del block
print("freed", flush=True)
sys.stdin.readline()
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_rss_counts_a_freed_transient_until_reset() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", PEAK_THEN_IDLE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"freed\n"
        peak = peak_rss_bytes(child.pid)
        assert peak is not None
        assert peak >= 64 * 2**20
        assert reset_peak_rss(child.pid)
        after_reset = peak_rss_bytes(child.pid)
        assert after_reset is not None
        assert after_reset < peak - 48 * 2**20
    finally:
        child.communicate(b"\n", timeout=30)
