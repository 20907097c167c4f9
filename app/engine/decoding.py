"""Decodes a batch of mel windows: greedy or sampled per row, with the timestamp grammar.

We own this loop (rather than calling `generate`) to get what the API reports per segment
(average log-probability, no-speech probability), to give every row its own prefix, adapter,
temperature and random generator, and to let finished rows leave the batch at once.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import WhisperForConditionalGeneration

from app.engine.decoder_pass import DecoderPass, routed
from app.engine.encoder import encode
from app.engine.lora import LoraRouting
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


@dataclass(slots=True)
class _RowState:
    index: int
    row: DecodeRow
    tokens: list[int]
    logprob: float = 0.0


class BatchDecoder:
    def __init__(
        self,
        model: WhisperForConditionalGeneration,
        tokens: SpecialTokens,
        routing: LoraRouting | None = None,
    ) -> None:
        self._model = model
        self._tokens = tokens
        self._routing = routing
        self._suppress = _mask(model, tokens.suppress)
        self._begin_suppress = _mask(model, tokens.begin_suppress)

    @property
    def device(self) -> torch.device:
        device: torch.device = self._model.device
        return device

    @torch.inference_mode()
    def encode(self, mel: Tensor, slots: list[int] | None = None) -> Tensor:
        """[batch, n_mels, frames] -> [batch, frames // 2, d_model]; every row must have the same
        frame count (padding would change the other rows' encoding)."""
        encoder = self._model.model.encoder
        with routed(self._routing, slots or [0] * mel.shape[0], self.device):
            return encode(encoder, mel.to(self.device))

    @torch.inference_mode()
    def detect_language(self, encoded: list[Tensor], slots: list[int]) -> list[str]:
        decoder = self._pass(encoded, [[self._tokens.sot]] * len(encoded), slots, 0)
        first = torch.zeros(len(encoded), 1, dtype=torch.long, device=self.device)
        logits = decoder.start(first)[:, 0]
        codes = list(self._tokens.language_ids)
        ids = torch.tensor([self._tokens.language_ids[code] for code in codes])
        best = logits[:, ids].argmax(dim=-1)
        return [codes[int(index)] for index in best]

    @torch.inference_mode()
    def decode(self, rows: list[DecodeRow]) -> list[DecodeResult]:
        """Decodes every row after its own prefix; results are in the order of `rows`."""
        tokens = self._tokens
        decoder = self._pass(
            [r.encoded for r in rows], [r.prefix for r in rows], [r.slot for r in rows]
        )
        length = decoder.prefix_length
        sot_at = torch.tensor([[length - len(r.prefix) + r.prefix.index(tokens.sot)] for r in rows])
        wanted = torch.cat([sot_at, torch.full((len(rows), 1), length - 1)], dim=1)
        logits = decoder.start(wanted.to(self.device))
        no_speech = logits[:, 0].float().softmax(dim=-1)[:, tokens.no_speech].tolist()
        logits = logits[:, 1]
        active = [_RowState(i, row, []) for i, row in enumerate(rows)]
        done: dict[int, _RowState] = {}
        for step in range(MAX_TEXT_TOKENS):
            scores = self._filter(logits.float(), active, step)
            logprobs = scores.log_softmax(dim=-1)
            picked = self._pick(scores, active)
            chosen = logprobs.gather(1, picked[:, None]).squeeze(1).tolist()
            keep: list[int] = []
            for position, (state, token) in enumerate(zip(active, picked.tolist(), strict=True)):
                state.logprob += chosen[position]
                if token == tokens.eot:
                    done[state.index] = state
                else:
                    state.tokens.append(token)
                    keep.append(position)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                decoder.keep(index)
                picked = picked.index_select(0, index.to(picked.device))
                active = [active[i] for i in keep]
            if step + 1 < MAX_TEXT_TOKENS:
                logits = decoder.step(picked.to(self.device))
        for state in active:  # ran out of tokens without an end-of-text
            done[state.index] = state
        return [
            DecodeResult(
                tokens=done[i].tokens,
                avg_logprob=done[i].logprob / (len(done[i].tokens) + 1),
                no_speech_prob=no_speech[i],
                temperature=rows[i].temperature,
            )
            for i in range(len(rows))
        ]

    def _pass(
        self,
        encoded: list[Tensor],
        prefixes: list[list[int]],
        slots: list[int],
        max_new_tokens: int = MAX_TEXT_TOKENS,
    ) -> DecoderPass:
        model: nn.Module = self._model
        return DecoderPass(
            model, self._routing, encoded, prefixes, slots, max_new_tokens, self._tokens.eot
        )

    def _pick(self, scores: Tensor, active: list[_RowState]) -> Tensor:
        picked = scores.argmax(dim=-1)
        for position, state in enumerate(active):
            temperature = state.row.temperature
            if temperature > 0.0:
                probs = (scores[position] / temperature).softmax(dim=-1)
                sample = torch.multinomial(probs, 1, generator=state.row.generator)
                picked[position] = sample[0]
        return picked

    def _filter(self, logits: Tensor, active: list[_RowState], step: int) -> Tensor:
        logits = logits.masked_fill(self._suppress, float("-inf"))
        if step == 0:
            logits = logits.masked_fill(self._begin_suppress, float("-inf"))
        for position, state in enumerate(active):
            if state.row.with_timestamps:
                self._apply_timestamp_rules(logits[position], state.tokens, step)
            else:
                logits[position, self._tokens.timestamp_begin :] = float("-inf")
        return logits

    def _apply_timestamp_rules(self, logits: Tensor, tokens: list[int], step: int) -> None:
        """Whisper's timestamp grammar: timestamps come in pairs and never go backwards."""
        begin = self._tokens.timestamp_begin
        eot = self._tokens.eot
        logits[self._tokens.no_timestamps] = float("-inf")
        last_was_ts = len(tokens) >= 1 and tokens[-1] >= begin
        penultimate_was_ts = len(tokens) < 2 or tokens[-2] >= begin
        if last_was_ts:
            if penultimate_was_ts:  # a pair just closed: text (or the end) must follow
                logits[begin:] = float("-inf")
            else:  # an open segment must be closed by a timestamp, or the text ends
                logits[:eot] = float("-inf")
        timestamps = [token for token in tokens if token >= begin]
        if timestamps:
            last = timestamps[-1]
            floor = last if last_was_ts and not penultimate_was_ts else last + 1
            logits[begin:floor] = float("-inf")
        if step == 0:  # the first token is a timestamp, not too far into the window
            logits[:begin] = float("-inf")
            logits[begin + self._tokens.max_initial_timestamp_index + 1 :] = float("-inf")
        logprobs = logits.log_softmax(dim=-1)
        timestamp_mass = logprobs[begin:].logsumexp(dim=-1)
        if timestamp_mass > logprobs[:begin].max():
            logits[:begin] = float("-inf")


def _mask(model: WhisperForConditionalGeneration, token_ids: tuple[int, ...]) -> Tensor:
    mask = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=model.device)
    mask[list(token_ids)] = True
    return mask
