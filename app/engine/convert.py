"""Convert a CTranslate2 Whisper `model.bin` into a Hugging Face transformers checkpoint.

The bundled models ship in CTranslate2's binary format (version 6, written by
`ctranslate2/specs/model_spec.py::_serialize`). This module reads that format directly (no
ctranslate2 import), maps the variables onto `WhisperForConditionalGeneration`'s state dict in
fp32, and writes a directory that `from_pretrained` loads offline. Every dimension is inferred
from the file, so tiny.en and the multilingual base go through the same code.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import save_file

from app.engine.errors import ModelImportError

if TYPE_CHECKING:
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

__all__ = [
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "ModelManifest",
    "convert_ct2_whisper",
    "read_ct2_variables",
    "sha256_file",
]

MANIFEST_NAME = "pqm_model.json"
WEIGHTS_NAME = "model.safetensors"

_BINARY_VERSION = 6
_SPEC_NAME = "WhisperSpec"
# Type ids in the order of CTranslate2's DataType enum (`_dtype_to_type_id`).
_DTYPES: dict[int, np.dtype[Any]] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
_BFLOAT16 = 5
_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU
_MULTILINGUAL_MIN_VOCAB = 51865  # openai/whisper: `is_multilingual = n_vocab >= 51865`
_TIME_PRECISION = 0.02
_MAX_INITIAL_TIMESTAMP_INDEX = 50  # openai/whisper: max_initial_timestamp=1.0 s / 0.02 s
_SAMPLING_RATE = 16000
_N_FFT = 400
_HOP_LENGTH = 160
_CHUNK_LENGTH_S = 30
_ZERO_BIAS_ATOL = 1e-6
_HASH_BLOCK = 1 << 20

_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|notimestamps|>",
)


@dataclass(frozen=True)
class ModelManifest:
    """What `pqm_model.json` records about a converted (or described) checkpoint."""

    model_id: str
    source: str
    multilingual: bool
    fingerprint: str
    """sha256 hex of the fp32 weights file(s)."""
    source_quantisation: str | None = None
    """`int8` when the source held CTranslate2 int8 weights (dequantised here): quantising them
    again for serving rounds them twice."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------- reading model.bin


