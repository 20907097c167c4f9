"""PEFT's form of a LoRA adapter: a zip of `adapter_config.json` and `adapter_model.safetensors`.

`to_peft` turns a `pqm-lora/1` file into that zip; `from_peft` turns such a zip back into a
`pqm-lora/1` file, which an import then checks and stores like any other (`load_adapter`,
`check_compatible`, `check_bounds`, `dump_adapter`): one path stores adapters. Both directions are
byte work in plain Python and numpy, no torch, fit to run off the inference thread.

What PEFT's files cannot say travels in the safetensors metadata under `pqm.` keys (the encoder
window, the base model's fingerprint, provenance), which PEFT, transformers and vLLM never read,
so an export imports back to the same canonical bytes. A zip from elsewhere carries no
fingerprint: it is checked against the served model by its modules and shapes alone.

The zip is hostile input: its end record is read before `zipfile` parses anything (member count,
directory size, no zip64), members are read by name from a short list (never extracted, never
pickle), sizes are bounded as declared and as decompressed, and so is their compression ratio.
PEFT settings that would make a runtime compute something else than `scale * B A` added to each
projection (rsLoRA, DoRA, biases, per-module ranks, saved modules...) are refused by name.
"""

import io
import json
import math
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from app.engine.adaptation.lora.config import METHOD
from app.engine.adaptation.lora.file import ADAPTER_FORMAT, AdapterFileError, read_adapter_header

__all__ = [
    "CONFIG_NAME",
    "MAX_COMPRESSION_RATIO",
    "MAX_CONFIG_BYTES",
    "MAX_MEMBERS",
    "WEIGHTS_NAME",
    "from_peft",
    "is_zip",
    "to_peft",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_CARD_NAME = "README.md"
"""The model card PEFT's `save_pretrained` writes beside them: allowed, never read."""
MAX_MEMBERS = 8
"""Entries in the zip, folders included (PEFT writes three files)."""
MAX_CONFIG_BYTES = 64 * 1024
"""PEFT 0.21 writes about 1.5 KB, plus the module names listed in `target_modules`."""
MAX_COMPRESSION_RATIO = 100
"""Uncompressed over compressed size of a member above `MAX_CONFIG_BYTES`: float factors
compress to about 0.9, a freshly initialised adapter (B all zeros) to about 0.5."""
_MAX_DIRECTORY_BYTES = 64 * 1024
"""The central directory of `MAX_MEMBERS` entries with names, extra fields and comments."""
_PREFIX = "base_model.model."
_SUFFIXES = {".lora_A.weight": "lora_A", ".lora_B.weight": "lora_B"}
_NAMESPACE = "pqm."
_CARRIED_BY_CONFIG = frozenset({"format", "rank", "alpha", "target_modules"})
"""`pqm-lora/1` metadata that PEFT's own config states (or that names the file's own format)."""
_WIDENED = {torch.float16: "<f2", torch.bfloat16: "bfloat16", torch.float32: "<f4"}
_END_RECORD = b"PK\x05\x06"
_END_RECORD_BYTES = 22
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_LOCATOR_BYTES = 20
_ZIP_MAGIC = (b"PK\x03\x04", _END_RECORD)
_LOCAL_HEADER_BYTES = 30
_FOLDER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9 _.+-]{0,127}")
_MAX_TEXT_CHARS = 1024
_MAX_MODULE_DEPTH = 16
"""Components of a module's path (Whisper's deepest: model.decoder.layers.N.encoder_attn.q_proj)."""
_WHISPER_CLASS = {
    "base_model_class": "WhisperForConditionalGeneration",
    "parent_library": "transformers.models.whisper.modeling_whisper",
}


def is_zip(data: bytes) -> bool:
    """Whether `data` starts as a zip archive does (a local file header, or an empty archive)."""
    return data[:4] in _ZIP_MAGIC


# --------------------------------------------------------------------------------- export


