"""Decodes mel windows in a batch that never waits: requests join between tokens and leave as
soon as their search ends (continuous batching). Greedy, sampled or beam search per request,
with the timestamp grammar.

We own this loop (rather than calling `generate`) to get what the API reports per segment
(average log-probability, no-speech probability), to give every request its own prefix,
adapter, temperature, beam width and random generator, and to let requests of any length share
the model without waiting on each other.

A request's failure is its own: a row whose logits (or encoder output) go non-finite under its
adapter, or whose search raises, leaves the batch alone and every other row goes on.
"""

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor
from transformers import WhisperForConditionalGeneration

from app.engine.adaptation.rows import BASE_ROW, RowAdapter, is_base
from app.engine.backend import ComputeBackend, backend_for
from app.engine.decoder_pass import DecodeBatch, OutputHead
from app.engine.encoder_pass import EncoderWeights, encode_window
from app.engine.errors import AdapterNumericError
from app.engine.search import LogitRules, Search
from app.engine.tokens import SpecialTokens

__all__ = ["MAX_TEXT_TOKENS", "BatchDecoder", "DecodeResult", "DecodeRow", "Ended"]

MAX_TEXT_TOKENS = 224
"""Half the decoder context: the other half is kept for the prompt (as in Whisper)."""


@dataclass(frozen=True, slots=True)
class DecodeResult:
    tokens: list[int]
    """Generated tokens (text and timestamps), without the prefix and the end-of-text token."""
    avg_logprob: float
    no_speech_prob: float
    temperature: float


Ended = tuple[int, DecodeResult | Exception]
"""A request that left the batch: its handle, and its result or why it failed."""


@dataclass(frozen=True, slots=True)
class DecodeRow:
    encoded: Tensor
    """The window's encoder output, [frames, d_model]."""
    prefix: list[int]
    temperature: float = 0.0
    with_timestamps: bool = True
    generator: torch.Generator | None = None
    adapter: RowAdapter = BASE_ROW
    """The adapter applied to this row."""
    beam_size: int = 1
    """Beam search over this many hypotheses at temperature 0 (1: greedy)."""
    max_tokens: int = MAX_TEXT_TOKENS
    """A hypothesis this long ends here (a bound on runaway repetition loops)."""


@dataclass(slots=True)
class _Decode:
    """A request in the batch: its search, and the logits its live hypotheses wait on."""

    row: DecodeRow
    search: Search
    no_speech: float
    scores: list[Tensor] = field(default_factory=list)
    steps: int = 0


