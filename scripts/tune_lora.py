"""Compares LoRA training settings on synthetic accented speakers and real FSDD speakers.

    python scripts/tune_lora.py --speakers de,george --configs default,r16 --threads 1

Each (speaker, config) run enrols on the speaker's enrolment set (split into train/dev with
`split_train_dev`, as the service does), then scores the held-out test set with the base model
(fp32 and NF4, 30 s window, cached per speaker) and with NF4 + the adapter. Results are appended
as JSON lines to --out; `--table` prints them. Audio is synthesised with espeak-ng (cached under
--cache) or read in place from the FSDD recordings; nothing is written into the repository.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.engine.adaptation.files import dump_any
from app.engine.adaptation.lora.config import ATTENTION_TARGETS, FFN_TARGETS
from app.engine.model_import import import_bundled_model
from app.engine.text import wer
from app.engine.training import (
    TrainingConfig,
    Utterance,
    split_train_dev,
    train_adapter,
)
from app.engine.types import TranscriptionOptions
from app.engine.whisper import WhisperEngine

SAMPLE_RATE = 16_000
TMP = Path(tempfile.gettempdir())
FSDD = Path("/work/shared/data/fsdd/recordings")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
OPTIONS = TranscriptionOptions(language="en", with_timestamps=False)

TRAIN_SENTENCES = (
    "I need to pick up some milk and bread on the way home tonight.",
    "Could you please send me the report before the meeting starts tomorrow?",
    "The train to the city leaves every twenty minutes from platform four.",
    "My sister is coming to visit us for a week in the summer.",
    "We should book a table at the new restaurant for Friday evening.",
    "Remember to water the plants while I am away on holiday.",
    "The weather forecast says it will rain for most of the weekend.",
    "He forgot his keys again and had to wait outside for an hour.",
    "Let us meet at the coffee shop next to the library at noon.",
    "The children played football in the park until it got dark.",
    "Please turn off the lights when you leave the office tonight.",
    "I think the battery in my phone needs to be replaced soon.",
    "She bought a new pair of running shoes at the shopping centre.",
    "Can you tell me how to get to the nearest bus station?",
    "The kitchen sink is leaking and we need to call a plumber.",
    "Our flight was delayed by three hours because of the fog.",
    "I usually go for a long walk with the dog after breakfast.",
    "The doctor told me to drink more water and get more sleep.",
    "We are planning a small party for my grandmother's birthday next month.",
    "Do not forget to bring your passport and your boarding pass.",
    "The museum is closed on Mondays but open late on Thursdays.",
    "I would like a cup of tea with milk and no sugar, please.",
    "The printer on the second floor has run out of paper again.",
    "My brother started a new job at a bank in the city centre.",
    "It took us almost two hours to drive through the heavy traffic.",
    "Please write your name and address clearly at the top of the form.",
    "The supermarket opens at seven in the morning on weekdays.",
    "We watched an old film on television and ate popcorn together.",
    "The garden looks beautiful now that all the roses are in bloom.",
    "He asked the waiter for the bill and a glass of water.",
    "I have to finish this project before the end of the week.",
    "The neighbours are building a new fence between our two gardens.",
    "Could you check whether the back door is locked before bed?",
    "My computer keeps freezing whenever I open too many windows.",
    "She plays the piano beautifully and practises every single afternoon.",
    "The bakery around the corner sells the best apple pie in town.",
    "We need to buy a present for the teacher at the end of term.",
    "The meeting has been moved from Tuesday morning to Wednesday afternoon.",
    "I left my umbrella on the bus and got completely soaked.",
    "The hotel room had a lovely view of the harbour and the boats.",
    "Please remind me to call the dentist first thing on Monday.",
    "Our team finally won the match after a very difficult season.",
    "The recipe calls for two eggs, a cup of flour and some butter.",
    "He works from home three days a week and goes to the office twice.",
    "The car needs a new tyre before we go on the long trip.",
    "I cannot find the charger for my laptop anywhere in the house.",
    "The library has a great collection of history books and old maps.",
    "We took the ferry across the lake and had lunch on the other side.",
    "Please put the dirty dishes in the dishwasher after dinner.",
    "The concert starts at eight, so we should leave by half past six.",
    "My grandfather tells wonderful stories about his childhood on the farm.",
    "The shop assistant helped me find a warm coat for the winter.",
    "It is important to stretch your muscles before you go running.",
    "The new bridge across the river will open to traffic next spring.",
    "I am looking forward to a quiet weekend with a good book.",
    "She sent a postcard from the beach with a picture of the sunset.",
    "The baby finally fell asleep after we sang a few songs.",
    "Could you move your car so that the delivery van can get through?",
    "The office kitchen always smells of fresh coffee in the morning.",
    "We have run out of washing powder and need to buy some more.",
    "The students handed in their essays on the last day of class.",
    "He cut his finger while he was chopping onions for the soup.",
    "The swimming pool is much busier during the school holidays.",
    "I will send you the photos from the wedding as soon as possible.",
    "The cat sleeps on the windowsill in the warm afternoon sun.",
    "Please speak a little louder because the line is very bad.",
    "The farmers market on Saturday has the freshest vegetables in the area.",
    "My parents moved to a smaller house near the coast last year.",
    "We should leave early to avoid the rush hour on the motorway.",
    "The elevator is out of order, so please use the stairs.",
    "She is learning to speak Spanish before her trip to Madrid.",
    "The heating has stopped working and the whole flat is freezing.",
    "I always keep a spare key with our neighbour across the street.",
    "The queue at the post office went all the way out the door.",
    "He painted the living room a light shade of blue last weekend.",
    "We found a lovely little cottage to rent for the summer holidays.",
    "The waiter recommended the fish of the day with fresh salad.",
    "Please make sure the windows are closed before the storm arrives.",
    "The children are excited about the school trip to the zoo.",
    "I need to renew my driving licence before it expires in June.",
    "The bus driver waited for the old man to find his seat.",
    "Our internet connection has been very slow for the past few days.",
    "She borrowed my bicycle to ride to the market this morning.",
    "The doctor's surgery is open from eight until six every weekday.",
    "We planted tomatoes, carrots and potatoes in the vegetable patch.",
    "The football match was cancelled because the pitch was flooded.",
    "I am going to bake a chocolate cake for the school fair.",
    "Please let me know if you will be late for dinner tonight.",
    "The new manager wants everyone to arrive at work by nine.",
    "He spent the whole afternoon fixing the broken washing machine.",
    "The traffic lights at the crossroads have not been working all day.",
    "My daughter wants to become a vet when she grows up.",
    "We had a picnic by the river and watched the ducks swimming.",
    "The pharmacy on the high street closes early on Sundays.",
    "I must remember to take the rubbish out before the collection.",
    "The plane landed safely despite the strong winds and heavy rain.",
    "She keeps all her old letters in a box under the bed.",
    "The village hall is hosting a dance on Saturday night.",
    "Could you lend me some money until I get paid on Friday?",
    "The mountains look stunning when they are covered in fresh snow.",
)

TEST_SENTENCES = (
    "Seventeen engineers gathered around the glowing monitor to debug the satellite software.",
    "The orchestra rehearsed Beethoven's symphony until the conductor seemed satisfied.",
    "A curious fox wandered through the vineyard searching for ripe grapes.",
    "Quarterly revenue exceeded expectations thanks to strong demand across Asian markets.",
    "The volcano erupted unexpectedly, forcing villagers to evacuate their homes.",
    "Astronomers detected a faint signal coming from a distant galaxy cluster.",
    "The lawyer argued that the contract contained several ambiguous clauses.",
    "Hikers reached the summit just before a thunderstorm swept across the ridge.",
    "The chemistry professor demonstrated how copper reacts with concentrated acid.",
    "Fishermen repaired their nets while seagulls circled above the wooden pier.",
    "The architect sketched a futuristic skyscraper with curved glass balconies.",
    "Vaccination campaigns dramatically reduced childhood illnesses in rural provinces.",
    "The detective noticed muddy footprints leading toward the abandoned warehouse.",
    "Our startup launched an encrypted messaging application for hospitals.",
    "The jazz saxophonist improvised a melancholy solo during the encore.",
    "Archaeologists uncovered bronze coins beneath the ruins of an ancient temple.",
    "The submarine descended slowly into the dark and silent ocean trench.",
    "Parliament debated whether to raise taxes on imported luxury vehicles.",
    "A sudden avalanche blocked the narrow mountain pass for several days.",
    "The gardener pruned the overgrown hedges and fertilised the lemon trees.",
)

SYNTHETIC_SPEAKERS: dict[str, dict[str, Any]] = {
    "de": {"voice": "de", "speed": 150, "pitch": 45},
    "fr": {"voice": "fr", "speed": 155, "pitch": 55},
    "scot": {"voice": "en-gb-scotland", "speed": 165, "pitch": 40},
    "es": {"voice": "es", "speed": 160, "pitch": 60},
}
FSDD_SPEAKERS = ("george", "nicolas", "jackson", "theo", "lucas", "yweweler")

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "r4": {"rank": 4, "alpha": 8.0},
    "r16": {"rank": 16, "alpha": 32.0},
    "attn": {"targets": ATTENTION_TARGETS},
    "attn_r16": {"targets": ATTENTION_TARGETS, "rank": 16, "alpha": 32.0},
    "lr5e-4": {"learning_rate": 5e-4},
    "lr2e-3": {"learning_rate": 2e-3},
    "lr3e-3": {"learning_rate": 3e-3},
    "full": {"encoder_window": "full"},
    "full_e4": {"encoder_window": "full", "epochs": 4},
    "e12": {"epochs": 12, "patience": 3},
    "bs4": {"batch_size": 4},
    "bs16": {"batch_size": 16},
    "t2": {"threads": 2},
    "drop0.1": {"dropout": 0.1},
    "r10": {"rank": 10, "alpha": 20.0},
    "wd0.1": {"weight_decay": 0.1},
    "drop0": {"dropout": 0.0},
}


@dataclass(frozen=True)
class SpeakerData:
    name: str
    kind: str
    enrol: list[Utterance]
    test: list[Utterance]


def synth(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="pqm-tune-") as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
            check=True,
            capture_output=True,
        )
        data, rate = sf.read(wav, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return np.ascontiguousarray(soxr.resample(mono, rate, SAMPLE_RATE), dtype=np.float32)


def synthetic_speaker(name: str, cache: Path, enrol_count: int) -> SpeakerData:
    spec = SYNTHETIC_SPEAKERS[name]
    rng = random.Random(f"synthetic-{name}")
    sentences = list(TRAIN_SENTENCES)
    rng.shuffle(sentences)

    def utterance(text: str) -> Utterance:
        speed = spec["speed"] + rng.randint(-15, 15)
        pitch = min(99, max(0, spec["pitch"] + rng.randint(-10, 10)))
        digest = hashlib.sha256(f"{text}|{spec['voice']}|{speed}|{pitch}".encode()).hexdigest()
        key = f"{name}-{digest[:16]}.npy"
        path = cache / key
        if not path.exists():
            np.save(path, synth(text, spec["voice"], speed, pitch))
        return Utterance(audio=np.load(path), text=text)

    enrol = [utterance(text) for text in sentences[:enrol_count]]
    test = [utterance(text) for text in TEST_SENTENCES]
    return SpeakerData(name, "synthetic", enrol, test)


def fsdd_clip(digit: int, speaker: str, index: int) -> np.ndarray:
    data, rate = sf.read(FSDD / f"{digit}_{speaker}_{index}.wav", dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return np.ascontiguousarray(soxr.resample(mono, rate, SAMPLE_RATE), dtype=np.float32)


def fsdd_utterances(speaker: str, indices: range, count: int, seed: str) -> list[Utterance]:
    """`count` utterances of 4-6 clips each (0.15 s of silence between), clips drawn without
    replacement from the speaker's clips with these indices (the pool refills when empty)."""
    rng = random.Random(seed)
    clips = [(digit, index) for digit in range(10) for index in indices]
    pool: list[tuple[int, int]] = []
    gap = np.zeros(int(0.15 * SAMPLE_RATE), dtype=np.float32)
    utterances = []
    for _ in range(count):
        parts, words = [], []
        for _ in range(rng.randint(4, 6)):
            if not pool:
                pool = clips.copy()
                rng.shuffle(pool)
            digit, index = pool.pop()
            parts += [fsdd_clip(digit, speaker, index), gap]
            words.append(DIGITS[digit])
        audio = np.concatenate(parts[:-1]).astype(np.float32)
        utterances.append(Utterance(audio=audio, text=" ".join(words)))
    return utterances


