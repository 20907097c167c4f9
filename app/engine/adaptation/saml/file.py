"""The SAML file (`pqm-saml/1`): a speaker's adapter or an expert bank, in safetensors.

As the LoRA file (`lora.file`), and as strict: files are untrusted input; `load_saml` checks a
file on its own terms, `check_saml_compatible` against the served base model, `check_saml_bounds`
that no mixture of its experts can move a weight further than a LoRA adapter may. `dump_saml` is
byte-reproducible. Tensor names and shapes: `weights`.
"""

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import get_args

import torch
from safetensors.torch import save as save_safetensors
from torch import Tensor

from app.engine.adaptation.file_metadata import (
    AdapterFileError,
    canonical_header,
    check_target_modules,
    choice,
    encoder_window,
    extra_metadata,
    positive_number,
    required,
    whole_number,
)
from app.engine.adaptation.lora.file import (
    MAX_SCALE,
    MAX_UPDATE_RATIO,
    AdaptableLayer,
    BaseModelMismatchError,
    read_adapter_header,
)
from app.engine.adaptation.saml.config import METHOD, ROUTER_KINDS, ROUTES, Route, route_of
from app.engine.adaptation.saml.router import Router
from app.engine.adaptation.saml.weights import (
    EXPERT_FACTORS,
    ROUTER_PREFIX,
    SamlKind,
    SamlWeights,
)
from app.engine.tensor_file import TensorFile

__all__ = [
    "MAX_EXPERTS",
    "MAX_EXPERT_RANK",
    "MAX_ROUTER_ABS",
    "MIN_TEMPERATURE",
    "SAML_FORMAT",
    "check_saml_bounds",
    "check_saml_compatible",
    "dump_saml",
    "load_saml",
    "read_saml_header",
    "saml_update_bounds",
]

SAML_FORMAT = "pqm-saml/1"
MAX_EXPERTS = 64
"""The authors use 10 experts; a bank of 64 is already past what one speaker's data trains."""
MAX_EXPERT_RANK = 16
"""The authors' experts are rank 1; mixtures of many low-rank experts are SAML's point."""
MAX_ROUTER_ABS = 1e3
"""Largest router value: trained routers hold values far below 1; beyond, a convolution and a
gate over d = 1280 of large activations come close to float32's overflow."""
MIN_TEMPERATURE = 1e-2
"""Coldest router softmax: 100 times sharper than trained routers' 1 is a hard choice already;
colder lets bounded but large logits overflow float32 (inf - inf: NaN routing)."""
_SAML_KINDS: tuple[SamlKind, ...] = get_args(SamlKind)
_KNOWN_METADATA = frozenset(
    {
        "format",
        "method",
        "kind",
        "experts",
        "rank",
        "alpha",
        "router",
        "temperature",
        "base_fingerprint",
        "encoder_window",
        "target_modules",
    }
)
_ROUTERS = f"{ROUTER_PREFIX}."


def dump_saml(weights: SamlWeights) -> bytes:
    """The safetensors file; identical weights and metadata always give identical bytes."""
    metadata = {
        **weights.extra,
        "format": SAML_FORMAT,
        "method": weights.method,
        "kind": weights.kind,
        "experts": str(weights.experts),
        "rank": str(weights.rank),
        "alpha": repr(weights.alpha),
        "router": weights.router,
        "temperature": repr(weights.temperature),
        "base_fingerprint": weights.base_fingerprint,
        "encoder_window": weights.encoder_window,
        "target_modules": json.dumps(weights.target_modules),
    }
    tensors = {
        name: weights.tensors[name].detach().float().cpu().contiguous()
        for name in sorted(weights.tensors)
    }
    return canonical_header(save_safetensors(tensors, metadata=metadata))


def read_saml_header(data: bytes) -> TensorFile:
    """The file's safetensors header, checked in plain Python (no torch, bounded work): cheap
    to call off the inference thread, before `load_saml`."""
    return read_adapter_header(data)


def load_saml(data: bytes | TensorFile) -> SamlWeights:
    """Parses and checks a SAML file on its own terms (not yet against a base model)."""
    file = data if isinstance(data, TensorFile) else read_saml_header(data)
    weights = replace(_described(file.metadata), tensors=file.tensors())  # torch work last
    _check_expert_sides(weights)
    check_target_modules(file.metadata, weights.target_modules)
    return weights


