"""The SAML file format: reproducible bytes, a fit to a tiny model checked exactly, and a
hostile corpus each refused with `AdapterFileError` by the one check it targets."""

import json
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from app.engine.adaptation.lora.config import ATTENTION_TARGETS
from app.engine.adaptation.lora.file import (
    MAX_EXTRA_ENTRIES,
    MAX_EXTRA_VALUE_CHARS,
    AdapterFileError,
    BaseModelMismatchError,
)
from app.engine.adaptation.saml.config import ROUTES, Route, RouterKind, route_of
from app.engine.adaptation.saml.file import (
    MAX_EXPERT_RANK,
    MAX_EXPERTS,
    MAX_ROUTER_ABS,
    SAML_FORMAT,
    check_saml_bounds,
    check_saml_compatible,
    dump_saml,
    load_saml,
    read_saml_header,
    saml_update_bounds,
)
from app.engine.adaptation.saml.router import Router
from app.engine.adaptation.saml.weights import EXPERT_FACTORS, SamlWeights
from tests.support.hostile_tensor_files import HOSTILE, with_header

FINGERPRINT = "f" * 64
D = 8
FFN = 16
STACK_LAYERS = 2
D_MODEL: dict[Route, int] = dict.fromkeys(ROUTES, D)


@dataclass(slots=True)
class FakeLayer:
    """Just what `AdaptableLayer` asks of a layer (its protocol's attributes are settable)."""

    in_features: int
    out_features: int


def _stack(stack: str, attentions: tuple[str, ...]) -> dict[str, FakeLayer]:
    layers = {}
    for index in range(STACK_LAYERS):
        prefix = f"model.{stack}.layers.{index}"
        for attention in attentions:
            for projection in ATTENTION_TARGETS:
                layers[f"{prefix}.{attention}.{projection}"] = FakeLayer(D, D)
        layers[f"{prefix}.fc1"] = FakeLayer(D, FFN)
        layers[f"{prefix}.fc2"] = FakeLayer(FFN, D)
    return layers


LAYERS = _stack("encoder", ("self_attn",)) | _stack("decoder", ("self_attn", "encoder_attn"))
"""A tiny Whisper's adaptable layers: d_model 8, 2 encoder and 2 decoder layers."""
EXPERT_MODULES = sorted(name for name in LAYERS if route_of(name) is not None)
BASE_NORMS = dict.fromkeys(LAYERS, 1.0)
ENC_Q = "model.encoder.layers.0.self_attn.q_proj"
CROSS_K = "model.decoder.layers.0.encoder_attn.k_proj"
FC1 = "model.decoder.layers.1.fc1"
GATE = "routers.encoder_self.gate.weight"
CROSS_POOL_BIAS = "routers.decoder_cross.memory_summary.pool.bias"


def toy_tensors(
    experts: int = 3, rank: int = 2, router: RouterKind = "conv", seed: int = 0
) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module in EXPERT_MODULES:
        layer = LAYERS[module]
        a = torch.randn(experts, rank, layer.in_features, generator=generator)
        b = torch.randn(experts, layer.out_features, rank, generator=generator)
        tensors[f"{module}.experts_A"] = 0.05 * a
        tensors[f"{module}.experts_B"] = 0.05 * b
    for route in ROUTES:
        state = Router(D, experts, router, cross=route == "decoder_cross").state_dict()
        for name, value in state.items():
            tensors[f"routers.{route}.{name}"] = torch.randn(value.shape, generator=generator)
    return tensors


def toy_adapter(**changes: Any) -> SamlWeights:
    weights = SamlWeights(
        tensors=toy_tensors(),
        experts=3,
        rank=2,
        alpha=4.0,
        router="conv",
        base_fingerprint=FINGERPRINT,
        temperature=0.5,
        extra={"trainer": "test", "seed": "0"},
    )
    return replace(weights, **changes)


def toy_bank() -> SamlWeights:
    return SamlWeights(
        tensors=toy_tensors(experts=4, rank=1, router="depthwise", seed=1),
        experts=4,
        rank=1,
        alpha=2.0,
        router="depthwise",
        base_fingerprint=FINGERPRINT,
        encoder_window="fit",
        kind="bank",
    )


def admit(data: bytes) -> SamlWeights:
    """Every check a file passes before it is served, in order."""
    weights = load_saml(data)
    check_saml_compatible(weights, FINGERPRINT, LAYERS, D_MODEL)
    check_saml_bounds(weights, BASE_NORMS)
    return weights


