"""PEFT's form of an adapter: export and import round-trip to the same canonical bytes, what PEFT
itself saves imports as the same weights, PEFT loads an export on the real tiny.en with the same
update on every projection, and hostile zips and configs are refused with the reason."""

import io
import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor
from transformers import WhisperConfig, WhisperForConditionalGeneration

from app.engine.adaptation.lora.config import ADAPTABLE
from app.engine.adaptation.lora.file import (
    AdapterFileError,
    AdapterWeights,
    dump_adapter,
    load_adapter,
)
from app.engine.adaptation.lora.layer import target_module_names
from app.engine.adaptation.lora.peft_zip import (
    CONFIG_NAME,
    MAX_MEMBERS,
    WEIGHTS_NAME,
    from_peft,
    is_zip,
    to_peft,
)

FINGERPRINT = "f" * 64
SERVED = "e" * 64
LIMIT = 64 * 2**20
RANK = 4


def toy_model() -> WhisperForConditionalGeneration:
    """A Whisper of one layer each side (d_model 16) that PEFT can wrap."""
    config = WhisperConfig(
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        vocab_size=100,
        pad_token_id=1,
        bos_token_id=1,
        eos_token_id=1,
        decoder_start_token_id=1,
        max_source_positions=1500,
        max_target_positions=32,
    )
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(config)


def random_weights(
    model: torch.nn.Module, targets: tuple[str, ...], *, seed: int = 0, **changes: Any
) -> AdapterWeights:
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, Tensor] = {}
    for name in target_module_names(model, targets):
        layer: Any = model.get_submodule(name)
        tensors[f"{name}.lora_A"] = torch.randn(RANK, layer.in_features, generator=generator)
        tensors[f"{name}.lora_B"] = torch.randn(layer.out_features, RANK, generator=generator)
    values: dict[str, Any] = {
        "tensors": tensors,
        "rank": RANK,
        "alpha": 8.0,
        "base_fingerprint": FINGERPRINT,
        **changes,
    }
    return AdapterWeights(**values)


@pytest.fixture(scope="module")
def weights() -> AdapterWeights:
    return random_weights(
        toy_model(),
        ("q_proj", "v_proj", "fc1"),
        encoder_window="fit",
        extra={"trainer": "test", "seed": "7"},
    )


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def make_zip(
    files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED, **info_fields: Any
) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on the duplicate names some tests write
        with zipfile.ZipFile(buffer, "w", compression) as archive:
            for name, content in files.items():
                info = zipfile.ZipInfo(name)
                info.compress_type = compression
                for key, value in info_fields.items():
                    setattr(info, key, value)
                archive.writestr(info, content)
    return buffer.getvalue()


def peft_files(weights: AdapterWeights) -> dict[str, bytes]:
    return members(to_peft(dump_adapter(weights), "whisper-tiny.en"))


# ------------------------------------------------------------------------- round trip, export


def test_export_then_import_gives_the_same_canonical_bytes(weights: AdapterWeights) -> None:
    stored = dump_adapter(weights)
    exported = to_peft(stored, "whisper-tiny.en")

    assert is_zip(exported)
    assert not is_zip(stored)
    assert exported == to_peft(stored, "whisper-tiny.en")  # reproducible
    imported = load_adapter(from_peft(exported, SERVED, LIMIT))
    # Our export carries the fingerprint it was trained for, not the served one.
    assert imported.base_fingerprint == FINGERPRINT
    assert imported.encoder_window == "fit"
    assert imported.extra == {"trainer": "test", "seed": "7"}
    assert dump_adapter(imported) == stored


