"""Adapter files of every method: one place that writes an adapter and reads one back,
choosing the method's format by the file's own `format` metadata (`pqm-lora/1`,
`pqm-saml/1`)."""

from app.engine.adaptation.lora.file import (
    ADAPTER_FORMAT,
    AdapterFileError,
    AdapterWeights,
    dump_adapter,
    load_adapter,
    read_adapter_header,
)
from app.engine.adaptation.residency import AnyAdapter
from app.engine.adaptation.saml.file import SAML_FORMAT, dump_saml, load_saml
from app.engine.tensor_file import TensorFile

__all__ = ["FORMATS", "dump_any", "load_any", "read_any_header"]

FORMATS = (ADAPTER_FORMAT, SAML_FORMAT)


def dump_any(adapter: AnyAdapter) -> bytes:
    return dump_adapter(adapter) if isinstance(adapter, AdapterWeights) else dump_saml(adapter)


def read_any_header(data: bytes) -> TensorFile:
    """The file's header, checked in plain Python (cheap enough for any thread)."""
    return read_adapter_header(data)


def load_any(data: bytes | TensorFile) -> AnyAdapter:
    """Parses an adapter file of any method (checked on its own terms, not yet against a
    base model)."""
    file = data if isinstance(data, TensorFile) else read_any_header(data)
    found = file.metadata.get("format")
    if found == SAML_FORMAT:
        return load_saml(file)
    if found == ADAPTER_FORMAT:
        return load_adapter(file)
    raise AdapterFileError(f"metadata 'format' must be one of {', '.join(FORMATS)}")
