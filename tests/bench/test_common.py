"""The benchmarks' helpers give exact, known values (scoring: tests/engine/test_text.py)."""

import pytest

from bench.common import format_table, latency_stats_ms


def test_latency_stats_are_in_milliseconds() -> None:
    stats = latency_stats_ms([0.1, 0.2, 0.3, 0.4, 0.5])
    assert stats["p50"] == pytest.approx(300.0)
    assert stats["mean"] == pytest.approx(300.0)
    assert stats["p95"] == pytest.approx(480.0)
    assert stats["min"] == pytest.approx(100.0)
    assert stats["max"] == pytest.approx(500.0)


def test_format_table_aligns_numbers_right() -> None:
    table = format_table(["name", "ms"], [["fp32", "12"], ["nf4", "3"], ["gone", None]])
    assert table.splitlines() == [
        "name  ms",
        "----  --",
        "fp32  12",
        "nf4    3",
        "gone   -",
    ]
