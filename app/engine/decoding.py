"""Decodes a batch of mel windows: greedy, sampled or beam search per request, with the
timestamp grammar.

We own this loop (rather than calling `generate`) to get what the API reports per segment
(average log-probability, no-speech probability), to give every request its own prefix,
adapter, temperature, beam width and random generator, and to let finished rows leave the
batch at once.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import WhisperForConditionalGeneration

from app.engine.decoder_pass import DecoderPass, DecoderWeights, OutputHead
from app.engine.encoder_pass import EncoderWeights, encode_window
from app.engine.search import LogitRules, Search
from app.engine.tokens import SpecialTokens

__all__ = ["MAX_TEXT_TOKENS", "BatchDecoder", "DecodeResult", "DecodeRow"]

MAX_TEXT_TOKENS = 224
"""Half the decoder context: the other half is kept for the prompt (as in Whisper)."""


@dataclass(frozen=True, slots=True)
class DecodeResult:
    tokens: list[int]
    """Generated tokens (text and timestamps), without the prefix and the end-of-text token."""
    avg_logprob: float
    no_speech_prob: float
    temperature: float


@dataclass(frozen=True, slots=True)
class DecodeRow:
    encoded: Tensor
    """The window's encoder output, [frames, d_model]."""
    prefix: list[int]
    temperature: float = 0.0
    with_timestamps: bool = True
    generator: torch.Generator | None = None
    slot: int = 0
    """The adapter bank slot applied to this row (0: the base model)."""
    beam_size: int = 1
    """Beam search over this many hypotheses at temperature 0 (1: greedy)."""
    max_tokens: int = MAX_TEXT_TOKENS
    """A hypothesis this long ends here (a bound on runaway repetition loops)."""


class BatchDecoder:
    def __init__(
        self,
        model: WhisperForConditionalGeneration,
        tokens: SpecialTokens,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self._model = model
        self._tokens = tokens
        self._dtype = dtype
        self._head = OutputHead(model, dtype)
        self._rules = LogitRules(tokens, model.config.vocab_size, model.device)

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

    @torch.inference_mode()
    def encode(self, mels: list[Tensor], slots: list[int]) -> list[Tensor]:
        """Each [n_mels, frames] window -> [frames // 2, d_model], with its row's adapter; the
        base weights are dequantised once for all of them."""
        weights = EncoderWeights(self._model.model.encoder)
        return [
            encode_window(weights, mel.to(self.device), slot, self._dtype)
            for mel, slot in zip(mels, slots, strict=True)
        ]

    @torch.inference_mode()
    def detect_language(self, encoded: list[Tensor], slots: list[int]) -> list[str]:
        decoder = self._pass(encoded, [[self._tokens.sot]] * len(encoded), slots, 0)
        logits = decoder.start([[0]] * len(encoded))[:, 0]
        codes = list(self._tokens.language_ids)
        ids = torch.tensor([self._tokens.language_ids[code] for code in codes])
        best = logits[:, ids].argmax(dim=-1).tolist()
        found = [codes[int(index)] for index in best]
        return [found[decoder.order.index(row)] for row in range(len(encoded))]

    @torch.inference_mode()
    def decode(self, rows: list[DecodeRow]) -> list[DecodeResult]:
        """Decodes every row after its own prefix; results are in the order of `rows`.

        Pass rows are the live hypotheses of the requests, request by request (a beam search
        has several); rows whose request has ended leave the batch at once."""
        tokens = self._tokens
        limit = min(MAX_TEXT_TOKENS, max(r.max_tokens for r in rows))
        decoder = self._pass(
            [r.encoded for r in rows], [r.prefix for r in rows], [r.slot for r in rows], limit
        )
        order = decoder.order  # caller index of each request, in pass order
        wanted = [[rows[i].prefix.index(tokens.sot), len(rows[i].prefix) - 1] for i in order]
        logits = decoder.start(wanted)
        no_speech = {
            i: float(_own(logits[p, 0]).softmax(dim=-1)[tokens.no_speech])
            for p, i in enumerate(order)
        }
        searches = {
            i: Search(
                tokens.eot,
                beam_size=rows[i].beam_size,
                temperature=rows[i].temperature,
                generator=rows[i].generator,
            )
            for i in order
        }
        current = [_own(logits[p, 1]) for p in range(len(order))]
        for step in range(limit):
            sources, next_tokens = self._advance(rows, order, searches, current, step)
            if not sources or step + 1 == limit:
                break
            if sources != list(range(decoder.rows)):
                decoder.keep(sources)
            logits = decoder.step(torch.tensor(next_tokens, device=self.device))
            current = [_own(logits[row]) for row in range(len(sources))]
        for search in searches.values():
            search.stop()
        return [self._result(rows[i], searches[i], no_speech[i]) for i in range(len(rows))]

    def _advance(
        self,
        rows: list[DecodeRow],
        order: list[int],
        searches: dict[int, Search],
        current: list[Tensor],
        step: int,
    ) -> tuple[list[int], list[int]]:
        """One token for every live hypothesis; returns each new live row's parent row in the
        pass and its token, request by request in pass order."""
        sources: list[int] = []
        next_tokens: list[int] = []
        first = 0
        for i in order:
            search = searches[i]
            if search.done:
                continue
            count = len(search.live)
            if step >= rows[i].max_tokens:
                search.stop()
                first += count
                continue
            scores = current[first : first + count]
            for hypothesis, row_scores in zip(search.live, scores, strict=True):
                self._rules.apply(row_scores, hypothesis.tokens, step, rows[i].with_timestamps)
            for parent, token in search.advance(scores):
                sources.append(first + parent)
                next_tokens.append(token)
            first += count
        return sources, next_tokens

    @staticmethod
    def _result(row: DecodeRow, search: Search, no_speech: float) -> DecodeResult:
        best = search.best()
        return DecodeResult(
            tokens=best.tokens,
            avg_logprob=best.logprob / (len(best.tokens) + 1),
            no_speech_prob=no_speech,
            temperature=row.temperature,
        )

    def _pass(
        self,
        encoded: list[Tensor],
        prefixes: list[list[int]],
        slots: list[int],
        max_new_tokens: int = MAX_TEXT_TOKENS,
    ) -> DecoderPass:
        model: nn.Module = self._model
        return DecoderPass(
            model,
            DecoderWeights(self._model.model.decoder),
            self._head,
            encoded,
            prefixes,
            slots,
            max_new_tokens,
            self._dtype,
        )


def _own(row: Tensor) -> Tensor:
    """A row of logits as a float32 tensor of its own (see `search`)."""
    return row.float().clone()