def fsdd_speaker(name: str, enrol_count: int, test_count: int) -> SpeakerData:
    enrol = fsdd_utterances(name, range(0, 30), enrol_count, f"fsdd-enrol-{name}")
    test = fsdd_utterances(name, range(30, 50), test_count, f"fsdd-test-{name}")
    return SpeakerData(name, "fsdd", enrol, test)


def load_speaker(name: str, args: argparse.Namespace) -> SpeakerData:
    if name in SYNTHETIC_SPEAKERS:
        return synthetic_speaker(name, args.cache, args.synthetic_enrol)
    return fsdd_speaker(name, args.fsdd_enrol, args.fsdd_test)


def transcripts(engine: WhisperEngine, test: Sequence[Utterance], adapter: Any = None) -> list[str]:
    return [engine.transcribe(u.audio, OPTIONS, adapter).text for u in test]


def base_wers(speaker: SpeakerData, args: argparse.Namespace) -> dict[str, Any]:
    """fp32 and NF4 test WER of the base model (30 s window), cached per speaker."""
    path = args.cache / f"base-{speaker.name}-{len(speaker.test)}.json"
    if path.exists():
        cached: dict[str, Any] = json.loads(path.read_text())
        return cached
    result: dict[str, Any] = {}
    refs = [u.text for u in speaker.test]
    for precision in ("fp32", "nf4"):
        engine = WhisperEngine.load(
            args.model_dir, precision=precision, device="cpu", threads=args.threads
        )
        hypotheses = transcripts(engine, speaker.test)
        result[precision] = wer(refs, hypotheses)
        result[f"{precision}_hypotheses"] = hypotheses
    path.write_text(json.dumps(result))
    return result