def test_export_is_what_peft_saves(weights: AdapterWeights) -> None:
    files = peft_files(weights)
    assert sorted(files) == [CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads(files[CONFIG_NAME])
    assert config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"]) == (RANK, 8)
    assert config["target_modules"] == weights.target_modules
    assert config["base_model_name_or_path"] == "whisper-tiny.en"
    assert (config["use_rslora"], config["use_dora"], config["bias"]) == (False, False, "none")
    tensors = load_safetensors(files[WEIGHTS_NAME])
    for name, tensor in weights.tensors.items():
        module, _, factor = name.rpartition(".")
        assert torch.equal(tensors.pop(f"base_model.model.{module}.{factor}.weight"), tensor)
    assert tensors == {}


def test_what_peft_saves_imports_as_the_same_weights(tmp_path: Path) -> None:
    """PEFT's own `save_pretrained`, zipped in a folder as `zip -r` does, README.md included."""
    model = toy_model()
    targets = ["q_proj", "v_proj", "fc2"]
    peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=6, target_modules=targets))
    generator = torch.Generator().manual_seed(3)
    for parameter in peft_model.parameters():
        if parameter.requires_grad:  # B starts at zero: give every factor values
            parameter.data = torch.randn(parameter.shape, generator=generator)
    peft_model.save_pretrained(str(tmp_path / "saved"))
    files = {f"saved/{path.name}": path.read_bytes() for path in (tmp_path / "saved").iterdir()}
    assert "saved/README.md" in files

    imported = load_adapter(from_peft(make_zip({"saved/": b"", **files}), SERVED, LIMIT))

    assert (imported.rank, imported.alpha, imported.base_fingerprint) == (RANK, 6.0, SERVED)
    assert imported.encoder_window == "full"
    modules = target_module_names(model, targets)
    assert imported.target_modules == sorted(modules)
    for module in modules:
        layer: Any = model.get_submodule(module)  # PEFT wrapped it in place
        assert torch.equal(imported.tensors[f"{module}.lora_A"], layer.lora_A["default"].weight)
        assert torch.equal(imported.tensors[f"{module}.lora_B"], layer.lora_B["default"].weight)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_factors_are_widened_exactly(
    weights: AdapterWeights, dtype: torch.dtype
) -> None:
    files = peft_files(weights)
    tensors = load_safetensors(files[WEIGHTS_NAME])
    half = {name: tensor.to(dtype) for name, tensor in tensors.items()}
    files[WEIGHTS_NAME] = save_safetensors(half, metadata={"format": "pt"})

    imported = load_adapter(from_peft(make_zip(files), SERVED, LIMIT))

    for name, tensor in half.items():
        module = name.removeprefix("base_model.model.").removesuffix(".weight")
        assert imported.tensors[module].dtype == torch.float32
        assert torch.equal(imported.tensors[module], tensor.float())


# ------------------------------------------------------------------------- hostile zips


def with_eocd(data: bytes, **fields: int) -> bytes:
    """`data` with its end-of-central-directory record's counts or size overwritten."""
    at = data.rfind(b"PK\x05\x06")
    record = bytearray(data[at:])
    offsets = {"disk_entries": 8, "total_entries": 10}
    for name, value in fields.items():
        if name == "directory_size":
            record[12:16] = value.to_bytes(4, "little")
        else:
            record[offsets[name] : offsets[name] + 2] = value.to_bytes(2, "little")
    return data[:at] + bytes(record)


def bomb(files: dict[str, bytes]) -> bytes:
    zeros = torch.zeros(2**21, 4)  # 32 MiB of zeros: deflates about a thousand times
    return make_zip({**files, WEIGHTS_NAME: save_safetensors({"x": zeros})})


def renamed(files: dict[str, bytes], old: str, new: str) -> dict[str, bytes]:
    return {(new if name == old else name): content for name, content in files.items()}


def _duplicate(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, content in files.items():
                archive.writestr(name, content)
            archive.writestr(CONFIG_NAME, files[CONFIG_NAME])
    return buffer.getvalue()


def _torch_saved() -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(2)}, buffer)
    return buffer.getvalue()


