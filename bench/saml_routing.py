"""SAML's decoder routing under a KV cache: routed once on the prefix (what the service does)
against the authors' per-step routing, on real speakers.

    python -m bench.saml_routing --bank BANK.safetensors [--speakers 6]
                                 [--out bench/results/saml_routing.json]

Each speechocean762 **pool** speaker (the first `--speakers` of `scripts/tune_enrolment.py`'s
order, the ones its SAML rows tune on; the bank must come from the others) gets a SAML adapter
trained from the bank on its 14 enrolment recordings; its 6 test recordings are then decoded
greedily three ways, in word errors (Whisper's normaliser):

* `served`: the serving engine (decoder routers evaluated once, on the prefix);
* `once`: the training modules with a transformers KV cache, routed once on the prefix: the
  same definition through other code (what numerics alone change);
* `per step`: the same modules and cache, every decoder attention re-routed at every step on
  that step's token alone, while the cached keys and values of earlier steps (and the cross-
  attention's, from the first step) keep the mixtures they were projected with: the authors'
  decoding.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench import speechocean
from bench.common import RESULTS_DIR, print_table, write_json
from bench.speakers import load

DEFAULT_OUT = RESULTS_DIR / "saml_routing.json"
MODES = ("served", "once", "per step")
MAX_TOKENS = 96


def log(message: str) -> None:
    print(f"[saml-routing] {message}", file=sys.stderr, flush=True)


def greedy(trainer: Any, saml: Any, mel: torch.Tensor, prefix: list[int], eot: int) -> list[int]:
    """Greedy decoding through the training modules with a transformers cache."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    from app.engine.encoder import encode

    model = trainer.model
    saml.reset_routing()
    with torch.no_grad():
        encoded = encode(model.model.encoder, mel[None])
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        tokens = list(prefix)
        step = torch.tensor([prefix])
        for _ in range(MAX_TOKENS):
            out = model.model.decoder(
                input_ids=step, encoder_hidden_states=encoded, cache=cache, use_cache=True
            )
            cache = out.cache
            token = int(model.proj_out(out.last_hidden_state[:, -1]).argmax())
            if token == eot:
                break
            tokens.append(token)
            step = torch.tensor([[token]])
    return tokens[len(prefix) :]


def run(bank_path: Path, speakers: int) -> dict[str, Any]:
    from app.engine.adaptation.saml.file import load_saml
    from app.engine.adaptation.saml.layer import SamlModel
    from app.engine.adaptation.saml.weights import SamlWeights
    from app.engine.model_import import import_bundled_model
    from app.engine.text import word_errors
    from app.engine.tokens import SpecialTokens
    from app.engine.training import TrainingConfig, Utterance, train_adapter
    from app.engine.training.data import prompt_tokens, training_window
    from app.engine.types import TranscriptionOptions
    from app.engine.whisper import WhisperEngine

    model_dir = import_bundled_model("tiny.en", RESULTS_DIR / "models")
    bank = load_saml(bank_path.read_bytes())
    server = WhisperEngine.load(model_dir, precision="nf4", device="cpu", threads=2)
    trainer = WhisperEngine.load(model_dir, precision="nf4", device="cpu", threads=2)
    loaded = trainer.loaded
    tokens = SpecialTokens.from_tokenizer(loaded.tokenizer, loaded.model.generation_config)
    prefix = prompt_tokens(tokens, "en")
    options = TranscriptionOptions(language="en", with_timestamps=False)
    config = TrainingConfig(method="saml", threads=2)
    rows = []
    for name in speechocean.pool_speakers(speakers):
        data = speechocean.build_suite("pool", [name]).speakers[name]
        started = time.perf_counter()
        train = [Utterance(load(u), u.text) for u in data.train]
        adapter = train_adapter(model_dir, train, [], config, bank=bank).adapter
        assert isinstance(adapter, SamlWeights)
        log(f"{name}: trained in {time.perf_counter() - started:.0f} s")
        saml = SamlModel(trainer.model, bank.config, torch.Generator().manual_seed(0))
        saml.load(adapter)
        saml.prefix_length = len(prefix)
        trainer.model.eval()
        for utterance in data.test:
            audio = load(utterance)
            mel = training_window(loaded.feature_extractor, audio, loaded.device, "fit")
            texts = {"served": server.transcribe(audio, options, adapter).text}
            for mode, once in (("once", True), ("per step", False)):
                saml.route_once = once
                ids = greedy(trainer, saml, mel, prefix, tokens.eot)
                texts[mode] = loaded.tokenizer.decode(ids, skip_special_tokens=True).strip()
            rows.append(
                {
                    "speaker": name,
                    "reference": utterance.text,
                    "texts": texts,
                    "errors": {m: word_errors(utterance.text, t)[0] for m, t in texts.items()},
                    "words": word_errors(utterance.text, "")[1],
                }
            )
        saml.remove()
    return {"benchmark": "saml_routing", "bank": bank_path.name, "utterances": rows}


def summary(report: dict[str, Any]) -> list[list[object]]:
    rows = report["utterances"]
    words = sum(r["words"] for r in rows)
    table: list[list[object]] = []
    for mode in MODES:
        errors = sum(r["errors"][mode] for r in rows)
        same = sum(r["texts"][mode] == r["texts"]["served"] for r in rows)
        table.append([mode, len(rows), words, errors, f"{errors / words:.3f}", same])
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.saml_routing", description=__doc__)
    parser.add_argument("--bank", type=Path, required=True)
    parser.add_argument("--speakers", type=int, default=6)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report = run(args.bank, args.speakers)
    write_json(args.out, report)
    print_table(
        ["decoder routing", "utterances", "words", "errors", "WER", "same text as served"],
        summary(report),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
