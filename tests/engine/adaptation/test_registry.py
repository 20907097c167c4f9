"""The registry: the methods enrolment accepts and the projections the engine wraps."""

from app.engine.adaptation.lora.config import ADAPTABLE, METHOD
from app.engine.adaptation.lora.file import AdapterWeights
from app.engine.adaptation.registry import METHODS, adaptable_projections, method_names


def test_lora_is_registered_under_the_name_its_files_carry() -> None:
    assert method_names() == (METHOD,)
    assert METHODS[METHOD].targets == ADAPTABLE
    default = AdapterWeights(tensors={}, rank=1, alpha=1.0, base_fingerprint="f")
    assert default.method in METHODS


def test_adaptable_projections_cover_every_method_once() -> None:
    projections = adaptable_projections()
    assert len(projections) == len(set(projections))
    for method in METHODS.values():
        assert set(method.targets) <= set(projections)