def run_one(speaker: SpeakerData, config_name: str, args: argparse.Namespace) -> dict[str, Any]:
    overrides = dict(CONFIGS[config_name])
    overrides.setdefault("threads", args.threads)
    config = TrainingConfig(**overrides)
    train, dev = split_train_dev(speaker.enrol, 0.15, seed=0, min_dev=3)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    result = train_adapter(args.model_dir, train, dev, config)
    wall = time.monotonic() - started
    engine = WhisperEngine.load(args.model_dir, precision="nf4", device="cpu", threads=args.threads)
    engine.check_adapter(result.adapter)
    (args.cache / "adapters").mkdir(exist_ok=True)
    saved = args.cache / "adapters" / f"{speaker.name}-{config_name}.safetensors"
    saved.write_bytes(dump_any(result.adapter))
    metrics = result.metrics
    base = base_wers(speaker, args)
    hypotheses = transcripts(engine, speaker.test, result.adapter)
    return {
        "speaker": speaker.name,
        "kind": speaker.kind,
        "config": config_name,
        "fp32": base["fp32"],
        "nf4": base["nf4"],
        "adapted": wer([u.text for u in speaker.test], hypotheses),
        "hypotheses": hypotheses,
        "dev_before": metrics["wer_before"],
        "dev_after": metrics["wer_after"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "dev_wer_per_epoch": metrics["epoch_dev_wer"],
        "train_loss_per_epoch": [round(x, 3) for x in metrics["epoch_train_loss"]],
        "train_seconds": round(wall, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "parameter_ratio": round(metrics["parameter_ratio"], 5),
        "threads": config.threads,
        "train": len(train),
        "dev": len(dev),
        "test": len(speaker.test),
        "settings": {k: v for k, v in dataclasses.asdict(config).items() if k != "targets"}
        | {"targets": "attn+ffn" if set(FFN_TARGETS) & set(config.targets) else "attn"},
    }


def print_table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    header = (
        f"{'speaker':10} {'config':10} {'fp32':>6} {'nf4':>6} {'lora':>6} {'rel%':>6} "
        f"{'dev0':>6} {'dev*':>6} {'ep':>5} {'sec':>6} {'load':>5}"
    )
    print(header)
    for row in rows:
        relative = 100 * (row["fp32"] - row["adapted"]) / row["fp32"] if row["fp32"] else 0.0
        print(
            f"{row['speaker']:10} {row['config']:10} {row['fp32']:6.3f} {row['nf4']:6.3f} "
            f"{row['adapted']:6.3f} {relative:6.1f} {row['dev_before']:6.3f} "
            f"{row['dev_after']:6.3f} {row['best_epoch']:>2}/{row['epochs_run']:<2} "
            f"{row['train_seconds']:6.1f} {row['load_before']:5.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", default="de,george")
    parser.add_argument("--configs", default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models-dir", type=Path, default=TMP / "pqm-models")
    parser.add_argument("--cache", type=Path, default=TMP / "pqm-tune")
    parser.add_argument("--out", type=Path, default=TMP / "pqm-tune" / "results.jsonl")
    parser.add_argument("--synthetic-enrol", type=int, default=60)
    parser.add_argument("--fsdd-enrol", type=int, default=40)
    parser.add_argument("--fsdd-test", type=int, default=50)
    parser.add_argument("--table", action="store_true", help="print the results so far")
    args = parser.parse_args()
    if args.table:
        print_table(args.out)
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    args.model_dir = import_bundled_model("tiny.en", args.models_dir)
    for name in args.speakers.split(","):
        speaker = load_speaker(name, args)
        for config_name in args.configs.split(","):
            row = run_one(speaker, config_name, args)
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")
            hidden = ("settings", "hypotheses")
            print(json.dumps({k: v for k, v in row.items() if k not in hidden}), flush=True)


if __name__ == "__main__":
    main()
