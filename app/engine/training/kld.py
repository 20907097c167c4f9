"""KL-divergence regularised adaptation (Yu et al., ICASSP 2013): the training target of each
transcript token mixes the transcript (weight 1 - rho) with the base model's own distribution
(weight rho), so an adapter trained on a dozen recordings moves the model only as far as the
recordings demand.

The base distribution never changes during training (the base is frozen and fresh LoRA factors
start at B = 0), so it is computed once per example, kept as its `TOP_K` most likely tokens
(renormalised): a few kilobytes per recording instead of a vocabulary-sized row per token.
"""

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from app.engine.training.data import IGNORE_INDEX, BaseTargets, Batch, Example, collate

__all__ = ["TOP_K", "regularised_loss_sum", "with_base_targets"]

TOP_K = 32


def with_base_targets(
    examples: Sequence[Example], pad: int, logits_of: Callable[[Batch], Tensor]
) -> list[Example]:
    """The examples with their `base` filled from `logits_of` (the model's logits
    [1, length, vocab] for a batch of one), called before any adapter moved the model."""
    out = []
    with torch.no_grad():
        for example in examples:
            batch = collate([example], pad)
            scored = batch.labels[0] != IGNORE_INDEX
            logits = logits_of(batch)[0][scored].float()
            top = torch.topk(torch.log_softmax(logits, dim=-1), TOP_K, dim=-1)
            base = BaseTargets(top.indices, torch.softmax(top.values, dim=-1))
            out.append(replace(example, base=base))
    return out


def regularised_loss_sum(
    logits: Tensor, labels: Tensor, examples: Sequence[Example], rho: float
) -> Tensor:
    """Summed over scored tokens: (1 - rho) * cross-entropy with the transcript plus rho *
    cross-entropy with the base distribution. `examples` are the batch's rows, in order."""
    scored = labels != IGNORE_INDEX
    log_probs = torch.log_softmax(logits[scored].float(), dim=-1)
    hard = nn.functional.nll_loss(log_probs, labels[scored], reduction="sum")
    if rho == 0.0:
        return hard
    targets = [example.base for example in examples]
    if any(target is None for target in targets):
        raise ValueError("KL-regularised training needs every example's base targets")
    tokens = torch.cat([t.tokens for t in targets if t is not None])
    probabilities = torch.cat([t.probabilities for t in targets if t is not None])
    soft = -(probabilities * log_probs.gather(1, tokens)).sum()
    return (1.0 - rho) * hard + rho * soft