def _corrupt(data: bytes) -> bytes:
    """The last byte of the stored weights flipped: their CRC no longer matches."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(WEIGHTS_NAME)
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 1
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


HOSTILE_ZIPS: dict[str, tuple[Callable[[dict[str, bytes]], bytes], str]] = {
    "traversal": (
        lambda f: make_zip(renamed(f, CONFIG_NAME, f"../{CONFIG_NAME}")),
        "not allowed",
    ),
    "absolute": (
        lambda f: make_zip(renamed(f, CONFIG_NAME, f"/etc/{CONFIG_NAME}")),
        "not a plain relative name",
    ),
    "nested": (lambda f: make_zip(renamed(f, CONFIG_NAME, f"a/b/{CONFIG_NAME}")), "not allowed"),
    "backslash": (
        lambda f: make_zip(renamed(f, CONFIG_NAME, f"a\\{CONFIG_NAME}")),
        "not a plain relative name",
    ),
    "two folders": (
        lambda f: make_zip(renamed(f, CONFIG_NAME, f"a/{CONFIG_NAME}")),
        "one folder",
    ),
    "pickle": (
        lambda f: make_zip(renamed(f, WEIGHTS_NAME, "adapter_model.bin")),
        "pickle, which is never loaded",
    ),
    "torch checkpoint": (lambda f: _torch_saved(), "PyTorch checkpoint"),
    "stranger": (lambda f: make_zip({**f, "run.py": b"import os"}), "only adapter_config.json"),
    "too many members": (
        lambda f: make_zip({**f, **{f"d{i}/": b"" for i in range(MAX_MEMBERS)}}),
        f"at most {MAX_MEMBERS}",
    ),
    "count understated": (
        lambda f: with_eocd(
            make_zip({**f, **{f"d{i}/": b"" for i in range(MAX_MEMBERS)}}),
            disk_entries=2,
            total_entries=2,
        ),
        f"at most {MAX_MEMBERS}",
    ),
    "zip64": (lambda f: with_eocd(make_zip(f), total_entries=0xFFFF), "zip64"),
    "huge directory": (
        lambda f: make_zip(f, comment=b"x" * 40_000),
        "central directory takes",
    ),
    "bomb": (bomb, "expands"),
    "duplicate": (_duplicate, "twice"),
    "bzip2": (lambda f: make_zip(f, zipfile.ZIP_BZIP2), "only stored and deflated"),
    "no config": (lambda f: make_zip({WEIGHTS_NAME: f[WEIGHTS_NAME]}), "no adapter_config.json"),
    "no weights": (lambda f: make_zip({CONFIG_NAME: f[CONFIG_NAME]}), "no adapter_model"),
    "big config": (
        lambda f: make_zip({**f, CONFIG_NAME: b" " * 70_000 + f[CONFIG_NAME]}),
        "at most 65536",
    ),
    "truncated": (lambda f: make_zip(f)[:-30], "not a valid zip archive"),
    "corrupt data": (lambda f: _corrupt(make_zip(f, zipfile.ZIP_STORED)), "not a valid zip"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ZIPS))
def test_hostile_zips_are_refused(weights: AdapterWeights, case: str) -> None:
    build, message = HOSTILE_ZIPS[case]
    with pytest.raises(AdapterFileError, match=message):
        from_peft(build(peft_files(weights)), SERVED, LIMIT)


# ------------------------------------------------------------------------- configs and tensors


def config_with(**settings: object) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    def change(files: dict[str, bytes]) -> dict[str, bytes]:
        config = json.loads(files[CONFIG_NAME])
        config.update(settings)
        return {**files, CONFIG_NAME: json.dumps(config).encode()}

    return change


def tensors_with(
    change: Callable[[dict[str, Tensor]], None], **metadata: str
) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    def rewrite(files: dict[str, bytes]) -> dict[str, bytes]:
        tensors = load_safetensors(files[WEIGHTS_NAME])
        change(tensors)
        data = save_safetensors(tensors, metadata={"format": "pt", **metadata})
        return {**files, WEIGHTS_NAME: data}

    return rewrite


def _first(tensors: dict[str, Tensor]) -> str:
    return sorted(tensors)[0]


BAD_CONTENTS: dict[str, tuple[Callable[[dict[str, bytes]], dict[str, bytes]], str]] = {
    "rslora": (config_with(use_rslora=True), "rank-stabilised"),
    "dora": (config_with(use_dora=True), "DoRA"),
    "bias": (config_with(bias="all"), "trained biases"),
    "modules_to_save": (config_with(modules_to_save=["proj_out"]), "modules_to_save"),
    "rank_pattern": (config_with(rank_pattern={"q_proj": 8}), "rank_pattern"),
    "alpha_pattern": (config_with(alpha_pattern={"q_proj": 8}), "alpha_pattern"),
    "layers_to_transform": (config_with(layers_to_transform=[0]), "layers_to_transform"),
    "fan_in_fan_out": (config_with(fan_in_fan_out=True), "fan_in_fan_out"),
    "pissa": (config_with(init_lora_weights="pissa"), "init_lora_weights"),
    "unknown setting": (config_with(future_trick={"on": 1}), "'future_trick'"),
    "ia3": (config_with(peft_type="IA3"), "only LORA"),
    "rank zero": (config_with(r=0), "'r' must be"),
    "rank text": (config_with(r="4"), "'r' must be"),
    "rank over the limit": (config_with(r=10**6), "rank"),
    "alpha bool": (config_with(lora_alpha=True), "'lora_alpha'"),
    "alpha huge": (config_with(lora_alpha=10**400), "'lora_alpha'"),
    "alpha negative": (config_with(lora_alpha=-8), "'lora_alpha'"),
    "regex targets": (config_with(target_modules=".*q_proj"), "regular expression"),
    "untargeted tensor": (config_with(target_modules=["k_proj"]), "does not name"),
    "bad dropout": (config_with(lora_dropout=3), "'lora_dropout'"),
    "nan alpha": (
        lambda f: {
            **f,
            CONFIG_NAME: f[CONFIG_NAME].replace(b'"lora_alpha": 8', b'"lora_alpha": NaN'),
        },
        "not a JSON number",
    ),
    "duplicate setting": (
        lambda f: {**f, CONFIG_NAME: f[CONFIG_NAME].replace(b'"r": 4', b'"r": 4, "r": 8')},
        "twice",
    ),
    "not json": (lambda f: {**f, CONFIG_NAME: b"\xff{"}, "not valid JSON"),
    "deep json": (lambda f: {**f, CONFIG_NAME: b"[" * 60_000}, "not valid JSON"),
    "not an object": (lambda f: {**f, CONFIG_NAME: b"[]"}, "not a JSON object"),
    "dora magnitude": (
        tensors_with(
            lambda t: t.update({"base_model.model.x.lora_magnitude_vector": torch.ones(1, 4)})
        ),
        "not a LoRA factor",
    ),
    "integer factor": (
        tensors_with(lambda t: t.update({_first(t): t[_first(t)].to(torch.int32)})),
        "must be float32, float16 or bfloat16",
    ),
    "wrong rank": (
        tensors_with(lambda t: t.update({_first(t): t[_first(t)][:2]})),
        "has rank 2",
    ),
    "nested metadata conflict": (tensors_with(lambda t: None, **{"pqm.rank": "8"}), "contradicts"),
    "unknown window": (tensors_with(lambda t: None, **{"pqm.encoder_window": "x"}), "window"),
    "no tensors": (tensors_with(lambda t: t.clear()), "no tensors"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENTS))
def test_configs_and_tensors_that_cannot_be_served_exactly_are_refused(
    weights: AdapterWeights, case: str
) -> None:
    change, message = BAD_CONTENTS[case]
    with pytest.raises(AdapterFileError, match=message):
        load_adapter(from_peft(make_zip(change(peft_files(weights))), SERVED, LIMIT))


# ------------------------------------------------------------------------- PEFT on tiny.en


def test_peft_loads_an_export_on_tiny_en_with_the_same_updates(
    tiny_en_dir: Path, tmp_path: Path
) -> None:
    base = WhisperForConditionalGeneration.from_pretrained(tiny_en_dir, dtype=torch.float32)
    weights = random_weights(base, ADAPTABLE, seed=5)
    for name, data in members(to_peft(dump_adapter(weights), "whisper-tiny.en")).items():
        (tmp_path / name).write_bytes(data)

    model = PeftModel.from_pretrained(base, tmp_path)

    lora_layers = {
        name.removeprefix("base_model.model.")
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }
    assert lora_layers == set(weights.target_modules)  # all 4 x 6 + 4 x 10 projections
    worst = 0.0
    for module in weights.target_modules:
        layer: Any = base.get_submodule(module)  # wrapped in place
        delta = layer.get_delta_weight("default")
        ours = (
            weights.scale
            * weights.tensors[f"{module}.lora_B"]
            @ weights.tensors[f"{module}.lora_A"]
        )
        worst = max(worst, float((delta - ours).abs().max()))
    print(
        f"\nlargest |PEFT's delta - scale * B A| over {len(lora_layers)} projections: {worst:.2e}"
    )
    assert worst <= 1e-5
