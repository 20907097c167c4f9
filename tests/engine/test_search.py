"""The per-request search on hand-made logits: greedy, sampling, beam search."""

import math

import torch

from app.engine.search import Search

EOT = 0
VOCAB = 4


def logits(*probabilities: float) -> torch.Tensor:
    return torch.log(torch.tensor(probabilities, dtype=torch.float32))


def run(search: Search, table: dict[tuple[int, ...], torch.Tensor], steps: int = 10) -> None:
    """Drives `search` with logits looked up by each live hypothesis's tokens so far."""
    for _ in range(steps):
        if search.done:
            return
        scores = [table[tuple(h.tokens)].clone() for h in search.live]
        search.advance(scores)
    search.stop()


# From the start, token 1 looks best (0.55) but leads to a weak continuation; token 2 (0.45) is
# followed by a near-certain end. Greedy takes 1; a beam of 2 finds [2], the better sequence
# also per token (Whisper ranks log-probability / length).
TABLE = {
    (): logits(0.0001, 0.55, 0.4499, 0.0000001),
    (1,): logits(0.32, 0.34, 0.34, 0.0000001),
    (2,): logits(0.99, 0.005, 0.005, 0.0000001),
    (1, 1): logits(1.0, 1e-9, 1e-9, 1e-9),
    (1, 2): logits(1.0, 1e-9, 1e-9, 1e-9),
    (2, 1): logits(1.0, 1e-9, 1e-9, 1e-9),
    (2, 2): logits(1.0, 1e-9, 1e-9, 1e-9),
}


def test_greedy_takes_the_locally_best_token() -> None:
    search = Search(EOT)
    run(search, TABLE)
    best = search.best()
    assert best.tokens in ([1, 1], [1, 2])
    assert search.width == 1


def test_beam_search_finds_the_sequence_greedy_misses() -> None:
    search = Search(EOT, beam_size=2)
    run(search, TABLE)
    best = search.best()
    assert best.tokens == [2]
    assert math.isclose(best.logprob, math.log(0.4499) + math.log(0.99), rel_tol=1e-4)
    assert len(search.finished) == 2


def test_a_sampled_search_is_reproducible_with_its_generator() -> None:
    results = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(3)
        search = Search(EOT, beam_size=5, temperature=1.0, generator=generator)
        assert search.width == 1, "sampling keeps one hypothesis"
        run(search, TABLE)
        results.append(search.best().tokens)
    assert results[0] == results[1]


def test_running_out_of_tokens_ends_the_live_hypotheses() -> None:
    table: dict[tuple[int, ...], torch.Tensor] = {(): logits(1e-9, 0.7, 0.3, 1e-9)}
    search = Search(EOT, beam_size=2)
    run(search, table, steps=1)
    assert search.done
    assert sorted(tuple(h.tokens) for h in search.finished) == [(1,), (2,)]
    assert search.best().tokens == [1]
