import pytest

from bench.longform_training import pooled, table


def _entry(base: float, adapter: float) -> dict[str, float | None]:
    return {"base": base, "adapter": adapter, "gain": (base - adapter) / base}


def _row(single: tuple[float, float], long: tuple[float, float]) -> dict[str, object]:
    return {"single": _entry(*single), "sequential": {**_entry(*long), "retained": None}}


def test_pooled_gains_are_of_the_mean_wers_and_kept_is_long_over_single() -> None:
    rows = {
        "a": {"utterances": _row((0.4, 0.2), (0.3, 0.2)), "joined": _row((0.4, 0.2), (0.3, 0.15))},
        "b": {"utterances": _row((0.2, 0.2), (0.1, 0.1)), "joined": _row((0.2, 0.1), (0.1, 0.05))},
    }

    result = pooled(rows, ["sequential"])

    single = result["utterances"]["single"]
    assert (single["base"], single["adapter"]) == (0.3, 0.2)
    assert single["gain"] == pytest.approx(1 / 3)
    assert result["utterances"]["sequential"]["gain"] == pytest.approx(0.25)
    assert result["utterances"]["sequential"]["kept"] == 0.75
    assert result["joined"]["sequential"]["kept"] == round(0.5 / 0.5, 3)
    headers, body = table({"modes": ["sequential"], "speakers": rows, "pooled": result})
    assert len(headers) == 4
    assert [cells[:2] for cells in body][-2:] == [["mean", "utterances"], ["mean", "joined"]]
    assert body[-2][3] == "0.200->0.150 (+25%, 0.75)"
