"""Draws docs/topology.png, the production topology of docker-compose.yml (README, Production).

python scripts/draw_topology.py [--out docs/topology.png]
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parents[1] / "docs" / "topology.png"

EDGE = "#33415c"
FILL = {
    "client": "#f1f3f5",
    "nginx": "#e7f5ff",
    "api": "#ebfbee",
    "postgres": "#fff4e6",
    "worker": "#f3f0ff",
    "gpu": "#ffffff",
}


def box(
    ax: Axes,
    x: float,
    y: float,
    w: float,
    h: float,
    title: str,
    lines: list[str],
    kind: str,
    dashed: bool = False,
) -> None:
    """A rounded box with its lower left corner at (x, y): a bold title, then smaller lines."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.12",
            facecolor=FILL[kind],
            edgecolor=EDGE,
            linewidth=1.4,
            linestyle="--" if dashed else "-",
        )
    )
    ax.text(x + 0.15, y + h - 0.2, title, fontsize=11.5, fontweight="bold", va="top", color=EDGE)
    ax.text(x + 0.15, y + h - 0.62, "\n".join(lines), fontsize=9, va="top", linespacing=1.45)


def stack(
    ax: Axes, x: float, y: float, w: float, h: float, kind: str, dashed: bool = False
) -> None:
    """Two shadow boxes behind the one drawn at (x, y): several of them."""
    for offset in (0.24, 0.12):
        ax.add_patch(
            FancyBboxPatch(
                (x + offset, y + offset),
                w,
                h,
                boxstyle="round,pad=0.02,rounding_size=0.12",
                facecolor=FILL[kind],
                edgecolor=EDGE,
                linewidth=1.0,
                linestyle="--" if dashed else "-",
            )
        )


def arrow(
    ax: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    label: str,
    label_at: tuple[float, float],
    both: bool = False,
    dashed: bool = False,
) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="<|-|>" if both else "-|>",
            mutation_scale=14,
            color=EDGE,
            linewidth=1.3,
            linestyle="--" if dashed else "-",
        )
    )
    ax.text(
        *label_at,
        label,
        fontsize=8.6,
        ha="center",
        va="center",
        color="#1d2b44",
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5},
    )


def draw(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(16, 9.4), dpi=110)
    ax.set_xlim(0, 16)
    ax.set_ylim(0, 9.4)
    ax.axis("off")
    ax.text(
        0.3,
        9.15,
        "PQM Server in production (docker-compose.yml): nginx in front of N API replicas, "
        "M job workers, one PostgreSQL",
        fontsize=13,
        fontweight="bold",
        color=EDGE,
        va="center",
    )

    top = 5.9
    box(
        ax,
        0.3,
        top + 0.7,
        2.9,
        1.6,
        "clients",
        ["OpenAI SDK, curl,", "the speaker's page (/)", "Authorization: Bearer <key>"],
        "client",
    )
    box(
        ax,
        3.9,
        top,
        3.6,
        2.6,
        "nginx  (:8000)",
        [
            "docker/nginx/pqm.conf.template",
            "auth_request: the key is checked",
            "  before any body is read (401 / 503)",
            "hash on the bearer key, consistent",
            "transcriptions buffered, replayed",
            "  on the next replica if one dies",
        ],
        "nginx",
    )
    stack(ax, 8.9, top, 3.9, 2.6, "api")
    box(
        ax,
        8.9,
        top,
        3.9,
        2.6,
        "api  x N   (pqm serve)",
        [
            "its own NF4 Whisper (tiny.en: 90 MiB)",
            "LoRA bank: 16 resident adapters",
            "adapter host cache (128 MiB, LRU)",
            "batch scheduler: up to 8 requests",
            "  decoded together; its own 503 bounds",
            "PQM_ENROLMENT__WORKER=false",
        ],
        "api",
    )

    bottom = 0.3
    stack(ax, 0.6, bottom, 4.3, 2.6, "worker")
    box(
        ax,
        0.6,
        bottom,
        4.3,
        2.6,
        "worker  x M   (pqm worker)",
        [
            "procrastinate worker: 1 job at a time",
            "  (enrolments, expert-bank builds)",
            "its own NF4 Whisper: checks each new",
            "  adapter before it is stored",
            "training in a child process",
            "  (idle CPU priority, dies with it)",
        ],
        "worker",
    )
    box(
        ax,
        7.3,
        bottom,
        4.6,
        2.6,
        "PostgreSQL 16",
        [
            "users, key hashes, jobs, recordings' rows",
            "adapter and recording blobs",
            "  (PQM_ADAPTER_STORE=sql, the default)",
            "procrastinate queue: a job is deferred in",
            "  the transaction that records its row;",
            "  workers wake on LISTEN/NOTIFY",
        ],
        "postgres",
    )
    box(
        ax,
        12.9,
        bottom,
        2.9,
        2.6,
        "GPU worker (optional)",
        [
            "the CUDA image, pqm worker",
            "PQM_MODEL__DEVICE=cuda",
            "the same queue: takes",
            "  whichever job is next",
            "training: on the GPU too",
            "  (untested: no GPU lent yet)",
        ],
        "gpu",
        dashed=True,
    )

    arrow(ax, (3.2, 7.5), (3.9, 7.5), "HTTP", (3.55, 7.8))
    arrow(ax, (7.5, 7.75), (8.9, 7.75), "same key,\nsame replica", (8.2, 8.25))
    arrow(ax, (7.5, 6.5), (8.9, 6.5), "GET /v1/auth/\ncheck (no body)", (8.2, 6.95))
    arrow(ax, (10.5, top), (10.5, bottom + 2.6), "", (0, 0), both=True)
    ax.text(
        10.7,
        4.4,
        "per transcription: 3 indexed reads\n(key twice, active adapter row), no writes;\n"
        "adapter blob on a cache miss;\nenrolment: rows + job in one transaction",
        fontsize=8.6,
        va="center",
        color="#1d2b44",
    )
    arrow(ax, (4.9, 1.6), (7.3, 1.6), "", (0, 0), both=True)
    ax.text(6.1, 2.0, "LISTEN/NOTIFY,\njob + its lock", fontsize=8.6, ha="center", color="#1d2b44")
    ax.text(
        6.1,
        1.3,
        "recordings in; progress,\nheartbeat, adapter out",
        fontsize=8.6,
        ha="center",
        va="top",
        color="#1d2b44",
    )
    arrow(ax, (12.9, 1.6), (11.9, 1.6), "", (0, 0), both=True, dashed=True)
    ax.text(
        0.3,
        4.4,
        "Replicas and workers share the pqm-data volume (the converted\n"
        "model) and PostgreSQL, nothing else. nginx's ring keeps a speaker's\n"
        "adapter warm on one replica (and a correction where its transcript\n"
        "was served); any replica can serve anyone.",
        fontsize=9,
        va="center",
        color="#495057",
        style="italic",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    draw(parser.parse_args().out)


if __name__ == "__main__":
    main()