def assert_same(loaded: SamlWeights, original: SamlWeights) -> None:
    assert loaded.tensors.keys() == original.tensors.keys()
    for name, tensor in original.tensors.items():
        assert torch.equal(loaded.tensors[name], tensor), name
    assert replace(loaded, tensors={}) == replace(original, tensors={})


# Round trips.


def test_dump_is_byte_reproducible() -> None:
    """safetensors alone writes the metadata in a different order from call to call."""
    weights = toy_adapter()
    assert len({dump_saml(weights) for _ in range(20)}) == 1
    reordered = toy_adapter(
        tensors=dict(reversed(list(toy_tensors().items()))), extra={"seed": "0", "trainer": "test"}
    )
    assert dump_saml(reordered) == dump_saml(weights)


@pytest.mark.parametrize("make", [toy_adapter, toy_bank], ids=["adapter", "bank"])
def test_load_round_trips_and_dumps_the_same_bytes_again(make: Callable[[], SamlWeights]) -> None:
    weights = make()
    data = dump_saml(weights)
    loaded = admit(data)
    assert_same(loaded, weights)
    assert dump_saml(loaded) == data
    assert_same(load_saml(read_saml_header(data)), weights)


def test_dump_writes_a_canonical_header_safetensors_reads() -> None:
    data = dump_saml(toy_bank())
    length = int.from_bytes(data[:8], "little")
    assert length % 8 == 0
    header = json.loads(data[8 : 8 + length])
    assert list(header) == sorted(header)
    assert header["__metadata__"] == {
        "format": SAML_FORMAT,
        "method": "saml",
        "kind": "bank",
        "experts": "4",
        "rank": "1",
        "alpha": "2.0",
        "router": "depthwise",
        "temperature": "1.0",
        "base_fingerprint": FINGERPRINT,
        "encoder_window": "fit",
        "target_modules": json.dumps(EXPERT_MODULES),
    }
    assert load_safetensors(data).keys() == toy_bank().tensors.keys()


@pytest.mark.parametrize("make", [toy_adapter, toy_bank], ids=["adapter", "bank"])
def test_admitted_routers_load_into_the_router_serving_builds(
    make: Callable[[], SamlWeights],
) -> None:
    weights = admit(dump_saml(make()))
    for route in ROUTES:
        router = Router(D, weights.experts, weights.router, cross=route == "decoder_cross")
        router.load_state_dict(weights.router_state(route), strict=True)


# Bounds.


def test_update_bounds_are_the_largest_factors_norms_times_the_scale() -> None:
    weights = toy_adapter()
    bounds = saml_update_bounds(weights, dict.fromkeys(EXPERT_MODULES, 2.0))
    assert list(bounds) == EXPERT_MODULES
    a, b = weights.tensors[f"{ENC_Q}.experts_A"], weights.tensors[f"{ENC_Q}.experts_B"]
    largest_a = max(float(torch.linalg.matrix_norm(a[e].double())) for e in range(3))
    largest_b = max(float(torch.linalg.matrix_norm(b[e].double())) for e in range(3))
    assert bounds[ENC_Q] == pytest.approx(weights.scale * largest_a * largest_b / 2.0)


