"""Per-row adapters in a decoder step: per request (a pair of matmuls per adapted request) against
gathered (every row's factors gathered once, two batched matmuls per projection), on this
machine's CPU.

    python -m bench.adapter_matmul [--requests 1 2 4 8 16] [--steps 50] [--threads 2]
                                   [--note TEXT] [--out docs/benchmarks/adapter_matmul.json]

What a decoder step adds to its base projections (`app.engine.row_adapters`), for the shapes of
the bundled Whisper tiny and base: every step projection of every decoder layer (q/k/v stacked,
out, cross-attention q and out, fc1, fc2), each request with its own rank-8 adapter on all of
them (the training default), one row per request (greedy). The paths alternate in blocks
(`BLOCKS` of them): per block, `ARRANGES` arrangements of the batch, then `--steps` steps. The
table gives per step the median over blocks and the fastest block (on a shared machine the
fastest is the nearest to the path's own cost), and gathered / per request of each.
`arrange` is what a path pays whenever the batch's rows change (a request joins or leaves):
building the spans, or gathering the rows' factors.

`bits`: whether a row's update keeps its bits whatever the batch. Per request it does by
construction (the same two matmuls over the request's own rows); for gathered, one row's update
is computed alone at its own rank and then among other rows and zero-padded to a larger rank,
over shapes the decoders use, and the cases whose bits differ are counted.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bench.common import REPO_ROOT, print_table, write_json

DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "adapter_matmul.json"
RANK = 8
BLOCKS = 12
ARRANGES = 5
AdapterPath = Literal["per_request", "gathered"]
PATHS: tuple[AdapterPath, ...] = ("per_request", "gathered")


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    d_model: int
    decoder_layers: int

    def projections(self) -> dict[str, tuple[int, int, int]]:
        """Step projection -> (in, out, rank) as the decoder adds them (q/k/v stacked)."""
        d, ffn = self.d_model, 4 * self.d_model
        return {
            "self_qkv": (d, 3 * d, 3 * RANK),
            "self_out": (d, d, RANK),
            "cross_q": (d, d, RANK),
            "cross_out": (d, d, RANK),
            "fc1": (d, ffn, RANK),
            "fc2": (ffn, d, RANK),
        }


SHAPES = (Shape("tiny", 384, 4), Shape("base", 512, 6))


def _request_factors(shape: Shape, seed: int) -> list[dict[str, Any]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(shape.decoder_layers):
        factors = {}
        for name, (fan_in, fan_out, rank) in shape.projections().items():
            a = torch.randn(rank, fan_in, generator=generator).T  # column-major, as the bank's
            factors[name] = (a, torch.randn(rank, fan_out, generator=generator) * 0.01)
        layers.append(factors)
    return layers


def _measure(shape: Shape, requests: int, steps: int) -> dict[str, Any]:
    import torch

    from app.engine.row_adapters import row_adapters

    factors = [_request_factors(shape, seed) for seed in range(requests)]
    inputs = {
        name: torch.randn(requests, 1, fan_in)
        for name, (fan_in, _, _) in shape.projections().items()
    }
    outputs = {
        name: torch.zeros(requests, 1, fan_out)
        for name, (_, fan_out, _) in shape.projections().items()
    }
    adapters = {path: row_adapters(path, torch.device("cpu")) for path in PATHS}
    arrangement = {
        path: [(adapter.admit(f), 1) for f in factors] for path, adapter in adapters.items()
    }
    arrange_us: dict[str, list[float]] = {path: [] for path in PATHS}
    step_us: dict[str, list[float]] = {path: [] for path in PATHS}

    def step(path: AdapterPath) -> None:
        adapter = adapters[path]
        for layer in range(shape.decoder_layers):
            for name, x in inputs.items():
                adapter.apply(layer, name, x, outputs[name])

    for block in range(BLOCKS):
        for path in PATHS if block % 2 == 0 else PATHS[::-1]:
            for _ in range(ARRANGES):
                started = time.perf_counter()
                adapters[path].arrange(arrangement[path])
                arrange_us[path].append((time.perf_counter() - started) * 1e6)
            for _ in range(max(1, steps // 10)):  # warm-up
                step(path)
            started = time.perf_counter()
            for _ in range(steps):
                step(path)
            step_us[path].append((time.perf_counter() - started) * 1e6 / steps)
    result: dict[str, Any] = {"model": shape.name, "requests": requests}
    for path in PATHS:
        result[path] = {
            "step_us": round(statistics.median(step_us[path]), 1),
            "step_us_fastest": round(min(step_us[path]), 1),
            "arrange_us": round(statistics.median(arrange_us[path]), 1),
            "arrange_us_fastest": round(min(arrange_us[path]), 1),
        }
    for measure in ("step_us", "step_us_fastest", "arrange_us"):
        ratio = result["gathered"][measure] / result["per_request"][measure]
        result[f"gathered_over_per_request_{measure}"] = round(ratio, 3)
    return result


def _gathered_bits() -> dict[str, int]:
    """How often one row's gathered update changes bits with the batch's row count (the rank
    unpadded) or with the padding of its rank (any row count), against the row alone."""
    import torch

    generator = torch.Generator().manual_seed(0)
    cases = {"row_count": 0, "row_count_changed": 0, "padding": 0, "padding_changed": 0}
    for fan_in, fan_out in ((384, 1152), (384, 1536), (1536, 384), (512, 2048), (2048, 512)):
        for rank in (1, 2, 3, 4, 8, 12, 24):
            a = torch.randn(rank, fan_in, generator=generator).T
            b = torch.randn(rank, fan_out, generator=generator)
            x = torch.randn(1, 1, fan_in, generator=generator)
            alone = None
            for padded in (rank, rank + 4, 24, 48):
                for rows in (1, 2, 3, 5, 8, 16, 32):
                    stack_a = torch.zeros(rows, fan_in, padded)
                    stack_b = torch.zeros(rows, padded, fan_out)
                    stack_a[0, :, :rank], stack_b[0, :rank] = a, b
                    inputs = torch.randn(rows, 1, fan_in, generator=generator)
                    inputs[0] = x[0]
                    low = torch.bmm(inputs, stack_a)
                    row = torch.zeros(rows, 1, fan_out).baddbmm_(low, stack_b)[0]
                    alone = row if alone is None else alone
                    kind = "row_count" if padded == rank else "padding"
                    cases[kind] += 1
                    cases[f"{kind}_changed"] += int(not torch.equal(row, alone))
    return cases


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.adapter_matmul", description=__doc__)
    parser.add_argument("--requests", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=50, help="per block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. the machine's load)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        results = [_measure(shape, n, args.steps) for shape in SHAPES for n in args.requests]
        bits = _gathered_bits()
    print_table(
        [
            "model",
            "requests",
            "per request us",
            "gathered us",
            "ratio",
            "fastest: per request",
            "gathered",
            "ratio",
            "arrange us: per request",
            "gathered",
        ],
        [
            [
                r["model"],
                r["requests"],
                r["per_request"]["step_us"],
                r["gathered"]["step_us"],
                f"{r['gathered_over_per_request_step_us']:.2f}x",
                r["per_request"]["step_us_fastest"],
                r["gathered"]["step_us_fastest"],
                f"{r['gathered_over_per_request_step_us_fastest']:.2f}x",
                r["per_request"]["arrange_us"],
                r["gathered"]["arrange_us"],
            ]
            for r in results
        ],
    )
    print(
        f"gathered, a row's bits: changed in {bits['row_count_changed']} of {bits['row_count']} "
        f"row counts, {bits['padding_changed']} of {bits['padding']} paddings"
    )
    write_json(
        args.out,
        {
            "benchmark": "adapter_matmul",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "threads": args.threads,
                "torch": torch.__version__,
                "note": args.note,
            },
            "rank": RANK,
            "steps_per_block": args.steps,
            "blocks": BLOCKS,
            "arranges_per_block": ARRANGES,
            "results": results,
            "gathered_bits": bits,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