class _ChainedReader:
    """Reads several files as one byte stream (model.bin split into parts)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        if not paths:
            raise ModelImportError("no model.bin file given")
        self._paths = list(paths)
        self._index = 0
        self._file: io.BufferedReader | None = None

    def __enter__(self) -> _ChainedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_current()

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _current(self) -> io.BufferedReader | None:
        if self._file is None and self._index < len(self._paths):
            try:
                self._file = self._paths[self._index].open("rb")
            except OSError as exc:
                raise ModelImportError(f"cannot read {self._paths[self._index]}: {exc}") from exc
        return self._file

    def readinto(self, buffer: memoryview) -> None:
        """Fills `buffer` completely, crossing file boundaries; raises on a short stream."""
        filled = 0
        while filled < len(buffer):
            current = self._current()
            if current is None:
                raise ModelImportError(
                    f"model.bin is truncated (read {', '.join(map(str, self._paths))})"
                )
            n = current.readinto(buffer[filled:])
            if not n:
                self._close_current()
                self._index += 1
                continue
            filled += n

    def read(self, size: int) -> bytes:
        buffer = bytearray(size)
        self.readinto(memoryview(buffer))
        return bytes(buffer)

    def at_end(self) -> bool:
        while (current := self._current()) is not None:
            if current.read(1):
                return False
            self._close_current()
            self._index += 1
        return True

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))

    def string(self) -> str:
        (length,) = self.unpack("<H")
        raw = self.read(length)
        if length == 0 or raw[-1] != 0:
            raise ModelImportError("model.bin is malformed: string without NUL terminator")
        return raw[:-1].decode("utf-8")


def _read_array(reader: _ChainedReader, name: str) -> np.ndarray:
    (rank,) = reader.unpack("<B")
    shape = reader.unpack(f"<{rank}I")
    type_id, nbytes = reader.unpack("<BI")
    dtype = np.dtype("<u2") if type_id == _BFLOAT16 else _DTYPES.get(type_id)
    if dtype is None:
        raise ModelImportError(f"model.bin variable {name!r} has unknown type id {type_id}")
    count = int(np.prod(shape, dtype=np.int64))
    if count * dtype.itemsize != nbytes:
        raise ModelImportError(
            f"model.bin variable {name!r}: {nbytes} bytes do not match shape {shape} of {dtype}"
        )
    array = np.empty(count, dtype=dtype)
    reader.readinto(array.data.cast("B"))
    if type_id == _BFLOAT16:
        # bfloat16 is the upper half of a float32.
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array.reshape(shape)


def read_ct2_variables(model_bin: Path | Iterable[Path]) -> dict[str, np.ndarray]:
    """Reads every variable of a CTranslate2 `model.bin`, aliases resolved to the same array.

    `model_bin` may be a list of part files, read in order as one stream (never joined on disk).
    Arrays keep their stored dtype, except bfloat16 which numpy lacks and becomes float32.
    """
    paths = [model_bin] if isinstance(model_bin, Path) else list(model_bin)
    with _ChainedReader(paths) as reader:
        (version,) = reader.unpack("<I")
        if version != _BINARY_VERSION:
            raise ModelImportError(
                f"model.bin has binary version {version}; only version {_BINARY_VERSION} is "
                "supported"
            )
        spec = reader.string()
        if spec != _SPEC_NAME:
            raise ModelImportError(f"model.bin holds a {spec!r}, not a {_SPEC_NAME!r}")
        reader.unpack("<I")  # spec revision
        (n_variables,) = reader.unpack("<I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(n_variables):
            name = reader.string()
            variables[name] = _read_array(reader, name)
        (n_aliases,) = reader.unpack("<I")
        for _ in range(n_aliases):
            alias, target = reader.string(), reader.string()
            if target not in variables:
                raise ModelImportError(f"model.bin alias {alias!r} points to unknown {target!r}")
            variables[alias] = variables[target]
        if not reader.at_end():
            raise ModelImportError("model.bin has trailing bytes (are the parts in order?)")
    return variables


# --------------------------------------------------------------------------- weight mapping


@dataclass(frozen=True)
class _Dims:
    n_mels: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    vocab_size: int
    max_source_positions: int
    max_target_positions: int

    @property
    def multilingual(self) -> bool:
        return self.vocab_size >= _MULTILINGUAL_MIN_VOCAB


class _Variables:
    """CT2 variables by name, remembering which ones the mapping consumed."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        self._variables = variables
        self._used: set[str] = set()
        self.dequantised = False
        """Whether an int8 tensor was read (see `weights`)."""

    def get(self, name: str) -> np.ndarray:
        if name not in self._variables:
            raise ModelImportError(f"model.bin lacks the variable {name!r}")
        self._used.add(name)
        return self._variables[name]

    def weights(self, name: str) -> np.ndarray:
        """`name` as float32; an int8 tensor (CTranslate2's `int8` quantisation, as many
        faster-whisper models ship) dequantised by its per-row `<name>_scale`."""
        array = self.get(name)
        if np.issubdtype(array.dtype, np.floating):
            return np.ascontiguousarray(array, dtype=np.float32)
        if array.dtype != np.int8:
            raise ModelImportError(f"{name}: cannot read {array.dtype} weights")
        self.dequantised = True
        scale = self.get(f"{name}_scale").astype(np.float32)
        rows = scale.reshape(-1, *([1] * (array.ndim - 1))) if scale.ndim else scale
        return np.ascontiguousarray(array.astype(np.float32) / rows)

    def scalar(self, name: str, default: int | None = None) -> int:
        if name not in self._variables and default is not None:
            return default
        value = self.get(name)
        if value.ndim != 0:
            raise ModelImportError(f"model.bin variable {name!r} is not a scalar")
        return int(value)

    def count_layers(self, stack: str) -> int:
        pattern = re.compile(rf"^{stack}/layer_(\d+)/")
        indices = {int(m.group(1)) for name in self._variables if (m := pattern.match(name))}
        if not indices or indices != set(range(len(indices))):
            raise ModelImportError(f"model.bin has no contiguous {stack} layers: {sorted(indices)}")
        return len(indices)

    def unused_tensors(self) -> list[str]:
        return sorted(
            name
            for name, value in self._variables.items()
            if name not in self._used and value.ndim > 0
        )


def _infer_dims(v: _Variables) -> _Dims:
    conv1 = v.get("encoder/conv1/weight")
    return _Dims(
        n_mels=conv1.shape[1],
        d_model=conv1.shape[0],
        encoder_layers=v.count_layers("encoder"),
        decoder_layers=v.count_layers("decoder"),
        encoder_heads=v.scalar("encoder/num_heads"),
        decoder_heads=v.scalar("decoder/num_heads"),
        encoder_ffn=v.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn=v.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        vocab_size=v.get("decoder/embeddings/weight").shape[0],
        max_source_positions=v.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=v.get("decoder/position_encodings/encodings").shape[0],
    )


