"""The registry: the methods enrolment accepts and the projections the engine wraps."""

from app.engine.adaptation.lora.config import ADAPTABLE, METHOD
from app.engine.adaptation.lora.file import AdapterWeights
from app.engine.adaptation.registry import METHODS, adaptable_projections, method_names
from app.engine.adaptation.saml import config as saml
from app.engine.adaptation.saml.weights import SamlWeights


def test_each_method_is_registered_under_the_name_its_files_carry() -> None:
    assert method_names() == (METHOD, saml.METHOD)
    assert METHODS[METHOD].targets == ADAPTABLE
    assert METHODS[saml.METHOD].targets == saml.TARGETS
    lora = AdapterWeights(tensors={}, rank=1, alpha=1.0, base_fingerprint="f")
    mixture = SamlWeights({}, experts=2, rank=1, alpha=4.0, router="conv", base_fingerprint="f")
    assert {lora.method, mixture.method} <= set(METHODS)


def test_adaptable_projections_cover_every_method_once() -> None:
    projections = adaptable_projections()
    assert len(projections) == len(set(projections))
    for method in METHODS.values():
        assert set(method.targets) <= set(projections)