def _described(metadata: dict[str, str]) -> SamlWeights:
    """The weights as the metadata describes them, without their tensors."""
    if metadata.get("format") != SAML_FORMAT:
        raise AdapterFileError(f"metadata 'format' must be {SAML_FORMAT!r}")
    method = required(metadata, "method")
    if method != METHOD:
        raise AdapterFileError(f"unknown method {method!r} (this file format holds {METHOD})")
    required(metadata, "target_modules")  # checked against the tensors once they are read
    return SamlWeights(
        tensors={},
        experts=whole_number(metadata, "experts", MAX_EXPERTS),
        rank=whole_number(metadata, "rank", MAX_EXPERT_RANK),
        alpha=positive_number(metadata, "alpha"),
        router=choice("router", required(metadata, "router"), ROUTER_KINDS),
        base_fingerprint=required(metadata, "base_fingerprint"),
        temperature=positive_number(metadata, "temperature"),
        encoder_window=encoder_window(required(metadata, "encoder_window")),
        kind=choice("kind", required(metadata, "kind"), _SAML_KINDS),
        method=method,
        extra=extra_metadata(metadata, _KNOWN_METADATA),
    )


def _check_expert_sides(weights: SamlWeights) -> None:
    """Every expert tensor is 3-D, its expert and rank sides those of the metadata."""
    for name in sorted(weights.tensors):
        factor = name.rpartition(".")[2]
        if factor not in EXPERT_FACTORS:
            continue
        tensor = weights.tensors[name]
        if tensor.dim() != 3:
            raise AdapterFileError(
                f"tensor {name!r} must have 3 dimensions, not shape {tuple(tensor.shape)}"
            )
        if tensor.shape[0] != weights.experts:
            raise AdapterFileError(
                f"tensor {name!r} holds {tensor.shape[0]} experts, "
                f"but metadata 'experts' is {weights.experts}"
            )
        found = tensor.shape[1] if factor == "experts_A" else tensor.shape[2]
        if found != weights.rank:
            raise AdapterFileError(
                f"tensor {name!r} has rank {found}, but metadata 'rank' is {weights.rank}"
            )


def check_saml_compatible(
    weights: SamlWeights,
    fingerprint: str,
    layers: Mapping[str, AdaptableLayer],
    d_model_by_route: Mapping[Route, int],
) -> None:
    """Raises `AdapterFileError` unless every expert fits a layer of this exact base model and
    the routers are exactly those `Router` builds for it."""
    if weights.base_fingerprint != fingerprint:
        raise BaseModelMismatchError(
            "SAML weights were trained for a different base model "
            f"(fingerprint {weights.base_fingerprint[:12]}…, served {fingerprint[:12]}…)"
        )
    if weights.method != METHOD:
        raise AdapterFileError(f"unknown method {weights.method!r}")
    experts = sorted(name for name in weights.tensors if not name.startswith(_ROUTERS))
    if not experts:
        raise AdapterFileError("SAML weights hold no experts")
    for name in experts:  # sorted: the first problem reported is always the same one
        _check_expert(weights, name, layers)
    _check_routers(weights, d_model_by_route)


def _check_expert(weights: SamlWeights, name: str, layers: Mapping[str, AdaptableLayer]) -> None:
    module, _, factor = name.rpartition(".")
    layer = layers.get(module)
    if layer is None or factor not in EXPERT_FACTORS:
        raise AdapterFileError(f"tensor {name!r} matches no adaptable layer of the base model")
    if route_of(module) is None:
        raise AdapterFileError(
            f"tensor {name!r} adapts {module!r}, which no router serves "
            "(experts go on attention projections only)"
        )
    e, r = weights.experts, weights.rank
    expected = (e, r, layer.in_features) if factor == "experts_A" else (e, layer.out_features, r)
    _check_values(name, weights.tensors[name], expected)
    partner = f"{module}.experts_B" if factor == "experts_A" else f"{module}.experts_A"
    if partner not in weights.tensors:
        raise AdapterFileError(f"tensor {name!r} has no matching {partner!r}")