class BatchDecoder:
    def __init__(
        self,
        model: WhisperForConditionalGeneration,
        tokens: SpecialTokens,
        dtype: torch.dtype = torch.float32,
        backend: ComputeBackend | None = None,
    ) -> None:
        """`backend`: the model's device's own unless given."""
        self._model = model
        self._tokens = tokens
        self._dtype = dtype
        self._backend = backend or backend_for(model.device)
        self._head = OutputHead(model, dtype, self._backend)
        self._rules = LogitRules(tokens, model.config.vocab_size, model.device)
        self._batch = DecodeBatch(model, self._head, dtype, self._backend)
        self._alignment_heads = alignment_heads(model)
        self._encoder_weights: EncoderWeights | None = None
        self._live: list[tuple[int, _Decode]] = []
        """Requests in the batch, in its group order, with their handles."""
        self._handles = 0

    @property
    def device(self) -> torch.device:
        device: torch.device = self._model.device
        return device

    @property
    def compute_dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def head_bytes(self) -> int:
        """Bytes of the compute copy of the output projection (0 when it is the model's own)."""
        return self._head.nbytes

    @property
    def active(self) -> int:
        """Requests in the batch."""
        return len(self._live)

    @property
    def holds_weights(self) -> bool:
        """Whether dense compute weights are held (kept while busy, until `release`)."""
        return self._encoder_weights is not None or self._batch.holds_weights

    @torch.inference_mode()
    def encode(self, mels: list[Tensor], adapters: list[RowAdapter]) -> list[Tensor]:
        """Each [n_mels, frames] window -> [frames // 2, d_model], with its row's adapter."""
        if self._encoder_weights is None:  # kept until `release`: the engine is busy
            self._encoder_weights = EncoderWeights(self._model.model.encoder, self._dtype)
        encoded = []
        for mel, adapter in zip(mels, adapters, strict=True):
            output = encode_window(self._encoder_weights, mel.to(self.device), adapter)
            _require_finite(adapter, output, "encoder output")
            encoded.append(output)
        return encoded

    def release(self) -> None:
        """Drops the compute weights held while busy (the engine went idle)."""
        self._encoder_weights = None
        self._batch.release()

    @torch.inference_mode()
    def detect_language(self, encoded: list[Tensor], adapters: list[RowAdapter]) -> list[str]:
        batch = DecodeBatch(self._model, self._head, self._dtype, self._backend)
        codes = list(self._tokens.language_ids)
        ids = torch.tensor([self._tokens.language_ids[code] for code in codes])
        found = []
        for output, adapter in zip(encoded, adapters, strict=True):
            logits = batch.add(output, [self._tokens.sot], adapter, 0, [0])[0]
            found.append(codes[int(logits[ids].argmax())])
        return found

    @torch.inference_mode()
    def alignment(self, encoded: Tensor, tokens: list[int], adapter: RowAdapter) -> Tensor:
        """The alignment heads' cross-attention weights while `tokens` run through the decoder
        with `adapter`: [heads, len(tokens), frames], on the CPU (the batch in flight is left
        alone)."""
        weights = self._batch.cross_attention(encoded, tokens, adapter, self._alignment_heads)
        return weights.cpu()

    @torch.inference_mode()
    def start(self, row: DecodeRow) -> int:
        """Adds a request to the batch (its prefix runs now); returns its handle. It is
        advanced by `step` and reported there when it ends."""
        sot = row.prefix.index(self._tokens.sot)
        room = self._model.config.max_target_positions - len(row.prefix)  # a long prompt's
        limit = min(row.max_tokens, MAX_TEXT_TOKENS, room)
        logits = self._batch.add(
            row.encoded, row.prefix, row.adapter, limit, [sot, len(row.prefix) - 1]
        )
        try:
            _require_finite(row.adapter, logits, "logits")
            no_speech = float(_own(logits[0]).softmax(dim=-1)[self._tokens.no_speech])
            search = Search(
                self._tokens.eot,
                beam_size=row.beam_size,
                temperature=row.temperature,
                generator=row.generator,
            )
        except BaseException:
            self._batch.drop_newest()
            raise
        self._handles += 1
        bounded = replace(row, max_tokens=limit)
        self._live.append((self._handles, _Decode(bounded, search, no_speech, [_own(logits[1])])))
        return self._handles

    @torch.inference_mode()
    def step(self) -> list[Ended]:
        """One token for every live hypothesis; returns the requests that ended (or failed:
        see `_choose`), by handle."""
        ended: list[Ended] = []
        still: list[tuple[int, _Decode]] = []
        kept: list[list[int]] = []
        tokens: list[int] = []
        for handle, decode in self._live:
            try:
                chosen = self._choose(decode)
            except Exception as exc:  # this request fails alone; the batch goes on
                ended.append((handle, exc))
                kept.append([])
                continue
            if decode.search.done:
                ended.append((handle, self._result(decode)))
                kept.append([])
                continue
            kept.append([parent for parent, _ in chosen])
            tokens.extend(token for _, token in chosen)
            still.append((handle, decode))
        self._batch.keep(kept)
        self._live = still
        if still:
            logits = self._batch.step(torch.tensor(tokens, device=self.device))
            first = 0
            for _, decode in still:
                count = len(decode.search.live)
                decode.scores = [_own(logits[first + i]) for i in range(count)]
                first += count
        return ended

    def reset(self) -> list[int]:
        """Drops every request (after a failure); returns their handles."""
        handles = [handle for handle, _ in self._live]
        self._batch.keep([[] for _ in self._live])
        self._live = []
        return handles

    def decode(self, rows: list[DecodeRow]) -> list[DecodeResult]:
        """Decodes `rows` to the end, together; results in the order of `rows`."""
        handles = [self.start(row) for row in rows]
        results: dict[int, DecodeResult | Exception] = {}
        while len(results) < len(handles):
            results.update(self.step())
        outcomes = [results[handle] for handle in handles]
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        return [outcome for outcome in outcomes if isinstance(outcome, DecodeResult)]

    def _choose(self, decode: _Decode) -> list[tuple[int, int]]:
        """Applies the logit rules to each live hypothesis's logits and lets the search pick."""
        step = decode.steps
        decode.steps += 1
        if step >= decode.row.max_tokens:
            decode.search.stop()
            return []
        for hypothesis, scores in zip(decode.search.live, decode.scores, strict=True):
            _require_finite(decode.row.adapter, scores, "logits")
            self._rules.apply(scores, hypothesis.tokens, step, decode.row.with_timestamps)
        return decode.search.advance(decode.scores)

    @staticmethod
    def _result(decode: _Decode) -> DecodeResult:
        best = decode.search.best()
        return DecodeResult(
            tokens=best.tokens,
            avg_logprob=best.logprob / (len(best.tokens) + 1),
            no_speech_prob=decode.no_speech,
            temperature=decode.row.temperature,
        )


def alignment_heads(model: WhisperForConditionalGeneration) -> list[tuple[int, int]]:
    """The (layer, head) pairs of the decoder's cross-attention that follow the audio, from the
    checkpoint's generation config; without them, every head of the last half of the layers
    (CTranslate2's choice)."""
    heads = getattr(model.generation_config, "alignment_heads", None)
    if heads:
        return [(int(layer), int(head)) for layer, head in heads]
    config = model.config
    layers, per_layer = config.decoder_layers, config.decoder_attention_heads
    return [(layer, head) for layer in range(layers // 2, layers) for head in range(per_layer)]


def _require_finite(adapter: RowAdapter, values: Tensor, what: str) -> None:
    """Raises `AdapterNumericError` when an adapted row's `values` hold NaN or inf. Rows of
    the base model are not checked: its weights are finite and bounded."""
    if not is_base(adapter) and not bool(torch.isfinite(values).all()):
        raise AdapterNumericError(f"the adapter drove the {what} to NaN or infinity")


def _own(row: Tensor) -> Tensor:
    """A row of logits as a float32 tensor of its own (see `search`)."""
    return row.float().clone()
