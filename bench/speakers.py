"""A reproducible suite of synthetic speakers for the enrolment benchmark (espeak-ng + sox).

    python -m bench.speakers [--quick] [--out bench/results/speakers]

Each `Speaker` is an espeak-ng voice, a voice variant, pitch and rate, and a channel: sox
effects (telephone band-pass, reverb, gain) and optional pink noise mixed in at a given SNR.
Accents: espeak's English voices (American, Scottish, Caribbean, RP), a French voice reading the
English text with French letter-to-sound rules, and German / Spanish / Italian voices speaking
the *English phonemes* of the sentence (`phonemes_from="en-us"`: espeak-ng's en-us phoneme
transcription, spoken as `[[...]]` phoneme input by the foreign voice, whose phoneme inventory
and prosody then give a foreign accent). Reading English text with German, Spanish or Italian
spelling rules instead is unintelligible (tiny.en WER > 1, mostly hallucination), which
measures nothing useful.

Every speaker reads disjoint train (60), dev (10) and test (20) sentences from the enrolment
prompt corpus (`app/data/prompts.txt`), chosen deterministically from its name, plus
20 held-out sentences from `bench/data/heldout_sentences.txt` (a different, formal vocabulary).

Output: 16 kHz mono WAV files and `manifest.json` under the cache directory. A speaker's audio is
regenerated only when a file is missing or its spec (voice, channel, sentences, espeak version,
`SUITE_VERSION`) hashes differently from the manifest's.

Other benchmarks use `build_suite(...)` -> `Suite`, whose `speakers[name].train/dev/test/heldout`
are lists of `Utterance(path, text)`, and `load(utterance)` -> float32 16 kHz audio. `bench.fsdd`
returns the same `Suite` shape for real recordings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

from app.data.prompts import load_prompts
from bench.common import (
    REPO_ROOT,
    RESULTS_DIR,
    SAMPLE_RATE,
    espeak_version,
    load_audio_16k,
    print_table,
    write_json,
)

__all__ = [
    "DEFAULT_OUT",
    "HELDOUT_PATH",
    "QUICK_SPEAKERS",
    "SPEAKERS",
    "Speaker",
    "SpeakerData",
    "Suite",
    "Utterance",
    "build_suite",
    "heldout_sentences",
    "load",
    "select_speakers",
]

SUITE_VERSION = 2
"""Bump to regenerate every speaker (a change to how audio is made that the spec cannot see)."""
DEFAULT_OUT = RESULTS_DIR / "speakers"
HELDOUT_PATH = REPO_ROOT / "bench" / "data" / "heldout_sentences.txt"
MANIFEST = "manifest.json"
SPLIT_SIZES = {"train": 60, "dev": 10, "test": 20}
HELDOUT_SIZE = 20
SPLITS = ("train", "dev", "test", "heldout")
TELEPHONE = ("sinc", "300-3400")
ROOM = ("reverb", "25", "50", "40")
"""sox reverb: reverberance 25 %, HF damping 50 %, room scale 40 % (a small, damped room)."""

AudioArray = npt.NDArray[np.float32]


# ---------------------------------------------------------------------------------------------
# Records shared with bench.fsdd


@dataclass(frozen=True, slots=True)
class Utterance:
    path: Path
    """The 16 kHz WAV file (synthetic) or, for a spliced utterance, its first source clip."""
    text: str
    parts: tuple[Path, ...] = ()
    """When set, the audio is these clips joined by `gap_s` of silence (nothing is written)."""
    gap_s: float = 0.0


@dataclass(slots=True)
class SpeakerData:
    name: str
    description: str
    train: list[Utterance] = field(default_factory=list)
    dev: list[Utterance] = field(default_factory=list)
    test: list[Utterance] = field(default_factory=list)
    heldout: list[Utterance] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Utterance]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}")
        utterances: list[Utterance] = getattr(self, name)
        return utterances


@dataclass(slots=True)
class Suite:
    kind: str
    """"synthetic" or "fsdd"."""
    root: Path
    speakers: dict[str, SpeakerData]
    score_text: Callable[[str], str] = field(default=lambda text: text)
    """Applied to a hypothesis before WER (FSDD spells digits out one by one)."""
    info: dict[str, Any] = field(default_factory=dict)


def load(utterance: Utterance) -> AudioArray:
    """The utterance's audio as float32 mono at 16 kHz."""
    if not utterance.parts:
        return load_audio_16k(utterance.path)
    gap = np.zeros(round(utterance.gap_s * SAMPLE_RATE), dtype=np.float32)
    pieces: list[AudioArray] = []
    for index, part in enumerate(utterance.parts):
        if index:
            pieces.append(gap)
        pieces.append(load_audio_16k(part))
    return np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32)


