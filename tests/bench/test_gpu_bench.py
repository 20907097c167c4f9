"""bench.gpu_bench end to end on the CPU at toy sizes (`--cpu-smoke`), as gpu_check.sh runs it
on the GPU machine: every step runs, and the loaded model weighs what the memory plan says."""

import json
from pathlib import Path

import pytest

from bench.gpu_bench import main


@pytest.mark.slow
def test_cpu_smoke_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "gpu_bench.json"

    assert main(["--cpu-smoke", "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    assert all(step.get("ok") for step in report["steps"].values()), report["steps"]
    assert set(report["steps"]) >= {"checkpoint", "load", "throughput", "training"}
    plan = report["memory_plan"]
    assert plan["loaded_weight_bytes"] == plan["nf4_weight_bytes"]
    loads = report["throughput"]
    assert list(loads) == ["base", "lora x1", "lora x2"]
    assert loads["lora x2"]["bank_bytes"] == (plan["resident_slots"] + 1) * plan["lora_slot_bytes"]
