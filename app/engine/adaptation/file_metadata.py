"""What every method's adapter file shares: its error, a canonical header, strict reading of
the header's metadata (untrusted text) and the bounded provenance kept alongside."""

import json
import math
import re
from collections.abc import Collection
from typing import TypeVar, get_args

from app.engine.errors import EngineError
from app.engine.types import EncoderWindow

__all__ = [
    "MAX_EXTRA_ENTRIES",
    "MAX_EXTRA_VALUE_CHARS",
    "AdapterFileError",
    "canonical_header",
    "check_target_modules",
    "choice",
    "encoder_window",
    "extra_metadata",
    "positive_number",
    "required",
    "whole_number",
]

MAX_EXTRA_ENTRIES = 32
MAX_EXTRA_VALUE_CHARS = 4096
_EXTRA_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEADER_ALIGNMENT = 8
_SHOWN_DIGITS = 20
_ENCODER_WINDOWS: tuple[EncoderWindow, ...] = get_args(EncoderWindow)

_Choice = TypeVar("_Choice", bound=str)


class AdapterFileError(EngineError):
    """An adapter file is malformed or does not fit the served base model."""


def canonical_header(data: bytes) -> bytes:
    """safetensors lays tensors out in a fixed order but writes the metadata from a hash map,
    in an order that changes from call to call; the header is rewritten with sorted keys (the
    tensor bytes, addressed relative to the end of the header, are untouched)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % _HEADER_ALIGNMENT)
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def required(metadata: dict[str, str], key: str) -> str:
    value = metadata.get(key)
    if not value:
        raise AdapterFileError(f"metadata {key!r} is missing")
    return value


def whole_number(metadata: dict[str, str], key: str, maximum: int) -> int:
    text = required(metadata, key)
    if not (text.isascii() and text.isdigit()):
        raise AdapterFileError(f"metadata {key!r} must be a whole number, not {text!r}")
    # The length first: `int` raises ValueError beyond 4300 digits.
    if len(text) > len(str(maximum)) or not 1 <= int(text) <= maximum:
        shown = text if len(text) <= _SHOWN_DIGITS else f"a number of {len(text)} digits"
        raise AdapterFileError(f"metadata {key!r} must be between 1 and {maximum}, not {shown}")
    return int(text)


def positive_number(metadata: dict[str, str], key: str) -> float:
    text = required(metadata, key)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise AdapterFileError(f"metadata {key!r} must be a positive finite number, not {text!r}")
    return number


def choice(key: str, value: str, choices: tuple[_Choice, ...]) -> _Choice:
    """`value` as the member of `choices` it names (a `Literal`'s arguments)."""
    for option in choices:
        if option == value:
            return option
    raise AdapterFileError(f"unknown {key} {value!r}")


def encoder_window(value: str) -> EncoderWindow:
    return choice("encoder_window", value, _ENCODER_WINDOWS)


def extra_metadata(metadata: dict[str, str], known: Collection[str]) -> dict[str, str]:
    """Provenance written alongside (trainer, seed, ...): kept, but bounded."""
    extra = {k: v for k, v in metadata.items() if k not in known}
    if len(extra) > MAX_EXTRA_ENTRIES:
        raise AdapterFileError(
            f"metadata holds {len(extra)} extra entries; at most {MAX_EXTRA_ENTRIES} are allowed"
        )
    for key, value in extra.items():
        if not _EXTRA_KEY.fullmatch(key):
            raise AdapterFileError(f"metadata key {key!r} is not a valid name")
        if len(value) > MAX_EXTRA_VALUE_CHARS:
            raise AdapterFileError(
                f"metadata {key!r} is longer than {MAX_EXTRA_VALUE_CHARS} characters"
            )
    return extra


def check_target_modules(metadata: dict[str, str], found: list[str]) -> None:
    """A declared `target_modules` must list exactly the modules the tensors adapt."""
    if "target_modules" not in metadata:
        return
    try:
        declared = json.loads(metadata["target_modules"])
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deep
        declared = None
    if declared != found:
        raise AdapterFileError(
            "metadata 'target_modules' does not list exactly the modules the tensors adapt"
        )