def print_suite(suite: Suite, column: str) -> None:
    """Per speaker: `info[column]`, utterances per split and minutes of audio."""
    from bench.common import print_table

    rows = []
    for data in suite.speakers.values():
        every = [u for split in SPLITS for u in data.split(split)]
        counts = [len(data.split(split)) for split in SPLITS]
        rows.append([data.name, data.info[column], *counts, f"{audio_seconds(every) / 60:.2f}"])
    print_table(("speaker", column, *SPLITS, "minutes"), rows)


def audio_seconds(utterances: Iterable[Utterance]) -> float:
    """Total duration, from the files' headers where possible (no decoding)."""
    total = 0.0
    for utterance in utterances:
        if utterance.parts:
            total += sum(sf.info(str(part)).duration for part in utterance.parts)
            total += utterance.gap_s * (len(utterance.parts) - 1)
        else:
            total += sf.info(str(utterance.path)).duration
    return total


# ---------------------------------------------------------------------------------------------
# Speakers


@dataclass(frozen=True, slots=True)
class Speaker:
    name: str
    voice: str
    """espeak-ng voice, optionally with a variant: `en-gb-scotland+m3`."""
    pitch: int = 50
    """espeak-ng -p, 0-99."""
    speed: int = 160
    """espeak-ng -s, words per minute."""
    phonemes_from: str | None = None
    """When set, the voice speaks this (English) voice's phoneme transcription of the text."""
    effects: tuple[str, ...] = ()
    """sox effects after resampling to 16 kHz mono, as sox arguments."""
    snr_db: float | None = None
    """Pink noise mixed in at this signal-to-noise ratio (none when None)."""
    gain_db: float = -3.0
    """Final level change (after noise), leaving headroom against clipping."""
    accent: str = ""
    """What the voice is meant to sound like (report only)."""

    def describe_voice(self) -> str:
        if self.phonemes_from is None:
            return self.voice
        return f"{self.voice} ({self.phonemes_from} phonemes)"

    def describe_effects(self) -> str:
        parts = []
        if TELEPHONE[0] in self.effects:
            parts.append("telephone")
        if ROOM[0] in self.effects:
            parts.append("reverb")
        if self.snr_db is not None:
            parts.append(f"pink {self.snr_db:g} dB SNR")
        return ", ".join(parts) or "clean"

    def spec(self) -> dict[str, Any]:
        return asdict(self)