def to_peft(data: bytes, base_model: str | None) -> bytes:
    """The zip PEFT's `save_pretrained` would write for the `pqm-lora/1` file `data` (a stored,
    already checked adapter); identical inputs give identical bytes. `base_model` goes to
    `base_model_name_or_path`."""
    file = read_adapter_header(data)
    metadata = file.metadata
    if metadata.get("format") != ADAPTER_FORMAT or metadata.get("method", METHOD) != METHOD:
        raise AdapterFileError(f"only {ADAPTER_FORMAT} LoRA files have a PEFT form")
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    for entry in file.entries:
        module, _, factor = entry.name.rpartition(".")
        start = file.data_start
        raw = file.data[start + entry.begin : start + entry.end]
        tensors[f"{_PREFIX}{module}.{factor}.weight"] = ("F32", entry.shape, raw)
    carried = {
        f"{_NAMESPACE}{key}": value
        for key, value in metadata.items()
        if key not in _CARRIED_BY_CONFIG
    }
    weights = _safetensors(tensors, {"format": "pt", **carried})
    modules = sorted({entry.name.rsplit(".", 1)[0] for entry in file.entries})
    config = _export_config(metadata, modules, base_model)
    return _zip({CONFIG_NAME: config, WEIGHTS_NAME: weights})


def _export_config(metadata: dict[str, str], modules: list[str], base_model: str | None) -> bytes:
    try:
        rank, alpha = int(metadata["rank"]), float(metadata["alpha"])
    except (KeyError, ValueError) as exc:
        raise AdapterFileError(f"the file's rank or alpha is missing or invalid: {exc}") from exc
    config = {
        "auto_mapping": _WHISPER_CLASS,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "lora_alpha": int(alpha) if alpha.is_integer() else alpha,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        # Full module paths: PEFT adapts exactly these (a bare "q_proj" would adapt every one).
        "target_modules": modules,
        "task_type": None,
        "use_dora": False,
        "use_rslora": False,
    }
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _safetensors(
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]], metadata: dict[str, str]
) -> bytes:
    """A safetensors file, tensors in name order, header keys sorted and padded to 8 bytes (as
    the library lays it out, but the same bytes every time)."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        offset += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    body = b"".join(tensors[name][2] for name in sorted(tensors))
    return len(text).to_bytes(8, "little") + text + body


def _zip(members: dict[str, bytes]) -> bytes:
    """A zip with fixed dates and attributes, so the same members give the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so that the mode below is read
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name], compresslevel=6)
    return buffer.getvalue()


# --------------------------------------------------------------------------------- import


@dataclass(frozen=True, slots=True)
class _Config:
    rank: int
    alpha: float
    targets: frozenset[str] | None
    """Module names or suffixes, as PEFT matches them; None for "all-linear"."""


def from_peft(data: bytes, fingerprint: str, max_bytes: int) -> bytes:
    """The `pqm-lora/1` file for the PEFT zip `data`, checked as far as it can be without the
    model: the zip, PEFT's settings, the tensor names and dtypes (float16 and bfloat16 widened
    to float32, exactly). It holds `fingerprint` unless the zip is one of our exports, which
    keeps the fingerprint of the model it was trained for. Raises `AdapterFileError`."""
    members = _read_members(data, max_bytes)
    config = _parse_config(members[CONFIG_NAME])
    file = read_adapter_header(members[WEIGHTS_NAME])
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    total = 0
    for entry in file.entries:
        module, factor = _module_of(entry.name, config)
        raw = file.data[file.data_start + entry.begin : file.data_start + entry.end]
        widened = _float32(entry.name, entry.dtype, raw)
        total += len(widened)
        if total > max_bytes:
            raise AdapterFileError(
                f"widened to float32 the tensors take more than the {max_bytes} byte limit"
            )
        tensors[f"{module}.{factor}"] = ("F32", entry.shape, widened)
    if not tensors:
        raise AdapterFileError(f"{WEIGHTS_NAME} holds no tensors")
    metadata = {
        "base_fingerprint": fingerprint,
        **_carried(file.metadata),
        "format": ADAPTER_FORMAT,
        "rank": str(config.rank),
        "alpha": repr(config.alpha),
        "target_modules": json.dumps(sorted({name.rsplit(".", 1)[0] for name in tensors})),
    }
    return _safetensors(tensors, metadata)


def _carried(metadata: dict[str, str]) -> dict[str, str]:
    """Our metadata back from `pqm.` keys; other keys (PEFT's "format": "pt") are PEFT's."""
    carried: dict[str, str] = {}
    for key, value in metadata.items():
        if not key.startswith(_NAMESPACE):
            continue
        name = key.removeprefix(_NAMESPACE)
        if name in _CARRIED_BY_CONFIG:
            raise AdapterFileError(
                f"{WEIGHTS_NAME} metadata {key!r} contradicts {CONFIG_NAME}, which states it"
            )
        carried[name] = value
    return carried