def _check_architecture(v: _Variables) -> None:
    """Refuses CT2 options that `WhisperForConditionalGeneration` cannot express."""
    expected = {
        "decoder/activation": _GELU,
        "decoder/pre_norm": 1,
        "decoder/alibi": 0,
        "decoder/scale_embeddings": 0,
        "decoder/start_from_zero_embedding": 0,
    }
    for name, want in expected.items():
        got = v.scalar(name, default=want)
        if got != want:
            raise ModelImportError(f"unsupported Whisper variant: {name} = {got}, expected {want}")


class _StateDict:
    def __init__(self, v: _Variables) -> None:
        self.v = v
        self.tensors: dict[str, np.ndarray] = {}

    def copy(self, hf: str, ct2: str) -> None:
        self.tensors[hf] = self.v.weights(ct2)

    def linear(self, hf: str, ct2: str) -> None:
        self.copy(f"{hf}.weight", f"{ct2}/weight")
        self.copy(f"{hf}.bias", f"{ct2}/bias")

    def layer_norm(self, hf: str, ct2: str) -> None:
        self.copy(f"{hf}.weight", f"{ct2}/gamma")
        self.copy(f"{hf}.bias", f"{ct2}/beta")

    def fused(self, hf_attn: str, ct2: str, projections: Sequence[str]) -> None:
        """Splits a fused CT2 linear into HF projections; HF's k_proj has no bias."""
        weight = self.v.weights(f"{ct2}/weight")
        bias = self.v.weights(f"{ct2}/bias")
        n = len(projections)
        if weight.shape[0] % n or bias.shape[0] != weight.shape[0]:
            raise ModelImportError(f"{ct2}: cannot split shape {weight.shape} into {n}")
        for proj, w, b in zip(projections, np.split(weight, n), np.split(bias, n), strict=True):
            self.tensors[f"{hf_attn}.{proj}.weight"] = np.ascontiguousarray(w)
            if proj == "k_proj":
                peak = float(np.abs(b).max())
                if peak > _ZERO_BIAS_ATOL:
                    raise ModelImportError(
                        f"{ct2}: key bias is not zero (max |b| = {peak:g}); HF Whisper has none"
                    )
            else:
                self.tensors[f"{hf_attn}.{proj}.bias"] = np.ascontiguousarray(b)

    def ffn_and_self_attention(self, hf: str, ct2: str) -> None:
        self.layer_norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        self.fused(
            f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj")
        )
        self.linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
        self.layer_norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
        self.linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
        self.linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")


