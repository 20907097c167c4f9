"""Heterogeneous LoRA on the NF4 model: this engine's batch against PEFT's mixed-adapter batch.

    python -m bench.lora_paths [--requests 8] [--threads 2] [--out bench/results/lora_paths.json]

`--requests` utterances, each with a different adapter (the same random factors for both
paths), greedy, no timestamps, at most 96 new tokens:

- `engine batch`: this engine, all requests in one continuous batch (`open` / `run_round`);
- `engine one by one`: the same requests one after another;
- `peft mixed batch`: PEFT's own path for mixed adapters, `generate(..., adapter_names=[...])`
  over the bitsandbytes NF4 model (a Python loop over adapters inside every LoRA layer);
- `peft one by one`: PEFT with one adapter set active per request.

Both use tiny.en NF4 (block 64) and the same threads; each path's first call is a warm-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, print_table, write_json

DEFAULT_OUT = RESULTS_DIR / "lora_paths.json"
MODELS_DIR = RESULTS_DIR / "models"
MAX_NEW_TOKENS = 96
STRENGTH = 0.0004


def log(message: str) -> None:
    print(f"[lora_paths] {message}", file=sys.stderr, flush=True)


def _audio(count: int) -> list[Any]:
    from bench import speakers
    from bench.common import load_audio_16k

    out = []
    for index, text in enumerate(speakers.heldout_sentences()[:count]):
        speaker = speakers.SPEAKERS[index % len(speakers.SPEAKERS)]
        path = RESULTS_DIR / "lora-paths-audio" / f"{index:02d}-{speaker.name}.wav"
        if not path.exists():
            speakers.render(speaker, text, path)
        out.append(load_audio_16k(path))
    return out


def _adapters(engine: Any, count: int) -> list[Any]:
    import torch

    from app.engine.adaptation.lora.config import ADAPTABLE
    from app.engine.adaptation.lora.file import AdapterWeights
    from app.engine.adaptation.lora.layer import target_module_names

    adapters = []
    names = target_module_names(engine.model, ADAPTABLE)
    for seed in range(count):
        generator = torch.Generator().manual_seed(seed)
        tensors = {}
        for name in names:
            layer = engine.model.get_submodule(name)
            tensors[f"{name}.lora_A"] = torch.randn(8, layer.in_features, generator=generator)
            tensors[f"{name}.lora_B"] = (
                torch.randn(layer.out_features, 8, generator=generator) * STRENGTH
            )
        adapters.append(
            AdapterWeights(
                tensors=tensors, rank=8, alpha=8.0, base_fingerprint=engine.info.fingerprint
            )
        )
    return adapters


def _timed(function: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def engine_paths(model_dir: Path, audio: list[Any], threads: int) -> dict[str, Any]:
    from app.engine.types import TranscriptionOptions
    from app.engine.whisper import WhisperEngine, max_window_tokens

    engine = WhisperEngine.load(
        model_dir, precision="nf4", device="cpu", threads=threads, resident_slots=len(audio)
    )
    options = TranscriptionOptions(language="en", with_timestamps=False)
    adapters = _adapters(engine, len(audio))
    assert max_window_tokens(3000) >= MAX_NEW_TOKENS

    def batch() -> list[str]:
        tasks = [engine.open(a, options, w) for a, w in zip(audio, adapters, strict=True)]
        live = [task for task in tasks if task is not None]
        while not all(task.done for task in live):
            engine.run_round(live)
        return [task.outcome().text for task in live]

    def one_by_one() -> list[str]:
        return [engine.transcribe(a, options, w).text for a, w in zip(audio, adapters, strict=True)]

    batch()
    texts, batch_s = _timed(batch)
    _, single_s = _timed(one_by_one)
    return {"texts": texts, "batch_s": batch_s, "one_by_one_s": single_s, "adapters": adapters}


def peft_paths(
    model_dir: Path, audio: list[Any], adapters: list[Any], threads: int
) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    from app.engine.loading import load_model

    torch.set_num_threads(threads)
    loaded = load_model(model_dir, precision="nf4", device="cpu")
    targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    config = LoraConfig(r=8, lora_alpha=8, target_modules=targets, lora_dropout=0.0)
    model = get_peft_model(loaded.model, config, adapter_name="a0")
    for index, adapter in enumerate(adapters):
        name = f"a{index}"
        if index:
            model.add_adapter(name, config)
        state = {}
        for key, tensor in adapter.tensors.items():
            module, factor = key.rsplit(".", 1)
            state[f"base_model.model.{module}.{factor}.weight"] = tensor
        set_peft_model_state_dict(model, state, adapter_name=name)
    model.eval()
    features = loaded.feature_extractor(
        [a for a in audio], sampling_rate=16000, return_tensors="pt"
    ).input_features
    names = [f"a{i}" for i in range(len(audio))]
    # tiny.en is English-only: `generate` refuses a language (or task) for it.
    kwargs = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}

    def mixed() -> list[str]:
        with torch.inference_mode():
            ids = model.generate(  # type: ignore[no-untyped-call]
                input_features=features, adapter_names=names, **kwargs
            )
        return list(loaded.tokenizer.batch_decode(ids, skip_special_tokens=True))

    def one_by_one() -> list[str]:
        texts = []
        with torch.inference_mode():
            for index, name in enumerate(names):
                model.set_adapter(name)
                one = features[index : index + 1]
                ids = model.generate(input_features=one, **kwargs)  # type: ignore[no-untyped-call]
                texts.append(loaded.tokenizer.batch_decode(ids, skip_special_tokens=True)[0])
        return texts

    mixed()
    texts, mixed_s = _timed(mixed)
    _, single_s = _timed(one_by_one)
    return {"texts": [t.strip() for t in texts], "mixed_s": mixed_s, "one_by_one_s": single_s}


def run(requests: int, threads: int) -> dict[str, Any]:
    from app.engine.model_import import import_bundled_model

    model_dir = import_bundled_model("tiny.en", MODELS_DIR)
    audio = _audio(requests)
    ours = engine_paths(model_dir, audio, threads)
    log(f"engine: batch {ours['batch_s']:.2f} s, one by one {ours['one_by_one_s']:.2f} s")
    try:
        theirs: dict[str, Any] | None = peft_paths(model_dir, audio, ours["adapters"], threads)
        error = None
    except Exception as exc:  # reported: PEFT's path may not support this model/backend
        theirs, error = None, f"{type(exc).__name__}: {exc}"
        log(f"peft failed: {error}")
    seconds = sum(len(a) for a in audio) / 16000
    return {
        "benchmark": "lora_paths",
        "requests": requests,
        "threads": threads,
        "audio_seconds": round(seconds, 1),
        "engine": {k: v for k, v in ours.items() if k != "adapters"},
        "peft": theirs,
        "peft_error": error,
    }


def print_report(report: dict[str, Any]) -> None:
    rows = [
        ["engine batch (bank slots, per-request LoRA)", report["engine"]["batch_s"]],
        ["engine one by one", report["engine"]["one_by_one_s"]],
    ]
    if report["peft"]:
        rows += [
            ["peft mixed batch (adapter_names)", report["peft"]["mixed_s"]],
            ["peft one by one (set_adapter)", report["peft"]["one_by_one_s"]],
        ]
    print(f"\n== {report['requests']} requests, each with its own adapter, NF4 tiny.en")
    print_table(
        ["path", "wall s", "req/s"],
        [[name, round(s, 2), round(report["requests"] / s, 2)] for name, s in rows],
    )
    if report["peft_error"]:
        print(f"peft: {report['peft_error']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lora_paths", description=__doc__)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report = run(args.requests, args.threads)
    print_report(report)
    write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