def test_no_mixture_of_experts_moves_a_weight_past_its_bound() -> None:
    """Mixing the factors or mixing the products: both stay within the bound."""
    weights = toy_adapter()
    bound = saml_update_bounds(weights, dict.fromkeys(EXPERT_MODULES, 1.0))
    a, b = weights.tensors[f"{ENC_Q}.experts_A"], weights.tensors[f"{ENC_Q}.experts_B"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        p = torch.softmax(4 * torch.randn(3, generator=generator), dim=0)  # on the simplex
        mixed_factors = torch.einsum("e,eor->or", p, b) @ torch.einsum("e,eri->ri", p, a)
        mixed_products = torch.einsum("e,eor,eri->oi", p, b, a)
        for update in (mixed_factors, mixed_products):
            assert weights.scale * float(torch.linalg.matrix_norm(update)) <= bound[ENC_Q]


def test_a_base_weight_of_no_norm_gives_an_infinite_bound() -> None:
    bounds = saml_update_bounds(toy_adapter(), dict.fromkeys(EXPERT_MODULES, 0.0))
    assert all(math.isinf(bound) for bound in bounds.values())


def test_the_first_problem_reported_is_always_the_same() -> None:
    """Two problems, the tensors in either order: the refusal names the same one."""
    bad = {f"{ENC_Q}.experts_A": torch.zeros(3, 2, 7), f"{CROSS_K}.experts_B": torch.zeros(3, 7, 2)}
    items = list((toy_tensors() | bad).items())
    messages = set()
    for order in (items, items[::-1]):
        with pytest.raises(AdapterFileError) as refusal:
            check_saml_compatible(toy_adapter(tensors=dict(order)), FINGERPRINT, LAYERS, D_MODEL)
        messages.add(str(refusal.value))
    assert messages == {f"tensor '{CROSS_K}.experts_B' has shape (3, 7, 2), expected (3, 8, 2)"}


# The hostile corpus: files built here, each refused by the one check it targets.

Change = Callable[[dict[str, Tensor]], None]


def _metadata_of(tensors: dict[str, Tensor]) -> dict[str, str]:
    return {
        "format": SAML_FORMAT,
        "method": "saml",
        "kind": "adapter",
        "experts": "3",
        "rank": "2",
        "alpha": "4.0",
        "router": "conv",
        "temperature": "0.5",
        "base_fingerprint": FINGERPRINT,
        "encoder_window": "full",
        "target_modules": json.dumps(
            sorted({n.rsplit(".", 1)[0] for n in tensors if n.endswith(EXPERT_FACTORS)})
        ),
    }


def raw_file(change: Change | None = None, /, **changes: str | None) -> bytes:
    """A file written by safetensors alone: the toy adapter's tensors changed by `change`,
    its metadata by `changes` (None: removed); `target_modules` follows the tensors."""
    tensors = toy_tensors()
    if change is not None:
        change(tensors)
    metadata = _metadata_of(tensors) | changes
    kept = {key: value for key, value in metadata.items() if value is not None}
    return bytes(save_safetensors(tensors, metadata=kept))


def _set(name: str, make: Callable[[Tensor], Tensor]) -> Change:
    def change(tensors: dict[str, Tensor]) -> None:
        tensors[name] = make(tensors.get(name, torch.zeros(3, 2, D)))

    return change


def _put(name: str, value: float) -> Change:
    """One entry of `name` set to `value`."""

    def poison(tensor: Tensor) -> Tensor:
        poisoned = tensor.clone()
        poisoned.view(-1)[0] = value
        return poisoned

    return _set(name, poison)


def _without(*prefixes: str) -> Change:
    def change(tensors: dict[str, Tensor]) -> None:
        for name in [n for n in tensors if n.startswith(prefixes)]:
            del tensors[name]

    return change


def _edited(edit: Callable[[str], str]) -> bytes:
    data = raw_file()
    length = int.from_bytes(data[:8], "little")
    return with_header(edit(data[8 : 8 + length].decode()).encode(), data[8 + length :])


def _truncated(keep: Callable[[bytes], int]) -> Callable[[], bytes]:
    def make() -> bytes:
        data = raw_file()
        return data[: keep(data)]

    return make


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


A, B = f"{ENC_Q}.experts_A", f"{CROSS_K}.experts_B"
WHOLE = "must be a whole number"
EXPERTS_RANGE = f"'experts' must be between 1 and {MAX_EXPERTS}"
RANK_RANGE = f"'rank' must be between 1 and {MAX_EXPERT_RANK}"
NOT_FINITE = "holds NaN or infinite values"
NOT_F32 = "must be float32, not torch.float16"
TOO_FAR = "times the weight's norm; at most 1 is allowed"
BEYOND = f"holds values beyond ±{MAX_ROUTER_ABS:g}"
MISSING = "router tensor '{}' is missing"
NOT_OF_A_ROUTER = "is no parameter of a 'conv' router"

CORPUS: dict[str, tuple[Callable[[], bytes], str]] = {
    # Not this format, or not a file at all.
    "empty": (lambda: b"", "not a safetensors file"),
    "pickle": (lambda: pickle.dumps({A: [[1.0]]}), "not a safetensors file"),
    "format-lora": (lambda: raw_file(format="pqm-lora/1"), f"'format' must be {SAML_FORMAT!r}"),
    "format-missing": (lambda: raw_file(format=None), "'format' must be"),
    "method-lora": (
        lambda: raw_file(method="lora"),
        "unknown method 'lora' (this file format holds saml)",
    ),
    "method-missing": (lambda: raw_file(method=None), "'method' is missing"),
    "kind-unknown": (lambda: raw_file(kind="speaker"), "unknown kind 'speaker'"),
    "kind-missing": (lambda: raw_file(kind=None), "'kind' is missing"),
    # Numbers.
    "experts-0": (lambda: raw_file(experts="0"), EXPERTS_RANGE),
    "experts-65": (lambda: raw_file(experts=str(MAX_EXPERTS + 1)), EXPERTS_RANGE),
    "experts-5000-digits": (
        lambda: raw_file(experts="9" * 5000),
        f"{EXPERTS_RANGE}, not a number of 5000 digits",
    ),
    "experts-negative": (lambda: raw_file(experts="-3"), f"'experts' {WHOLE}"),
    "experts-not-whole": (lambda: raw_file(experts="3.0"), f"'experts' {WHOLE}"),
    "experts-unlike-the-tensors": (
        lambda: raw_file(experts="4"),
        "holds 3 experts, but metadata 'experts' is 4",
    ),
    "rank-0": (lambda: raw_file(rank="0"), RANK_RANGE),
    "rank-17": (lambda: raw_file(rank=str(MAX_EXPERT_RANK + 1)), RANK_RANGE),
    "rank-unlike-the-tensors": (lambda: raw_file(rank="1"), "has rank 2, but metadata 'rank' is 1"),
    "alpha-nan": (lambda: raw_file(alpha="nan"), "'alpha' must be a positive finite number"),
    "alpha-inf": (lambda: raw_file(alpha="inf"), "'alpha' must be a positive finite number"),
    "alpha-0": (lambda: raw_file(alpha="0"), "'alpha' must be a positive finite number"),
    "alpha-negative": (lambda: raw_file(alpha="-4"), "'alpha' must be a positive finite number"),
    "alpha-over-the-scale": (lambda: raw_file(alpha="1e3"), "'alpha' / 'rank' is 500; at most 64"),
    "temperature-0": (
        lambda: raw_file(temperature="0"),
        "'temperature' must be a positive finite number",
    ),
    "temperature-nan": (
        lambda: raw_file(temperature="nan"),
        "'temperature' must be a positive finite number",
    ),
    "temperature-1e-30": (lambda: raw_file(temperature="1e-30"), "at least 0.01 is allowed"),
    # Other metadata.
    "router-unknown": (lambda: raw_file(router="lstm"), "unknown router 'lstm'"),
    "encoder-window-unknown": (
        lambda: raw_file(encoder_window="half"),
        "unknown encoder_window 'half'",
    ),
    "other-base-model": (lambda: raw_file(base_fingerprint="0" * 64), "different base model"),
    "too-many-extra-entries": (
        lambda: raw_file(**{f"k{i}": "v" for i in range(MAX_EXTRA_ENTRIES + 1)}),
        f"{MAX_EXTRA_ENTRIES + 1} extra entries",
    ),
    "extra-too-long": (
        lambda: raw_file(note="x" * (MAX_EXTRA_VALUE_CHARS + 1)),
        "metadata 'note' is longer than",
    ),
    "extra-key-invalid": (lambda: raw_file(**{"bad key!": "x"}), "'bad key!' is not a valid"),
    "target-modules-lie": (lambda: raw_file(target_modules=json.dumps([ENC_Q])), "does not list"),
    "target-modules-not-json": (lambda: raw_file(target_modules="[m"), "does not list"),
    "target-modules-missing": (lambda: raw_file(target_modules=None), "is missing"),
    "duplicate-metadata-key": (
        lambda: _edited(lambda h: h.replace('"rank":"2"', '"rank":"2","rank":"1"')),
        "names 'rank' twice",
    ),
    # Experts.
    "expert-2d": (lambda: raw_file(_set(A, lambda t: t[0])), "must have 3 dimensions"),
    "expert-wrong-width": (
        lambda: raw_file(_set(A, lambda t: torch.zeros(3, 2, D + 1))),
        f"'{A}' has shape (3, 2, 9), expected (3, 2, 8)",
    ),
    "expert-B-wrong-height": (
        lambda: raw_file(_set(B, lambda t: torch.zeros(3, D - 1, 2))),
        f"'{B}' has shape (3, 7, 2), expected (3, 8, 2)",
    ),
    "A-without-B": (
        lambda: raw_file(_without(f"{ENC_Q}.experts_B")),
        f"'{A}' has no matching '{ENC_Q}.experts_B'",
    ),
    "experts-on-fc1": (
        lambda: raw_file(_set(f"{FC1}.experts_A", lambda t: torch.zeros(3, 2, D))),
        "which no router serves",
    ),
    "experts-on-no-layer": (
        lambda: raw_file(_set("model.encoder.conv1.experts_A", lambda t: t)),
        "'model.encoder.conv1.experts_A' matches no adaptable layer",
    ),
    "an-unknown-factor": (
        lambda: raw_file(_set(f"{ENC_Q}.experts_C", lambda t: t)),
        f"'{ENC_Q}.experts_C' matches no adaptable layer",
    ),
    "no-experts": (
        lambda: raw_file(_without("model.")),
        "SAML weights hold no experts",
    ),
    "expert-float16": (lambda: raw_file(_set(A, lambda t: t.half())), NOT_F32),
    "expert-nan": (lambda: raw_file(_put(B, math.nan)), NOT_FINITE),
    "expert-inf": (lambda: raw_file(_put(A, math.inf)), NOT_FINITE),
    "expert-3e38": (lambda: raw_file(_put(B, 3e38)), TOO_FAR),
    "experts-all-1e19": (lambda: raw_file(_set(A, lambda t: torch.full_like(t, 1e19))), TOO_FAR),
    # Routers.
    "router-tensor-missing": (
        lambda: raw_file(_without(CROSS_POOL_BIAS)),
        MISSING.format(CROSS_POOL_BIAS),
    ),
    "router-missing": (
        lambda: raw_file(_without("routers.decoder_self.")),
        MISSING.format("routers.decoder_self.gate.bias"),
    ),
    "router-tensor-extra": (
        lambda: raw_file(_set("routers.encoder_self.memory_summary.pool.bias", lambda t: t)),
        f"'routers.encoder_self.memory_summary.pool.bias' {NOT_OF_A_ROUTER}",
    ),
    "router-of-no-route": (
        lambda: raw_file(_set("routers.joint.gate.bias", lambda t: torch.zeros(3))),
        f"'routers.joint.gate.bias' {NOT_OF_A_ROUTER}",
    ),
    "router-gate-of-4-experts": (
        lambda: raw_file(_set(GATE, lambda t: torch.zeros(4, D))),
        f"'{GATE}' has shape (4, 8), expected (3, 8)",
    ),
    "router-depthwise-in-a-conv-file": (
        lambda: raw_file(
            _set("routers.decoder_self.summary.conv.weight", lambda t: t[:, :1].contiguous())
        ),
        "has shape (8, 1, 3), expected (8, 8, 3)",
    ),
    "router-float16": (lambda: raw_file(_set(GATE, lambda t: t.half())), NOT_F32),
    "router-1e38": (lambda: raw_file(_put(GATE, 1e38)), BEYOND),
    "router-minus-1e4": (lambda: raw_file(_put(CROSS_POOL_BIAS, -1e4)), BEYOND),
    "router-nan": (lambda: raw_file(_put(GATE, math.nan)), NOT_FINITE),
    "router-inf": (lambda: raw_file(_put(CROSS_POOL_BIAS, math.inf)), NOT_FINITE),
    # Files cut short or running on.
    "truncated-to-4-bytes": (_truncated(lambda data: 4), "shorter than its header length"),
    "truncated-in-the-header": (
        _truncated(lambda data: _header_end(data) // 2),
        "the header runs past the end",
    ),
    "truncated-after-the-header": (_truncated(_header_end), "the data section 0"),
    "truncated-by-one-byte": (_truncated(lambda data: len(data) - 1), "the tensors take"),
    "trailing-bytes": (lambda: raw_file() + bytes(16), "the tensors take"),
}
"""What each case does, with what its refusal says."""


def test_the_unchanged_corpus_file_is_admitted() -> None:
    """So that each case below is refused for its change alone."""
    admit(raw_file())


@pytest.mark.parametrize("case", list(CORPUS))
def test_hostile_files_are_refused_by_the_check_they_target(case: str) -> None:
    make, message = CORPUS[case]
    with pytest.raises(AdapterFileError, match=re.escape(message)):
        admit(make())


def test_another_base_model_is_its_own_error() -> None:
    with pytest.raises(BaseModelMismatchError):
        admit(raw_file(base_fingerprint="0" * 64))


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_headers_are_refused_from_the_header_alone(case: str) -> None:
    make, message = HOSTILE[case]
    with pytest.raises(AdapterFileError, match=re.escape(message)):
        read_saml_header(make())


def test_weights_made_in_memory_are_checked_too() -> None:
    """What `load_saml` refuses in a file, the checks refuse in weights made any other way."""
    with pytest.raises(AdapterFileError, match="unknown method 'lora'"):
        check_saml_compatible(toy_adapter(method="lora"), FINGERPRINT, LAYERS, D_MODEL)
    with pytest.raises(AdapterFileError, match=re.escape("at least 0.01 is allowed")):
        check_saml_bounds(toy_adapter(temperature=1e-3), BASE_NORMS)
