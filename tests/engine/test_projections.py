import torch

from app.engine.projections import BaseWeights, Projection, RowSpan, gemv_layout


def _factors(in_features: int, out_features: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(in_features, rank, generator=generator)
    b = torch.randn(rank, out_features, generator=generator)
    return a, b


def test_gemv_layout_keeps_the_values_and_holds_a_column_major() -> None:
    a, b = _factors(384, 384, 8)
    laid_a, laid_b = gemv_layout((a, b))
    assert torch.equal(laid_a, a)
    assert laid_a.stride() == (1, 384)
    assert laid_b is b


def test_a_one_row_update_with_gemv_factors_is_the_low_rank_product_alone_or_batched() -> None:
    a, b = _factors(1536, 384, 8)
    factors = gemv_layout((a, b))
    projection = Projection.build(BaseWeights(torch.zeros(384, 1536), None), torch.float32)
    x = torch.randn(3, 1, 1536)
    alone = projection(x[1:2], lora=[RowSpan(0, 1, factors)])
    batched = projection(x, lora=[RowSpan(0, 1, _factors(1536, 384, 4)), RowSpan(1, 1, factors)])
    torch.testing.assert_close(alone[0], x[1] @ a @ b, rtol=1e-4, atol=1e-3)
    assert torch.equal(batched[1], alone[0])
    assert torch.equal(batched[2], torch.zeros(1, 384))