def _module_of(name: str, config: _Config) -> tuple[str, str]:
    """`base_model.model.<module>.lora_A.weight` -> (`<module>`, "lora_A")."""
    for suffix, factor in _SUFFIXES.items():
        if name.startswith(_PREFIX) and name.endswith(suffix):
            module = name[len(_PREFIX) : -len(suffix)]
            if module and _targeted(module, config.targets):
                return module, factor
            raise AdapterFileError(
                f"tensor {_short(name)} adapts a module that 'target_modules' does not name"
            )
    raise AdapterFileError(
        f"tensor {_short(name)} is not a LoRA factor "
        f"('{_PREFIX}<module>.lora_A.weight' or '.lora_B.weight'); only plain LoRA is served"
    )


def _targeted(module: str, targets: frozenset[str] | None) -> bool:
    """PEFT's rule for a list: the module's path is a target or ends with '.' + a target. Looked
    up by suffix, in time bounded by the path's depth whatever the number of targets."""
    if targets is None:
        return True
    parts = module.split(".")
    if len(parts) > _MAX_MODULE_DEPTH:
        return False
    return any(".".join(parts[start:]) in targets for start in range(len(parts)))


def _float32(name: str, dtype: torch.dtype, raw: bytes) -> bytes:
    layout = _WIDENED.get(dtype)
    if layout is None:
        raise AdapterFileError(
            f"tensor {_short(name)} is {dtype}; LoRA factors must be float32, float16 or bfloat16"
        )
    if layout == "<f4":
        return raw
    if layout == "<f2":
        return np.frombuffer(raw, dtype="<f2").astype("<f4").tobytes()
    # bfloat16 is the upper half of a float32
    return (np.frombuffer(raw, dtype="<u2").astype("<u4") << 16).tobytes()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


# --------------------------------------------------------------------------------- the zip


def _read_members(data: bytes, max_bytes: int) -> dict[str, bytes]:
    """The config and the weights, read from a zip checked before and while it is parsed."""
    _check_first_member(data)
    _check_end_record(data)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            chosen = _choose_members(archive.infolist(), max_bytes)
            return {name: _read(archive, info) for name, info in chosen.items()}
    except AdapterFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error) as exc:
        raise AdapterFileError(f"not a valid zip archive: {exc}") from exc
    except NotImplementedError as exc:
        raise AdapterFileError(f"unsupported zip archive: {exc}") from exc


def _check_first_member(data: bytes) -> None:
    """`torch.save` writes a zip too (a pickle first, zip64 records last): say what it is."""
    if len(data) < _LOCAL_HEADER_BYTES or data[:4] != _ZIP_MAGIC[0]:
        return
    name_length = int.from_bytes(data[26:28], "little")
    name = data[_LOCAL_HEADER_BYTES : _LOCAL_HEADER_BYTES + name_length]
    if name.endswith(b".pkl"):
        raise AdapterFileError(
            "not a safetensors file but a PyTorch checkpoint (a pickle), which is never loaded: "
            "save the adapter with safetensors"
        )


def _check_end_record(data: bytes) -> None:
    """Bounds the central directory before `zipfile` reads it (it parses every entry the
    directory's size holds, whatever the count says). The record is found as `zipfile` finds
    it: at the very end, else the last one within a comment's reach."""
    tail = len(data) - _END_RECORD_BYTES
    if tail >= 0 and data[tail : tail + 4] == _END_RECORD and data[-2:] == b"\0\0":
        at = tail
    else:
        at = data.rfind(_END_RECORD, max(0, tail - 0xFFFF))
    if at < 0 or at + _END_RECORD_BYTES > len(data):
        raise AdapterFileError("not a valid zip archive: no end of central directory record")
    entries, total, size = struct.unpack_from("<HHI", data, at + 8)
    zip64 = data[max(0, at - _ZIP64_LOCATOR_BYTES) : at][:4] == _ZIP64_LOCATOR
    if zip64 or 0xFFFF in (entries, total) or size == 0xFFFFFFFF:
        raise AdapterFileError("zip64 archives are not accepted (an adapter is far smaller)")
    if total > MAX_MEMBERS:
        raise AdapterFileError(f"the zip holds {total} entries; at most {MAX_MEMBERS} are allowed")
    if size > _MAX_DIRECTORY_BYTES:
        raise AdapterFileError(
            f"the zip's central directory takes {size} bytes; at most {_MAX_DIRECTORY_BYTES}"
        )