def _build_state_dict(v: _Variables, dims: _Dims) -> tuple[dict[str, np.ndarray], bool]:
    """Returns the HF state dict and whether the output projection is tied to the embeddings."""
    sd = _StateDict(v)
    sd.linear("model.encoder.conv1", "encoder/conv1")
    sd.linear("model.encoder.conv2", "encoder/conv2")
    sd.copy("model.encoder.embed_positions.weight", "encoder/position_encodings/encodings")
    for i in range(dims.encoder_layers):
        sd.ffn_and_self_attention(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
    sd.layer_norm("model.encoder.layer_norm", "encoder/layer_norm")

    sd.copy("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    sd.copy("model.decoder.embed_positions.weight", "decoder/position_encodings/encodings")
    for i in range(dims.decoder_layers):
        hf, ct2 = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        sd.ffn_and_self_attention(hf, ct2)
        sd.layer_norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
        sd.fused(f"{hf}.encoder_attn", f"{ct2}/attention/linear_0", ("q_proj",))
        sd.fused(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", ("k_proj", "v_proj"))
        sd.linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
    sd.layer_norm("model.decoder.layer_norm", "decoder/layer_norm")

    embeddings = v.get("decoder/embeddings/weight")
    projection = v.get("decoder/projection/weight")
    tied = projection is embeddings or np.array_equal(projection, embeddings)
    if not tied:
        sd.copy("proj_out.weight", "decoder/projection/weight")
    leftovers = v.unused_tensors()
    if leftovers:
        raise ModelImportError(f"model.bin variables not mapped to the HF model: {leftovers}")
    return sd.tensors, tied


# --------------------------------------------------------------------------- tokenizer & configs


@dataclass(frozen=True)
class _Special:
    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_prev: int
    no_timestamps: int


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelImportError(f"cannot read {path}: {exc}") from exc


def _tokenizer_ids(tokenizer: dict[str, Any]) -> dict[str, int]:
    ids: dict[str, int] = dict(tokenizer["model"]["vocab"])
    ids.update({token["content"]: token["id"] for token in tokenizer["added_tokens"]})
    return ids


def _special_ids(ids: dict[str, int]) -> _Special:
    missing = [token for token in _SPECIAL_TOKENS if token not in ids]
    if missing:
        raise ModelImportError(f"tokenizer.json lacks Whisper special tokens {missing}")
    return _Special(
        eot=ids["<|endoftext|>"],
        sot=ids["<|startoftranscript|>"],
        translate=ids["<|translate|>"],
        transcribe=ids["<|transcribe|>"],
        sot_prev=ids["<|startofprev|>"],
        no_timestamps=ids["<|notimestamps|>"],
    )


def _add_timestamp_tokens(tokenizer: dict[str, Any], vocab_size: int) -> None:
    """Appends `<|0.00|>`... up to the model's vocab size, as CT2 and newer HF tokenizers have.

    English-only CT2 packages ship a tokenizer.json without them; transformers needs them to
    decode timestamps (it takes the first id after the last special token as `<|0.00|>`).
    """
    size = max(_tokenizer_ids(tokenizer).values()) + 1
    if size > vocab_size:
        raise ModelImportError(f"tokenizer has {size} tokens but the model only {vocab_size}")
    for i in range(vocab_size - size):
        tokenizer["added_tokens"].append(
            {
                "id": size + i,
                "content": f"<|{i * _TIME_PRECISION:.2f}|>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": False,
            }
        )


def _prepare_tokenizer(ct2_dir: Path, vocab_size: int) -> tuple[dict[str, Any], _Special]:
    tokenizer: dict[str, Any] = _read_json(ct2_dir / "tokenizer.json")
    _add_timestamp_tokens(tokenizer, vocab_size)
    ids = _tokenizer_ids(tokenizer)
    special = _special_ids(ids)
    if ids.get("<|0.00|>") != special.no_timestamps + 1:
        raise ModelImportError("tokenizer.json: <|0.00|> does not follow <|notimestamps|>")
    if len(set(ids.values())) != vocab_size or max(ids.values()) != vocab_size - 1:
        raise ModelImportError(f"tokenizer.json ids do not cover 0..{vocab_size - 1} exactly")
    return tokenizer, special


def _tokenizer_config(tokenizer: dict[str, Any], dims: _Dims) -> dict[str, Any]:
    eot = "<|endoftext|>"
    extra_special = [
        token["content"]
        for token in sorted(tokenizer["added_tokens"], key=lambda t: int(t["id"]))
        if token["special"] and token["content"] != eot
    ]
    return {
        "tokenizer_class": "WhisperTokenizer",
        "add_prefix_space": False,
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "pad_token": eot,
        "extra_special_tokens": extra_special,
        # openai/whisper decodes without this clean-up (it would turn " ," into ",").
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": dims.max_target_positions,
        "language": None,
        "task": None,
        "predict_timestamps": False,
    }


def _lang_to_id(ct2_config: dict[str, Any], tokenizer: dict[str, Any]) -> dict[str, int]:
    by_id = {token["id"]: token["content"] for token in tokenizer["added_tokens"]}
    lang_to_id: dict[str, int] = {}
    for token_id in ct2_config.get("lang_ids") or []:
        content = by_id.get(token_id, "")
        if not re.fullmatch(r"<\|[a-z]{2,3}\|>", content):
            raise ModelImportError(f"config.json lang id {token_id} is {content!r}, not a language")
        lang_to_id[content] = token_id
    if not lang_to_id:
        raise ModelImportError("multilingual model without lang_ids in config.json")
    return lang_to_id


def _alignment_heads(ct2_config: dict[str, Any], dims: _Dims) -> list[list[int]]:
    heads = ct2_config.get("alignment_heads")
    if heads:
        return [[int(layer), int(head)] for layer, head in heads]
    # CTranslate2's default: every head of the last half of the decoder layers.
    return [
        [layer, head]
        for layer in range(dims.decoder_layers // 2, dims.decoder_layers)
        for head in range(dims.decoder_heads)
    ]


def _model_config(
    dims: _Dims, special: _Special, ct2_config: dict[str, Any], tied: bool
) -> WhisperConfig:
    from transformers import WhisperConfig

    return WhisperConfig(
        architectures=["WhisperForConditionalGeneration"],
        vocab_size=dims.vocab_size,
        num_mel_bins=dims.n_mels,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_heads,
        decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.encoder_ffn,
        decoder_ffn_dim=dims.decoder_ffn,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=tied,
        bos_token_id=special.eot,
        eos_token_id=special.eot,
        pad_token_id=special.eot,
        decoder_start_token_id=special.sot,
        suppress_tokens=[int(i) for i in ct2_config["suppress_ids"]],
        begin_suppress_tokens=[int(i) for i in ct2_config["suppress_ids_begin"]],
    )


def _generation_config(
    dims: _Dims, special: _Special, ct2_config: dict[str, Any], tokenizer: dict[str, Any]
) -> GenerationConfig:
    from transformers import GenerationConfig

    fields: dict[str, Any] = {
        "alignment_heads": _alignment_heads(ct2_config, dims),
        "begin_suppress_tokens": [int(i) for i in ct2_config["suppress_ids_begin"]],
        "suppress_tokens": [int(i) for i in ct2_config["suppress_ids"]],
        "bos_token_id": special.eot,
        "eos_token_id": special.eot,
        "pad_token_id": special.eot,
        "decoder_start_token_id": special.sot,
        "is_multilingual": dims.multilingual,
        "max_initial_timestamp_index": _MAX_INITIAL_TIMESTAMP_INDEX,
        "max_length": dims.max_target_positions,
        "no_timestamps_token_id": special.no_timestamps,
        "prev_sot_token_id": special.sot_prev,
        "return_timestamps": False,
    }
    if dims.multilingual:
        fields["lang_to_id"] = _lang_to_id(ct2_config, tokenizer)
        fields["task_to_id"] = {"translate": special.translate, "transcribe": special.transcribe}
        # Without a task (and without the deprecated forced_decoder_ids), transformers prompts
        # <|sot|><|lang|><|notimestamps|> with no task token and the model degenerates.
        fields["task"] = "transcribe"
    return GenerationConfig.from_dict(fields)


def _feature_extractor(dims: _Dims) -> WhisperFeatureExtractor:
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor.from_dict(
        {
            "feature_size": dims.n_mels,
            "sampling_rate": _SAMPLING_RATE,
            "hop_length": _HOP_LENGTH,
            "chunk_length": _CHUNK_LENGTH_S,
            "n_fft": _N_FFT,
            "padding_value": 0.0,
            "return_attention_mask": False,
        }
    )
    if not isinstance(extractor, WhisperFeatureExtractor):  # from_dict may return a tuple
        raise TypeError(f"unexpected feature extractor {extractor!r}")
    return extractor


# --------------------------------------------------------------------------- writing


def sha256_file(*paths: Path) -> str:
    """sha256 hex of the files' bytes, read in the order given as one stream."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(_HASH_BLOCK), b""):
                digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelImportError(f"{out_dir} exists and is not an empty directory")
    out_dir.mkdir(parents=True, exist_ok=True)


def convert_ct2_whisper(
    ct2_dir: Path,
    out_dir: Path,
    *,
    model_bin_parts: Sequence[Path] | None = None,
    model_id: str,
    source: str,
) -> None:
    """Writes a transformers Whisper checkpoint (fp32) converted from `ct2_dir` into `out_dir`.

    `ct2_dir` holds CTranslate2's `config.json` and `tokenizer.json`; the weights come from
    `model_bin_parts` (read in order as one file) or else `ct2_dir / "model.bin"`. `out_dir`
    must not exist or be empty. `pqm_model.json` is written last, so its presence marks a
    complete conversion.
    """
    parts = list(model_bin_parts) if model_bin_parts is not None else [ct2_dir / "model.bin"]
    ct2_config: dict[str, Any] = _read_json(ct2_dir / "config.json")
    for key in ("suppress_ids", "suppress_ids_begin"):
        if key not in ct2_config:
            raise ModelImportError(f"{ct2_dir / 'config.json'} lacks {key!r}")
    _prepare_out_dir(out_dir)

    variables = _Variables(read_ct2_variables(parts))
    _check_architecture(variables)
    dims = _infer_dims(variables)
    tokenizer, special = _prepare_tokenizer(ct2_dir, dims.vocab_size)
    tensors, tied = _build_state_dict(variables, dims)
    quantisation = "int8" if variables.dequantised else None
    del variables

    weights = out_dir / WEIGHTS_NAME
    save_file(tensors, str(weights), metadata={"format": "pt"})
    del tensors

    _model_config(dims, special, ct2_config, tied).to_json_file(out_dir / "config.json")
    _generation_config(dims, special, ct2_config, tokenizer).to_json_file(
        out_dir / "generation_config.json"
    )
    _write_json(out_dir / "tokenizer.json", tokenizer)
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config(tokenizer, dims))
    _feature_extractor(dims).to_json_file(out_dir / "preprocessor_config.json")

    manifest = ModelManifest(
        model_id=model_id,
        source=source,
        multilingual=dims.multilingual,
        fingerprint=sha256_file(weights),
        source_quantisation=quantisation,
    )
    (out_dir / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
