"""Loads a transformers Whisper checkpoint at the requested precision.

`nf4` and `int8` replace every linear layer but the output projection (tied to the token
embeddings) with bitsandbytes' quantised layers, so the weights stay 4-/8-bit in memory and are
dequantised block by block inside each matmul. NF4 uses block size 64, as in PQM.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    BitsAndBytesConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizerFast,
)

from app.engine.errors import ModelLoadError
from app.engine.types import Precision

__all__ = ["LoadedModel", "load_model", "quantized_linear_count", "resolve_device", "weight_bytes"]

NF4_BLOCK_SIZE = 64


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: WhisperForConditionalGeneration
    feature_extractor: WhisperFeatureExtractor
    tokenizer: WhisperTokenizerFast
    device: torch.device
    precision: Precision


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("PQM_MODEL__DEVICE=cuda but no CUDA device is available")
    return torch.device(device)


def _quantization_config(precision: Precision) -> BitsAndBytesConfig | None:
    if precision == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float32,
            bnb_4bit_use_double_quant=False,
        )
    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_model(model_dir: Path, *, precision: Precision, device: str = "auto") -> LoadedModel:
    target = resolve_device(device)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(
            model_dir,
            dtype=torch.float32,
            quantization_config=_quantization_config(precision),
            device_map={
                "": target.type if target.index is None else f"{target.type}:{target.index}"
            },
        )
        feature_extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
        tokenizer = WhisperTokenizerFast.from_pretrained(model_dir)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise ModelLoadError(f"cannot load a Whisper model from {model_dir}: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    if precision == "nf4":
        _check_nf4(model)
    return LoadedModel(model, feature_extractor, tokenizer, target, precision)


def _check_nf4(model: torch.nn.Module) -> None:
    import bitsandbytes as bnb

    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            if state is None or state.quant_type != "nf4" or state.blocksize != NF4_BLOCK_SIZE:
                raise ModelLoadError(f"{name} is not NF4 with block size {NF4_BLOCK_SIZE}")


def quantized_linear_count(model: torch.nn.Module) -> int:
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return sum(isinstance(module, kinds) for module in model.modules())


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers as held in memory, counting shared tensors once.

    4-bit weights are stored packed (two per byte, as uint8); their quantisation scales
    (one fp32 absmax per block of 64) are added from each layer's quant state.
    """
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)
        if state is not None and getattr(state, "absmax", None) is not None:
            total += state.absmax.numel() * state.absmax.element_size()
    return total