def _choose_members(infos: list[zipfile.ZipInfo], max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    if len(infos) > MAX_MEMBERS:
        raise AdapterFileError(
            f"the zip holds {len(infos)} entries; at most {MAX_MEMBERS} are allowed"
        )
    chosen: dict[str, zipfile.ZipInfo] = {}
    folders: set[str] = set()
    seen: set[str] = set()
    for info in infos:
        name = info.orig_filename
        if name in seen:
            raise AdapterFileError(f"the zip names {_short(name)} twice")
        seen.add(name)
        folder, base = _split_name(name)
        folders.add(folder)
        if base == "":  # the folder's own entry
            continue
        if base == _CARD_NAME:
            continue
        limit = MAX_CONFIG_BYTES if base == CONFIG_NAME else max_bytes
        _check_member(info, limit)
        chosen[base] = info
    if len(folders) > 1:
        raise AdapterFileError("the zip's files must sit at its root or in one folder")
    for required in (CONFIG_NAME, WEIGHTS_NAME):
        if required not in chosen:
            raise AdapterFileError(f"the zip holds no {required}")
    return chosen


def _split_name(name: str) -> tuple[str, str]:
    """(folder or "", file name or "" for a folder entry), for the few names allowed."""
    if any(ord(char) < 0x20 or char in "\\:\x7f" for char in name) or name.startswith("/"):
        raise AdapterFileError(f"the zip member name {_short(name)} is not a plain relative name")
    parts = name.split("/")
    if name.endswith("/"):
        parts = parts[:-1]
        if len(parts) == 1 and _FOLDER.fullmatch(parts[0]) and parts[0] not in (".", ".."):
            return parts[0], ""
    elif len(parts) == 1:
        return "", _file_name(parts[0])
    elif len(parts) == 2 and _FOLDER.fullmatch(parts[0]) and parts[0] not in (".", ".."):
        return parts[0], _file_name(parts[1])
    raise AdapterFileError(
        f"the zip member {_short(name)} is not allowed: files sit at the root or in one folder"
    )


def _file_name(name: str) -> str:
    if name in (CONFIG_NAME, WEIGHTS_NAME, _CARD_NAME):
        return name
    if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")):
        raise AdapterFileError(
            f"the zip holds {_short(name)}, a pickle, which is never loaded: save the adapter "
            "with safetensors (PEFT's default, safe_serialization=True)"
        )
    raise AdapterFileError(
        f"the zip holds {_short(name)}; only {CONFIG_NAME}, {WEIGHTS_NAME} and {_CARD_NAME} "
        "are allowed"
    )


def _check_member(info: zipfile.ZipInfo, limit: int) -> None:
    name = _short(info.orig_filename)
    if info.flag_bits & 0x1:
        raise AdapterFileError(f"zip member {name} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise AdapterFileError(
            f"zip member {name} is compressed with method {info.compress_type}; "
            "only stored and deflated members are accepted"
        )
    if info.file_size > limit:
        raise AdapterFileError(f"zip member {name} takes {info.file_size} bytes; at most {limit}")
    if (
        info.file_size > MAX_CONFIG_BYTES
        and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size
    ):
        raise AdapterFileError(
            f"zip member {name} expands {info.file_size / max(info.compress_size, 1):.0f} times; "
            f"at most {MAX_COMPRESSION_RATIO} times is allowed"
        )


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The member's bytes, never more than it declares (its CRC checked by `zipfile`)."""
    with archive.open(info) as member:
        content = member.read(info.file_size + 1)
    if len(content) != info.file_size:
        raise AdapterFileError(
            f"zip member {_short(info.orig_filename)} does not hold the size it declares"
        )
    return content


# --------------------------------------------------------------------------------- the config


def _parse_config(raw: bytes) -> _Config:
    try:
        config = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise AdapterFileError(f"{CONFIG_NAME} is not valid JSON: {_short(str(exc))}") from exc
    if not isinstance(config, dict):
        raise AdapterFileError(f"{CONFIG_NAME} is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise AdapterFileError(
            f"{CONFIG_NAME}: 'peft_type' is {_short(config.get('peft_type'))}; only LORA is served"
        )
    for key, value in config.items():
        _check_setting(key, value)
    return _Config(
        rank=_rank(config.get("r")),
        alpha=_alpha(config.get("lora_alpha")),
        targets=_targets(config.get("target_modules")),
    )


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise AdapterFileError(f"{CONFIG_NAME} names a setting twice")
    return dict(pairs)


def _no_constant(text: str) -> object:
    raise AdapterFileError(f"{CONFIG_NAME} holds {text}, which is not a JSON number")


def _rank(value: object) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise AdapterFileError(f"{CONFIG_NAME}: 'r' must be a positive whole number")
    return value  # its upper bound is load_adapter's


def _alpha(value: object) -> float:
    alpha = math.nan
    if _is_number(value):
        try:
            alpha = float(value)  # type: ignore[arg-type]
        except OverflowError:  # an integer beyond float's range
            alpha = math.inf
    if not (math.isfinite(alpha) and alpha > 0):
        raise AdapterFileError(f"{CONFIG_NAME}: 'lora_alpha' must be a positive finite number")
    return alpha


def _targets(value: object) -> frozenset[str] | None:
    if value == "all-linear":
        return None
    if isinstance(value, str):
        raise AdapterFileError(
            f"{CONFIG_NAME}: 'target_modules' as a regular expression is not accepted; "
            "list the module names"
        )
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and 0 < len(item) <= _MAX_TEXT_CHARS for item in value)
    ):
        raise AdapterFileError(f"{CONFIG_NAME}: 'target_modules' must list module names")
    return frozenset(value)


