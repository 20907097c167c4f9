"""Memory of one served Whisper of each size: NF4 weights, compute copies, an adapter slot of
each method, KV per decoder row, and the adapter slots an 80 GiB device would get by default.

    python -m bench.memory_report [--out docs/benchmarks/memory_report.json]

Computed from each model's dimensions (`app.engine.memory_plan`), not measured: the tests check
the arithmetic against real allocations on tiny.en. Sources of the dimensions:
* tiny, base, small, medium: openai-whisper's `ModelDimensions` of each checkpoint, as printed
  in k2-fsa/sherpa-onnx `scripts/whisper/model-info.md`; FFN width 4 x d_model (openai-whisper
  `ResidualAttentionBlock`: `n_mlp = n_state * 4`).
* large-v3, large-v3-turbo: the hub's `config.json` of openai/whisper-large-v3 and
  openai/whisper-large-v3-turbo (d_model 1280, 20 heads, FFN 5120, 128 mel bins, vocabulary
  51866; 32 encoder layers, 32 or 4 decoder layers), as tests/support/whisper_family.py's
  `FAMILIES` records their layers, mel bins and vocabularies.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.engine.memory_plan import (
    FLOAT32,
    SlotCosts,
    SlotSizing,
    WhisperShape,
    compute_copy_bytes,
    kv_cross_bytes,
    kv_row_bytes,
    kv_token_bytes,
    lora_slot_bytes,
    nf4_weight_bytes,
    saml_slot_bytes,
    size_resident_slots,
)
from bench.common import MIB, REPO_ROOT, print_table, write_json

DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "memory_report.json"
BF16 = 2
LORA_RANK = 8
"""`TrainingConfig.rank`."""
SAML_EXPERTS, SAML_RANK = 10, 1
"""`SamlConfig`'s experts and rank (depthwise routers)."""
EXAMPLE_FREE = 78 * 1024 * MIB
"""Free memory of an 80 GB H100 once a small model is loaded, for the example column."""
EXAMPLE_SIZING = SlotSizing(rows=8 * 8, minimum=8)
"""The service's defaults: a batch of 8 requests, up to 8 rows each."""


def _shape(
    name: str, d: int, heads: int, layers: tuple[int, int], mels: int, vocab: int
) -> WhisperShape:
    return WhisperShape(
        name=name,
        d_model=d,
        encoder_layers=layers[0],
        decoder_layers=layers[1],
        heads=heads,
        ffn=4 * d,
        vocab=vocab,
        n_mels=mels,
    )


SHAPES: tuple[WhisperShape, ...] = (
    _shape("tiny", 384, 6, (4, 4), 80, 51865),
    _shape("base", 512, 8, (6, 6), 80, 51865),
    _shape("small", 768, 12, (12, 12), 80, 51865),
    _shape("medium", 1024, 16, (24, 24), 80, 51865),
    _shape("large-v3", 1280, 20, (32, 32), 128, 51866),
    _shape("large-v3-turbo", 1280, 20, (32, 4), 128, 51866),
)


def row(shape: WhisperShape) -> dict[str, Any]:
    costs = SlotCosts.of(
        shape,
        compute_bytes=BF16,
        kv_bytes=FLOAT32,
        lora_rank=LORA_RANK,
        saml_experts=SAML_EXPERTS,
        saml_rank=SAML_RANK,
    )
    return {
        "model": shape.name,
        "dims": {
            "d_model": shape.d_model,
            "encoder_layers": shape.encoder_layers,
            "decoder_layers": shape.decoder_layers,
            "heads": shape.heads,
            "ffn": shape.ffn,
            "vocab": shape.vocab,
            "n_mels": shape.n_mels,
        },
        "nf4_weight_bytes": nf4_weight_bytes(shape),
        "bf16_compute_copy_bytes": compute_copy_bytes(shape, BF16),
        "lora_slot_bytes": lora_slot_bytes(shape, LORA_RANK),
        "saml_slot_bytes": saml_slot_bytes(shape, SAML_EXPERTS, SAML_RANK),
        "kv_token_bytes_bf16": kv_token_bytes(shape, BF16),
        "kv_cross_bytes_bf16": kv_cross_bytes(shape, BF16),
        "kv_row_bytes_bf16": kv_row_bytes(shape, BF16),
        "kv_row_bytes_fp32": kv_row_bytes(shape, FLOAT32),
        "slots_at_78_gib_free": size_resident_slots(EXAMPLE_FREE, costs, EXAMPLE_SIZING),
    }


def report() -> dict[str, Any]:
    return {
        "benchmark": "memory_report",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "computed": "from the dimensions (app.engine.memory_plan), not measured",
        "assumptions": {
            "lora_rank": LORA_RANK,
            "saml_experts": SAML_EXPERTS,
            "saml_rank": SAML_RANK,
            "kv_row": "448 decoder positions + 1500 encoder frames, every decoder layer",
            "kv_as_served": "float32 (the decoder pass keeps K/V in float32 today)",
            "example_sizing": {
                "free_bytes": EXAMPLE_FREE,
                "rows": EXAMPLE_SIZING.rows,
                "headroom": EXAMPLE_SIZING.headroom,
                "maximum": EXAMPLE_SIZING.maximum,
            },
        },
        "models": [row(shape) for shape in SHAPES],
    }


def table(models: Sequence[dict[str, Any]]) -> list[list[object]]:
    def mib(value: int) -> str:
        return f"{value / MIB:.1f}"

    return [
        [
            m["model"],
            mib(m["nf4_weight_bytes"]),
            mib(m["bf16_compute_copy_bytes"]),
            mib(m["lora_slot_bytes"]),
            mib(m["saml_slot_bytes"]),
            f"{m['kv_token_bytes_bf16'] / 1024:.0f}",
            mib(m["kv_cross_bytes_bf16"]),
            mib(m["kv_row_bytes_bf16"]),
            mib(m["kv_row_bytes_fp32"]),
            m["slots_at_78_gib_free"],
        ]
        for m in models
    ]


HEADERS = [
    "model",
    "NF4 weights MiB",
    "bf16 copies MiB",
    "LoRA r8 slot MiB",
    "SAML slot MiB",
    "KV/token KiB",
    "cross KV MiB",
    "KV/row bf16 MiB",
    "KV/row fp32 MiB",
    "slots @78GiB",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_report", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    data = report()
    write_json(args.out, data)
    print_table(HEADERS, table(data["models"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