SPEAKERS: tuple[Speaker, ...] = (
    Speaker(
        "de-m3",
        "de+m3",
        pitch=45,
        speed=150,
        phonemes_from="en-us",
        accent="German accent (English phonemes, German voice)",
    ),
    Speaker(
        "scot-phone",
        "en-gb-scotland+m3",
        pitch=40,
        speed=165,
        effects=(*TELEPHONE, "gain", "4"),
        accent="Scottish English, telephone band",
    ),
    Speaker("us-clean", "en-us", pitch=50, speed=160, accent="American English (control)"),
    Speaker(
        "fr-f3",
        "fr-fr+f3",
        pitch=65,
        speed=150,
        effects=ROOM,
        accent="French voice reading English by French spelling rules, small room",
    ),
    Speaker(
        "es-m2",
        "es+m2",
        pitch=40,
        speed=145,
        phonemes_from="en-us",
        accent="Spanish accent (English phonemes, Spanish voice)",
    ),
    Speaker(
        "it-f4-phone",
        "it+f4",
        pitch=60,
        speed=150,
        phonemes_from="en-us",
        effects=TELEPHONE,
        accent="Italian accent (English phonemes, Italian voice), telephone band",
    ),
    Speaker(
        "carib-f2",
        "en-029+f2",
        pitch=70,
        speed=175,
        effects=ROOM,
        accent="Caribbean English, small room",
    ),
    Speaker(
        "rp-m5-noise",
        "en-gb-x-rp+m5",
        pitch=35,
        speed=140,
        snr_db=15.0,
        accent="British RP, pink noise",
    ),
)
POOL_SPEAKERS: tuple[Speaker, ...] = (
    Speaker("pool-nl-f1", "nl+f1", pitch=62, speed=150, phonemes_from="en-us", accent="Dutch"),
    Speaker("pool-pl-m2", "pl+m2", pitch=42, speed=145, phonemes_from="en-us", accent="Polish"),
    Speaker("pool-pt-m1", "pt+m1", pitch=48, speed=155, phonemes_from="en-us", accent="Portuguese"),
    Speaker("pool-ru-f2", "ru+f2", pitch=66, speed=150, phonemes_from="en-us", accent="Russian"),
    Speaker("pool-sv-m4", "sv+m4", pitch=38, speed=160, phonemes_from="en-us", accent="Swedish"),
    Speaker("pool-hi-f5", "hi+f5", pitch=60, speed=155, phonemes_from="en-us", accent="Hindi"),
    Speaker("pool-nyc-m6", "en-us-nyc+m6", pitch=45, speed=170, accent="New York City English"),
    Speaker("pool-lancs-f1", "en-gb-x-gbclan+f1", pitch=58, speed=150, accent="Lancaster English"),
    Speaker(
        "pool-wmids-m7",
        "en-gb-x-gbcwmd+m7",
        pitch=40,
        speed=150,
        effects=TELEPHONE,
        accent="West Midlands English, telephone band",
    ),
    Speaker(
        "pool-gb-f4-noise",
        "en-gb+f4",
        pitch=64,
        speed=165,
        snr_db=15.0,
        accent="British English, pink noise",
    ),
)
"""Other voices, disjoint from `SPEAKERS`, whose recordings build the synthetic suite's expert
bank (`bench.methods`): a SAML bank is pre-trained on speakers other than the targets."""
QUICK_SPEAKERS = ("de-m3", "scot-phone", "us-clean")
"""`quick=True`: a hard accent, a channel effect, and a control."""


def select_speakers(
    names: Sequence[str] | None = None, *, quick: bool = False
) -> tuple[Speaker, ...]:
    """The named speakers (all, or the quick three); raises `ValueError` for an unknown name."""
    by_name = {speaker.name: speaker for speaker in SPEAKERS}
    wanted = list(names) if names else list(QUICK_SPEAKERS if quick else by_name)
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise ValueError(f"unknown synthetic speaker(s) {unknown}; known: {sorted(by_name)}")
    return tuple(by_name[name] for name in wanted)


# ---------------------------------------------------------------------------------------------
# Sentences


def heldout_sentences(path: Path = HELDOUT_PATH) -> tuple[str, ...]:
    lines = (line.strip() for line in path.read_text("utf-8").splitlines())
    return tuple(dict.fromkeys(line for line in lines if line))


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:8], "big")


def assign_sentences(name: str) -> dict[str, list[str]]:
    """The speaker's sentences per split: disjoint within the speaker, chosen from its name."""
    prompts = list(load_prompts())
    needed = sum(SPLIT_SIZES.values())
    if len(prompts) < needed:
        raise ValueError(f"the prompt corpus has {len(prompts)} sentences, need {needed}")
    chosen = random.Random(_seed("prompts", name)).sample(prompts, needed)
    splits: dict[str, list[str]] = {}
    start = 0
    for split, size in SPLIT_SIZES.items():
        splits[split] = chosen[start : start + size]
        start += size
    heldout = list(heldout_sentences())
    splits["heldout"] = random.Random(_seed("heldout", name)).sample(
        heldout, min(HELDOUT_SIZE, len(heldout))
    )
    return splits


# ---------------------------------------------------------------------------------------------
# Audio


def pink_noise(samples: int, rng: np.random.Generator) -> AudioArray:
    """Unit-RMS pink (1/f power) noise, shaped in the frequency domain."""
    if samples == 0:
        return np.zeros(0, dtype=np.float32)
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    freqs = np.fft.rfftfreq(samples)
    freqs[0] = freqs[1] if samples > 1 else 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n=samples)
    rms = float(np.sqrt(np.mean(noise**2))) or 1.0
    return (noise / rms).astype(np.float32)


