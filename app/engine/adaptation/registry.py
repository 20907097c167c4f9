"""The adaptation methods the engine knows, by name: the one place a method registers.

A method lives in its own package beside `lora` (config, layer, bank, file) and adds one entry
here; enrolment accepts exactly these names, and the serving engine wraps every projection some
method may adapt.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from app.engine.adaptation.lora import config as lora_config
from app.engine.adaptation.saml import config as saml_config

__all__ = ["METHODS", "AdaptationMethod", "adaptable_projections", "method_names"]


@dataclass(frozen=True, slots=True)
class AdaptationMethod:
    name: str
    """As enrolment requests and adapter files name it."""
    targets: tuple[str, ...]
    """Projection names (last component of the module path) it may adapt."""


METHODS: Mapping[str, AdaptationMethod] = {
    method.name: method
    for method in (
        AdaptationMethod(name=lora_config.METHOD, targets=lora_config.ADAPTABLE),
        AdaptationMethod(name=saml_config.METHOD, targets=saml_config.TARGETS),
    )
}


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def adaptable_projections() -> tuple[str, ...]:
    """Every projection name some method may adapt, in a stable order."""
    names = [name for method in METHODS.values() for name in method.targets]
    return tuple(dict.fromkeys(names))
