"""Choosing the next tokens of one request: Whisper's logit rules, then greedy decoding,
sampling at a temperature, or beam search.

Everything here works on one row of logits at a time, each row its own tensor: a reduction
over the vocabulary of a row inside a batch tensor would be split across threads (and start
at an address) differently than for a row alone, and its bits would depend on the batch.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from app.engine.errors import NumericError
from app.engine.tokens import SpecialTokens

__all__ = ["Hypothesis", "LogitRules", "Search"]

NEG_INF = float("-inf")


class LogitRules:
    """Tokens never emitted, tokens not emitted first, and the timestamp grammar."""

    def __init__(self, tokens: SpecialTokens, vocab_size: int, device: torch.device) -> None:
        self._tokens = tokens
        self._suppress = _mask(vocab_size, tokens.suppress, device)
        self._begin_suppress = _mask(vocab_size, tokens.begin_suppress, device)

    def apply(self, logits: Tensor, tokens: list[int], step: int, with_timestamps: bool) -> None:
        """Masks, in place, what may not follow `tokens` in `logits` ([vocab], float32)."""
        logits.masked_fill_(self._suppress, NEG_INF)
        if step == 0:
            logits.masked_fill_(self._begin_suppress, NEG_INF)
        if with_timestamps:
            self._timestamp_rules(logits, tokens, step)
        else:
            logits[self._tokens.timestamp_begin :] = NEG_INF

    def _timestamp_rules(self, logits: Tensor, tokens: list[int], step: int) -> None:
        """Whisper's timestamp grammar: timestamps come in pairs and never go backwards."""
        begin = self._tokens.timestamp_begin
        eot = self._tokens.eot
        logits[self._tokens.no_timestamps] = NEG_INF
        last_was_ts = len(tokens) >= 1 and tokens[-1] >= begin
        penultimate_was_ts = len(tokens) < 2 or tokens[-2] >= begin
        if last_was_ts:
            if penultimate_was_ts:  # a pair just closed: text (or the end) must follow
                logits[begin:] = NEG_INF
            else:  # an open segment must be closed by a timestamp, or the text ends
                logits[:eot] = NEG_INF
        timestamps = [token for token in tokens if token >= begin]
        if timestamps:
            last = timestamps[-1]
            floor = last if last_was_ts and not penultimate_was_ts else last + 1
            logits[begin:floor] = NEG_INF
        if step == 0:  # the first token is a timestamp, not too far into the window
            logits[:begin] = NEG_INF
            logits[begin + self._tokens.max_initial_timestamp_index + 1 :] = NEG_INF
        logprobs = logits.log_softmax(dim=-1)
        timestamp_mass = logprobs[begin:].logsumexp(dim=-1)
        if timestamp_mass > logprobs[:begin].max():
            logits[:begin] = NEG_INF


def _mask(vocab_size: int, token_ids: tuple[int, ...], device: torch.device) -> Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[list(token_ids)] = True
    return mask


@dataclass(slots=True)
class Hypothesis:
    tokens: list[int] = field(default_factory=list)
    """Generated so far, without the prefix and the end-of-text token."""
    logprob: float = 0.0
    """Sum of the chosen tokens' log-probabilities (the end-of-text token's included)."""

    @property
    def score(self) -> float:
        """Whisper's ranking without a length penalty: log-probability per token."""
        return self.logprob / max(1, len(self.tokens))


class Search:
    """One request's decode: `width` live hypotheses (1 unless beam search), advanced a token
    at a time from their rows' logits, until `width` of them have ended (or time runs out)."""

    def __init__(
        self,
        eot: int,
        *,
        beam_size: int = 1,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self._eot = eot
        self._temperature = temperature
        self._generator = generator
        self.width = beam_size if temperature == 0.0 else 1
        self.live = [Hypothesis()]
        self.finished: list[Hypothesis] = []

    @property
    def done(self) -> bool:
        return not self.live

    def advance(self, scores: list[Tensor]) -> list[tuple[int, int]]:
        """`scores[j]`: the filtered logits of live hypothesis j ([vocab], its own tensor).
        Returns the new live hypotheses as (parent j, token), in order."""
        if self.width == 1:
            return self._single(scores[0])
        return self._beams(scores)

    def _single(self, scores: Tensor) -> list[tuple[int, int]]:
        if self._temperature > 0.0:
            # Shifted so that the largest logit is 0, in float64 (where any temperature above
            # 0 is itself above 0): nothing overflows, and a tiny one picks the greedy token.
            shifted = scores.double() - float(scores.max())
            probs = (shifted / self._temperature).softmax(dim=-1)
            if not bool(torch.isfinite(probs).all()):  # `multinomial` would fail the batch
                raise NumericError("the sampling probabilities hold NaN or infinity")
            token = int(torch.multinomial(probs, 1, replacement=True, generator=self._generator)[0])
        else:
            token = int(scores.argmax())
        hypothesis = self.live[0]
        hypothesis.logprob += float(scores[token] - scores.logsumexp(dim=-1))
        if token == self._eot:
            self.finished.append(hypothesis)
            self.live = []
            return []
        hypothesis.tokens.append(token)
        return [(0, token)]

    def _beams(self, scores: list[Tensor]) -> list[tuple[int, int]]:
        """Whisper's beam search: each live hypothesis proposes its `width + 1` best tokens;
        the best-scoring proposals become the next live ones, ended ones are collected."""
        candidates: list[tuple[float, int, int]] = []
        for parent, row in enumerate(scores):
            logprobs = row - row.logsumexp(dim=-1)
            values, tokens = logprobs.topk(self.width + 1)
            base = self.live[parent].logprob
            for value, token in zip(values.tolist(), tokens.tolist(), strict=True):
                candidates.append((base + value, parent, token))
        candidates.sort(key=lambda c: c[0], reverse=True)
        chosen: list[tuple[int, int]] = []
        live: list[Hypothesis] = []
        for logprob, parent, token in candidates:
            hypothesis = Hypothesis(self.live[parent].tokens, logprob)
            if token == self._eot:
                if len(self.finished) < self.width:
                    self.finished.append(hypothesis)
                continue
            live.append(Hypothesis([*hypothesis.tokens, token], logprob))
            chosen.append((parent, token))
            if len(live) == self.width:
                break
        if len(self.finished) >= self.width:
            self.live, chosen = [], []
        else:
            self.live = live
        return chosen

    def stop(self) -> None:
        """Out of tokens: the live hypotheses end here."""
        self.finished.extend(self.live)
        self.live = []

    def best(self) -> Hypothesis:
        return max(self.finished, key=lambda h: h.score)