def _is_text(value: object) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= _MAX_TEXT_CHARS)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_INFORMATIONAL: dict[str, Callable[[object], bool]] = {
    "peft_type": lambda value: True,
    "r": lambda value: True,
    "lora_alpha": lambda value: True,
    "target_modules": lambda value: True,
    "base_model_name_or_path": _is_text,
    "revision": _is_text,
    "task_type": _is_text,
    "peft_version": _is_text,
    "megatron_core": _is_text,
    "inference_mode": lambda value: isinstance(value, bool),
    "lora_dropout": lambda value: _is_number(value) and 0 <= float(value) <= 1,  # type: ignore[arg-type]
    "qalora_group_size": _is_number,
    "auto_mapping": lambda value: (
        value is None
        or (isinstance(value, dict) and all(_is_text(item) for item in value.values()))
    ),
}
"""Settings that do not change what the adapter computes, with the values they may take."""
_SERVED: dict[str, tuple[tuple[object, ...], str]] = {
    "init_lora_weights": (
        (True, "gaussian"),
        "an initialisation that leaves untrained factors non-zero or changes the base weights",
    ),
    "bias": (("none",), "trained biases (bias must be 'none')"),
    "use_rslora": ((False,), "rank-stabilised LoRA (use_rslora)"),
    "use_dora": ((False,), "DoRA (use_dora)"),
    "fan_in_fan_out": ((False,), "transposed factors (fan_in_fan_out)"),
    "modules_to_save": ((None, []), "fully trained modules (modules_to_save)"),
    "rank_pattern": (({},), "ranks that differ between modules (rank_pattern)"),
    "alpha_pattern": (({},), "alphas that differ between modules (alpha_pattern)"),
    "layers_to_transform": ((None, []), "adapting only some layers (layers_to_transform)"),
    "layers_pattern": ((None, []), "adapting only some layers (layers_pattern)"),
}
"""Settings the service serves with one value only (or two equivalent ones), and what else means."""


def _check_setting(key: str, value: object) -> None:
    check = _INFORMATIONAL.get(key)
    if check is not None:
        if not check(value):
            raise AdapterFileError(f"{CONFIG_NAME}: {_short(key)} has an invalid value")
        return
    allowed, meaning = _SERVED.get(key, ((None, False, [], {}, ""), ""))
    if not any(type(value) is type(option) and value == option for option in allowed):
        what = meaning or f"the setting {_short(key)}"
        raise AdapterFileError(
            f"{CONFIG_NAME} sets {_short(key)} to {_short(value)}: {what} cannot be served "
            "exactly; only plain LoRA (scale * B A added to each projection) is"
        )