def _check_routers(weights: SamlWeights, d_model_by_route: Mapping[Route, int]) -> None:
    """Exactly one router per route, of exactly the names and shapes a `Router` has."""
    expected = _router_shapes(weights, d_model_by_route)
    found = {name for name in weights.tensors if name.startswith(_ROUTERS)}
    missing = sorted(expected.keys() - found)
    if missing:
        raise AdapterFileError(f"router tensor {missing[0]!r} is missing")
    unknown = sorted(found - expected.keys())
    if unknown:
        raise AdapterFileError(
            f"tensor {unknown[0]!r} is no parameter of a {weights.router!r} router"
        )
    for name in sorted(expected):
        tensor = weights.tensors[name]
        _check_values(name, tensor, expected[name])
        if bool((tensor.abs() > MAX_ROUTER_ABS).any()):
            raise AdapterFileError(
                f"router tensor {name!r} holds values beyond ±{MAX_ROUTER_ABS:g}"
            )


def _router_shapes(
    weights: SamlWeights, d_model_by_route: Mapping[Route, int]
) -> dict[str, tuple[int, ...]]:
    """The shapes of each route's `Router`'s state dict, by tensor name: built on the meta
    device (shapes, no memory), so they can never drift from what serving will load into."""
    shapes: dict[str, tuple[int, ...]] = {}
    for route in ROUTES:
        with torch.device("meta"):
            router = Router(
                d_model_by_route[route],
                weights.experts,
                weights.router,
                cross=route == "decoder_cross",
            )
        for parameter, tensor in router.state_dict().items():
            shapes[f"{_ROUTERS}{route}.{parameter}"] = tuple(tensor.shape)
    return shapes


def _check_values(name: str, tensor: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != expected:
        raise AdapterFileError(
            f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {expected}"
        )
    if tensor.dtype != torch.float32:
        raise AdapterFileError(f"tensor {name!r} must be float32, not {tensor.dtype}")
    if not bool(torch.isfinite(tensor).all()):
        raise AdapterFileError(f"tensor {name!r} holds NaN or infinite values")


def saml_update_bounds(weights: SamlWeights, base_norms: Mapping[str, float]) -> dict[str, float]:
    """Per module with experts, the largest `||update||_F / ||W||_F` any routing can give.

    Routing weights lie on the simplex, so a mixture of factors is no larger than the largest
    factor (convexity of the norm), and a mixture of products no larger than the largest
    product; the Frobenius norm is sub-multiplicative: either way the update is at most
    `scale * max_e ||A_e||_F * max_e ||B_e||_F`. In float64: huge factors give inf, not NaN."""
    bounds: dict[str, float] = {}
    for module in weights.target_modules:
        factors = weights.expert_factors(module)
        if factors is None:
            raise AdapterFileError(f"module {module!r} lacks experts_A or experts_B")
        a, b = (factor.double().flatten(1) for factor in factors)  # [experts, rank * in|out]
        largest = float(a.norm(dim=1).max()) * float(b.norm(dim=1).max())
        update = abs(weights.scale) * largest
        base = base_norms[module]
        bounds[module] = update / base if base > 0 else math.inf
    return bounds


def check_saml_bounds(weights: SamlWeights, base_norms: Mapping[str, float]) -> None:
    """Raises `AdapterFileError` unless no routing can move a weight further than a LoRA adapter
    may (`lora.file.check_bounds`), nor sharpen the routers past `MIN_TEMPERATURE`. Call after
    `check_saml_compatible`."""
    if weights.scale > MAX_SCALE:
        raise AdapterFileError(
            f"metadata 'alpha' / 'rank' is {weights.scale:.3g}; at most {MAX_SCALE:g} is allowed"
        )
    if weights.temperature < MIN_TEMPERATURE:
        raise AdapterFileError(
            f"metadata 'temperature' is {weights.temperature:.3g}; "
            f"at least {MIN_TEMPERATURE:g} is allowed"
        )
    for module, bound in sorted(saml_update_bounds(weights, base_norms).items()):
        if not bound <= MAX_UPDATE_RATIO:
            raise AdapterFileError(
                f"a mixture of the experts of {module!r} can move its weight by {bound:.3g} "
                f"times the weight's norm; at most {MAX_UPDATE_RATIO:g} is allowed"
            )
