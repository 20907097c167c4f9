"""Decodes 30 s mel windows with Whisper: greedy or sampled, with the timestamp grammar.

We own this loop (rather than calling `generate`) to get what the API reports per segment
(average log-probability, no-speech probability) and to control batching.
"""

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import Cache, WhisperForConditionalGeneration

from app.engine.encoder import encode
from app.engine.tokens import SpecialTokens

__all__ = ["DecodeResult", "WindowDecoder"]

MAX_TEXT_TOKENS = 224
"""Half the decoder context: the other half is kept for the prompt (as in Whisper)."""


@dataclass(frozen=True, slots=True)
class DecodeResult:
    tokens: list[int]
    """Generated tokens (text and timestamps), without the prefix and the end-of-text token."""
    avg_logprob: float
    no_speech_prob: float
    temperature: float


class WindowDecoder:
    def __init__(self, model: WhisperForConditionalGeneration, tokens: SpecialTokens) -> None:
        self._model = model
        self._tokens = tokens
        self._suppress = _mask(model, tokens.suppress)
        self._begin_suppress = _mask(model, tokens.begin_suppress)

    @torch.inference_mode()
    def encode(self, mel: Tensor) -> Tensor:
        """[batch, n_mels, frames] -> [batch, frames // 2, d_model]"""
        encoder = self._model.model.encoder
        return encode(encoder, mel.to(encoder.conv1.weight.device))

    @torch.inference_mode()
    def detect_language(self, encoded: Tensor) -> list[str]:
        start = torch.full((encoded.shape[0], 1), self._tokens.sot, device=encoded.device)
        logits, _ = self._forward(encoded, start, None)
        codes = list(self._tokens.language_ids)
        ids = torch.tensor([self._tokens.language_ids[code] for code in codes])
        best = logits[:, -1, ids].argmax(dim=-1)
        return [codes[int(index)] for index in best]

    @torch.inference_mode()
    def decode(
        self,
        encoded: Tensor,
        prefix: list[int],
        *,
        temperature: float = 0.0,
        with_timestamps: bool = True,
        generator: torch.Generator | None = None,
    ) -> list[DecodeResult]:
        """Decodes every row of `encoded` ([batch, frames, d_model]) after the same `prefix`."""
        batch = encoded.shape[0]
        sot_index = prefix.index(self._tokens.sot)
        input_ids = torch.tensor([prefix] * batch, device=encoded.device)
        logits, cache = self._forward(encoded, input_ids, None)
        no_speech = logits[:, sot_index].float().softmax(dim=-1)[:, self._tokens.no_speech]
        generated: list[list[int]] = [[] for _ in range(batch)]
        sum_logprob = torch.zeros(batch, device=encoded.device)
        finished = torch.zeros(batch, dtype=torch.bool)
        for step in range(MAX_TEXT_TOKENS):
            scores = self._filter(logits[:, -1].float(), generated, step, with_timestamps)
            logprobs = scores.log_softmax(dim=-1)
            next_tokens = _pick(scores, temperature, generator)
            chosen = logprobs.gather(1, next_tokens[:, None]).squeeze(1)
            sum_logprob += torch.where(finished, 0.0, chosen)
            next_tokens = torch.where(finished, self._tokens.eot, next_tokens)
            for row, token in enumerate(next_tokens.tolist()):
                if not finished[row] and token != self._tokens.eot:
                    generated[row].append(token)
            finished |= next_tokens == self._tokens.eot
            if bool(finished.all()):
                break
            logits, cache = self._forward(encoded, next_tokens[:, None], cache)
        return [
            DecodeResult(
                tokens=generated[row],
                avg_logprob=float(sum_logprob[row]) / (len(generated[row]) + 1),
                no_speech_prob=float(no_speech[row]),
                temperature=temperature,
            )
            for row in range(batch)
        ]

    def _forward(
        self, encoded: Tensor, input_ids: Tensor, cache: Cache | None
    ) -> tuple[Tensor, Cache]:
        """Runs the decoder on new tokens; the cache holds self- and cross-attention keys/values."""
        output = self._model.model.decoder(
            input_ids=input_ids,
            encoder_hidden_states=encoded,
            past_key_values=cache,
            use_cache=True,
        )
        logits: Tensor = self._model.proj_out(output.last_hidden_state)  # [batch, new, vocab]
        return logits, output.past_key_values

    def _filter(
        self, logits: Tensor, generated: list[list[int]], step: int, with_timestamps: bool
    ) -> Tensor:
        logits = logits.masked_fill(self._suppress, float("-inf"))
        if step == 0:
            logits = logits.masked_fill(self._begin_suppress, float("-inf"))
        if with_timestamps:
            for row, tokens in enumerate(generated):
                self._apply_timestamp_rules(logits[row], tokens, step)
        else:
            logits[:, self._tokens.timestamp_begin :] = float("-inf")
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


def _pick(scores: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    if temperature <= 0.0:
        return scores.argmax(dim=-1)
    probs = (scores / temperature).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _mask(model: WhisperForConditionalGeneration, token_ids: tuple[int, ...]) -> Tensor:
    mask = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=model.device)
    mask[list(token_ids)] = True
    return mask
