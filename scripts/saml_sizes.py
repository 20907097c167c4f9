"""SAML adapter sizes per Whisper shape, routers by kind: what docs/saml.md tabulates.

    python scripts/saml_sizes.py

Counts come from the real `Router` modules (conv: the authors' Conv1d(d, d, 3); depthwise) and
10 rank-1 experts on every attention projection (q, k, v, out) of every encoder self-, decoder
self- and cross-attention; file sizes are float32 tensors. The base parameter counts are the
published ones (embeddings included).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.engine.adaptation.saml.config import ROUTER_KINDS, ROUTES
from app.engine.adaptation.saml.router import router_parameter_count
from bench.common import print_table

SHAPES = {  # d_model, encoder layers, decoder layers, published parameters
    "tiny": (384, 4, 4, 39e6),
    "base": (512, 6, 6, 74e6),
    "small": (768, 12, 12, 244e6),
    "medium": (1024, 24, 24, 769e6),
    "large-v3": (1280, 32, 32, 1550e6),
    "large-v3-turbo": (1280, 32, 4, 809e6),
}
EXPERTS = 10
PROJECTIONS = 4


def rows() -> list[list[object]]:
    table: list[list[object]] = []
    for name, (d_model, encoder, decoder, base) in SHAPES.items():
        experts = EXPERTS * 2 * d_model * PROJECTIONS * (encoder + 2 * decoder)
        for kind in ROUTER_KINDS:
            routers = sum(
                router_parameter_count(d_model, EXPERTS, kind, cross=route == "decoder_cross")
                for route in ROUTES
            )
            total = routers + experts
            table.append(
                [
                    name,
                    kind,
                    f"{routers / 1e6:.3f} M",
                    f"{experts / 1e6:.2f} M",
                    f"{4 * total / 2**20:.1f} MiB",
                    f"{100 * total / base:.2f}%",
                ]
            )
    return table


def main() -> int:
    header = ["model", "router", "routers", "experts", "file", "of the base"]
    print_table(header, rows())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
