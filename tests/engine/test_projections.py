import torch

from app.engine.adaptation.lora.bank import Factors
from app.engine.projections import BaseWeights, Projection, fused_factors
from app.engine.row_adapters import RowSpan


def _factors(in_features: int, out_features: int, rank: int, seed: int = 0) -> Factors:
    """A held column-major, as the bank hands it out."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(rank, in_features, generator=generator).T
    b = torch.randn(rank, out_features, generator=generator)
    return a, b


def test_fused_factors_stack_each_part_into_its_own_output_range_with_a_column_major() -> None:
    parts: list[Factors | None] = [_factors(16, 12, 2, seed=1), None, _factors(16, 4, 3, seed=2)]
    fused = fused_factors(parts, [12, 8, 4])
    assert fused is not None
    a, b = fused
    assert a.shape == (16, 5)
    assert a.stride() == (1, 16)
    x = torch.randn(3, 16)
    update = x @ a @ b
    first, third = parts[0], parts[2]
    assert first is not None
    assert third is not None
    torch.testing.assert_close(update[:, :12], x @ first[0] @ first[1])
    assert torch.equal(update[:, 12:20], torch.zeros(3, 8))
    torch.testing.assert_close(update[:, 20:], x @ third[0] @ third[1])


def test_a_one_row_update_is_the_low_rank_product_alone_or_batched() -> None:
    factors = _factors(1536, 384, 8)
    projection = Projection.build(BaseWeights(torch.zeros(384, 1536), None), torch.float32)
    x = torch.randn(3, 1, 1536)
    alone = projection(x[1:2], lora=[RowSpan(0, 1, factors)])
    neighbour = RowSpan(0, 1, _factors(1536, 384, 4, seed=1))
    batched = projection(x, lora=[neighbour, RowSpan(1, 1, factors)])
    torch.testing.assert_close(alone[0], x[1] @ factors[0] @ factors[1], rtol=1e-4, atol=1e-3)
    assert torch.equal(batched[1], alone[0])
    assert torch.equal(batched[2], torch.zeros(1, 384))
