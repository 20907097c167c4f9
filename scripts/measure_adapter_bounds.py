"""Measures how far trained adapters move the weights they adapt, to choose the adapter bounds.

    python scripts/measure_adapter_bounds.py --speakers george,yweweler --speechocean 4

Trains adapters at the service's default settings (`TrainingConfig()`): FSDD speakers (the
enrolment split of `scripts/tune_lora.py`) and real speechocean762 pool speakers (20 utterances,
15% held out for early stopping), then reports per module `||scale * B A||_F / ||W||_F`
against the NF4 weights served, and where `lora.file.MAX_UPDATE_RATIO` sits above the largest.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tune_lora import TMP, fsdd_utterances

from app.engine.adaptation.lora.file import (
    MAX_SCALE,
    MAX_UPDATE_RATIO,
    AdapterWeights,
    dump_adapter,
    load_adapter,
    update_ratios,
)
from app.engine.model_import import import_bundled_model
from app.engine.training import TrainingConfig, Utterance, split_train_dev, train_adapter
from app.engine.whisper import WhisperEngine
from bench.serving import synthetic_adapters
from bench.speakers import load
from bench.speechocean import build_suite


def summary(ratios: list[float]) -> dict[str, float]:
    ordered = sorted(ratios)
    return {
        "min": round(ordered[0], 5),
        "median": round(statistics.median(ordered), 5),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 5),
        "max": round(ordered[-1], 5),
    }


def speechocean_speakers(count: int) -> dict[str, list[Utterance]]:
    """`count` speakers of the pool half (alternately children and adults, in manifest order),
    all 20 utterances each: the evaluation half is for benchmarks only."""
    pool = build_suite("pool")
    children = [name for name, data in pool.speakers.items() if data.info["group"] == "child"]
    adults = [name for name, data in pool.speakers.items() if data.info["group"] == "adult"]
    chosen = [name for pair in zip(children, adults, strict=False) for name in pair][:count]
    return {
        name: [
            Utterance(audio=load(u), text=u.text)
            for u in pool.speakers[name].train + pool.speakers[name].test
        ]
        for name in chosen
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", default="george,yweweler")
    parser.add_argument("--enrol", type=int, default=40)
    parser.add_argument("--speechocean", type=int, default=4, help="real speakers to train")
    parser.add_argument("--models-dir", type=Path, default=TMP / "pqm-models")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/adapter_bounds.json"))
    args = parser.parse_args()
    model_dir = import_bundled_model("tiny.en", args.models_dir)
    engine = WhisperEngine.load(model_dir, precision="nf4", device="cpu", threads=1)
    config = TrainingConfig()
    runs: list[dict[str, Any]] = []
    uploads = {
        f"fsdd/{speaker}": fsdd_utterances(
            speaker, range(0, 30), args.enrol, f"fsdd-enrol-{speaker}"
        )
        for speaker in args.speakers.split(",")
    }
    uploads |= {
        f"speechocean762/{speaker}": utterances
        for speaker, utterances in speechocean_speakers(args.speechocean).items()
    }
    for speaker, enrol in uploads.items():
        train, dev = split_train_dev(enrol, 0.15, seed=0, min_dev=3)
        started = time.monotonic()
        adapter = train_adapter(model_dir, train, dev, config).adapter
        assert isinstance(adapter, AdapterWeights), "train_adapter trains LoRA"
        ratios = update_ratios(adapter, engine.base_weight_norms())
        largest = max(ratios, key=ratios.__getitem__)
        runs.append(
            {
                "speaker": speaker,
                "train_seconds": round(time.monotonic() - started, 1),
                "rank": adapter.rank,
                "scale": adapter.scale,
                "modules": len(ratios),
                "ratio": summary(list(ratios.values())),
                "largest_module": largest,
                "ratios": {name: round(value, 5) for name, value in sorted(ratios.items())},
            }
        )
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "ratios"}), flush=True)
    # bench/serving.py's stand-ins for many users: random factors, and a trained adapter jittered
    assert isinstance(adapter, AdapterWeights)
    template = dump_adapter(adapter)
    synthetic = {}
    for kind in ("random", "jittered"):
        files = synthetic_adapters(template, 8, "fit", kind=kind)
        pooled = [
            ratio
            for data in files
            for ratio in update_ratios(load_adapter(data), engine.base_weight_norms()).values()
        ]
        synthetic[f"bench.serving {kind} (8 adapters)"] = summary(pooled)
    worst = max(
        [run["ratio"]["max"] for run in runs] + [entry["max"] for entry in synthetic.values()]
    )
    report = {
        "what": "||scale * B A||_F / ||W||_F per adapted module, W the served NF4 weight",
        "model": "tiny.en",
        "precision": "nf4",
        "training": "TrainingConfig(); FSDD as scripts/tune_lora.py; speechocean762 pool: all 20",
        "bound": {"max_update_ratio": MAX_UPDATE_RATIO, "max_scale": MAX_SCALE},
        "largest_measured": worst,
        "margin": round(MAX_UPDATE_RATIO / worst, 1),
        "synthetic": synthetic,
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