def add_noise(audio: AudioArray, snr_db: float, seed: int) -> AudioArray:
    """`audio` plus pink noise at `snr_db` below the speech's power (over non-silent samples)."""
    voiced = audio[np.abs(audio) > 1e-4]
    power = float(np.mean(voiced**2)) if voiced.size else 0.0
    if power == 0.0:
        return audio
    noise = pink_noise(audio.size, np.random.default_rng(seed))
    scale = np.sqrt(power / (10.0 ** (snr_db / 10.0)))
    noisy: AudioArray = (audio + scale * noise).astype(np.float32)
    return noisy


def phoneme_input(text: str, voice: str) -> str:
    """`text` as espeak-ng phoneme input (`[[...]]`) in `voice`'s phoneme mnemonics."""
    done = subprocess.run(
        ["espeak-ng", "-v", voice, "-q", "-x", text], check=True, capture_output=True, text=True
    )
    phonemes = " ".join(done.stdout.split())
    if not phonemes:
        raise RuntimeError(f"espeak-ng gave no phonemes for {text!r}")
    return f"[[{phonemes}]]"


def render(speaker: Speaker, text: str, path: Path) -> None:
    """Speaks `text` as `speaker` into a 16 kHz mono 16-bit WAV at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    spoken = text if speaker.phonemes_from is None else phoneme_input(text, speaker.phonemes_from)
    with tempfile.TemporaryDirectory(prefix="pqm-speak-") as scratch:
        raw = Path(scratch) / "raw.wav"
        shaped = Path(scratch) / "shaped.wav"
        subprocess.run(
            [
                "espeak-ng",
                "-v",
                speaker.voice,
                "-p",
                str(speaker.pitch),
                "-s",
                str(speaker.speed),
                "-w",
                str(raw),
                spoken,
            ],
            check=True,
            capture_output=True,
        )
        # "-D": no dither, so the output is bit-exact across runs.
        command = ["sox", "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "32"]
        command += ["-e", "floating-point", str(shaped), *speaker.effects]
        subprocess.run(command, check=True, capture_output=True)
        audio, rate = sf.read(str(shaped), dtype="float32")
    if rate != SAMPLE_RATE:
        raise RuntimeError(f"sox wrote {rate} Hz, expected {SAMPLE_RATE}")
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if speaker.snr_db is not None:
        audio = add_noise(audio, speaker.snr_db, _seed("noise", speaker.name, text))
    audio = audio * np.float32(10.0 ** (speaker.gain_db / 20.0))
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0.99:  # telephone gain or noise could clip: normalise instead
        audio = audio * np.float32(0.99 / peak)
    tmp = path.with_suffix(".tmp.wav")
    sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16")
    tmp.replace(path)


def _spec_hash(speaker: Speaker, sentences: dict[str, list[str]], espeak: str) -> str:
    payload = {
        "suite_version": SUITE_VERSION,
        "speaker": speaker.spec(),
        "sentences": sentences,
        "espeak": espeak,
        "sample_rate": SAMPLE_RATE,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _file_name(split: str, index: int) -> str:
    return f"{split}-{index:03d}.wav"


def _read_manifest(out_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data.get("speakers"), dict) else {}


def _build_speaker(
    speaker: Speaker, out_dir: Path, previous: dict[str, Any], espeak: str, workers: int
) -> tuple[SpeakerData, dict[str, Any], int]:
    sentences = assign_sentences(speaker.name)
    spec_hash = _spec_hash(speaker, sentences, espeak)
    speaker_dir = out_dir / speaker.name
    jobs = [(split, index, text) for split in SPLITS for index, text in enumerate(sentences[split])]
    stale = previous.get("spec_hash") != spec_hash
    todo = [
        (split, index, text)
        for split, index, text in jobs
        if stale or not (speaker_dir / _file_name(split, index)).exists()
    ]
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(
                pool.map(
                    lambda job: render(speaker, job[2], speaker_dir / _file_name(job[0], job[1])),
                    todo,
                )
            )
    data = SpeakerData(
        name=speaker.name,
        description=f"{speaker.describe_voice()} p{speaker.pitch} s{speaker.speed}, "
        f"{speaker.describe_effects()}",
        info={
            "spec": speaker.spec(),
            "spec_hash": spec_hash,
            "accent": speaker.accent,
            "voice": speaker.describe_voice(),
            "prosody": f"p{speaker.pitch} s{speaker.speed}",
            "channel": speaker.describe_effects(),
        },
    )
    for split, index, text in jobs:
        data.split(split).append(Utterance(speaker_dir / _file_name(split, index), text))
    entry = {
        "spec": speaker.spec(),
        "spec_hash": spec_hash,
        "splits": {
            split: [
                {"file": _file_name(split, index), "text": text}
                for index, text in enumerate(sentences[split])
            ]
            for split in SPLITS
        },
    }
    return data, entry, len(todo)


def build_suite(
    out_dir: Path = DEFAULT_OUT,
    speakers: Sequence[Speaker] = SPEAKERS,
    quick: bool = False,
    *,
    workers: int = 2,
    log: Callable[[str], None] | None = None,
) -> Suite:
    """Renders (or reuses) every speaker's audio under `out_dir`; `quick` keeps the quick three.

    Other defined speakers already in the manifest are kept there (a quick build does not forget
    them); speakers no longer defined in `SPEAKERS` are dropped with their audio.
    """
    if quick:
        quick_names = set(QUICK_SPEAKERS)
        speakers = [speaker for speaker in speakers if speaker.name in quick_names]
    names = [speaker.name for speaker in speakers]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate speaker names in {names}")
    out_dir.mkdir(parents=True, exist_ok=True)
    espeak = espeak_version()
    manifest = _read_manifest(out_dir)
    known = {speaker.name for speaker in SPEAKERS} | set(names)
    entries: dict[str, Any] = {}
    for name, entry in manifest.get("speakers", {}).items():
        if name in known:
            entries[name] = entry
        elif (out_dir / name).is_dir():  # a speaker no longer defined: drop its cached audio
            shutil.rmtree(out_dir / name)
    suite = Suite(kind="synthetic", root=out_dir, speakers={}, info={"espeak": espeak})
    for speaker in speakers:
        start = time.perf_counter()
        data, entry, rendered = _build_speaker(
            speaker, out_dir, entries.get(speaker.name, {}), espeak, workers
        )
        suite.speakers[speaker.name] = data
        entries[speaker.name] = entry
        if log is not None and rendered:
            log(f"{speaker.name}: rendered {rendered} files in {time.perf_counter() - start:.1f} s")
        # Written after every speaker, so an interrupted build keeps what it finished.
        write_json(
            out_dir / MANIFEST,
            {"suite_version": SUITE_VERSION, "espeak": espeak, "speakers": entries},
        )
    return suite


# ---------------------------------------------------------------------------------------------
# CLI


def summary_rows(suite: Suite) -> list[list[object]]:
    rows: list[list[object]] = []
    for data in suite.speakers.values():
        every = [u for split in SPLITS for u in data.split(split)]
        rows.append(
            [
                data.name,
                data.info.get("voice", "-"),
                data.info.get("prosody", "-"),
                data.info.get("channel", "-"),
                *(len(data.split(split)) for split in SPLITS),
                f"{audio_seconds(every) / 60:.2f}",
            ]
        )
    return rows


SUMMARY_HEADERS = (
    "speaker",
    "voice",
    "prosody",
    "channel",
    "train",
    "dev",
    "test",
    "heldout",
    "minutes",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speakers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_SPEAKERS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache directory")
    parser.add_argument("--speakers", help="comma-separated names (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="parallel espeak/sox jobs")
    args = parser.parse_args(argv)
    names = args.speakers.split(",") if args.speakers else None
    try:
        chosen = select_speakers(names, quick=args.quick)
    except ValueError as exc:
        parser.error(str(exc))
    start = time.perf_counter()
    suite = build_suite(
        args.out,
        chosen,
        workers=args.workers,
        log=lambda line: print(f"[speakers] {line}", file=sys.stderr, flush=True),
    )
    print_table(SUMMARY_HEADERS, summary_rows(suite))
    print(
        f"\n{len(suite.speakers)} speakers under {args.out} ({time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
