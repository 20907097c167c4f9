"""bench.enrolment's bounds report: where a trained adapter sits against the stored-file bounds."""

from collections.abc import Callable

import pytest

from app.engine.adaptation.residency import AnyAdapter
from app.engine.whisper import WhisperEngine
from bench.enrolment import bounds_report
from tests.support.adapters import random_adapter, random_saml


@pytest.mark.parametrize("make", [random_adapter, random_saml], ids=["lora", "saml"])
def test_a_small_adapter_is_well_within_the_bounds(
    nf4_engine: WhisperEngine, make: Callable[[WhisperEngine, int], AnyAdapter]
) -> None:
    report = bounds_report(nf4_engine, make(nf4_engine, 1))

    assert report["refused"] is None
    assert report["max_update_ratio"] > 0.0
    assert report["margin"] > 1.0
