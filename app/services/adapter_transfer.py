"""Adapter export and import: a user's adapter as a safetensors file of its method's format
(`pqm-lora/1`, `pqm-saml/1`; a LoRA adapter also in PEFT's form, a zip), and back.

Imported files are untrusted: they are parsed as safetensors only (never pickle), checked on
their own terms and against the served base model, then stored in canonical form, so what is
stored is exactly what will be served and exporting it again gives the same bytes. A PEFT zip is
first turned into the service's own file (`lora.peft_zip.from_peft`), then goes the same way.
"""

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore, BlobNotFoundError, StoreError
from adapters_store.base import sha256_hex
from app.db.models import Adapter
from app.db.repositories.adapters import AdapterRepository
from app.engine.adaptation.files import read_any_header
from app.engine.adaptation.lora.config import METHOD as LORA
from app.engine.adaptation.lora.file import AdapterFileError, BaseModelMismatchError
from app.engine.adaptation.lora.peft_zip import from_peft, is_zip, to_peft
from app.engine.adaptation.saml.file import SAML_FORMAT
from app.engine.facade import SpeechEngine
from app.engine.tensor_file import TensorFile
from app.engine.types import ModelInfo
from app.errors import BadRequestError, DataIntegrityError, NotFoundError, PayloadTooLargeError
from app.services.adapter_storage import NewAdapter, store_adapter
from app.services.auth import Principal
from app.services.users import get_user

__all__ = ["AdapterFile", "AdapterUpload", "ExportForm", "export_adapter", "import_adapter"]

logger = logging.getLogger(__name__)


ExportForm = Literal["pqm", "peft"]
"""`pqm`: the stored file (`pqm-lora/1` or `pqm-saml/1`); `peft`: a zip that PEFT's
`from_pretrained` loads (LoRA only: PEFT has no SAML)."""


@dataclass(frozen=True, slots=True)
class AdapterFile:
    filename: str
    data: bytes
    sha256: str
    media_type: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class AdapterUpload:
    data: bytes
    activate: bool = True


async def export_adapter(
    session: AsyncSession,
    store: AdapterStore,
    principal: Principal,
    user_id: str,
    adapter_id: str,
    form: ExportForm = "pqm",
    served: ModelInfo | None = None,
) -> AdapterFile:
    """The stored file, verified against the adapter's recorded size and checksum; or, for
    `peft`, that file in PEFT's form, naming the `served` model as its base if it was trained
    for it."""
    principal.require_speaker_access_to(user_id)
    adapter = await AdapterRepository(session).get_for_user(user_id, adapter_id)
    if adapter is None:
        raise NotFoundError(f"No adapter with id {adapter_id!r}.", param="adapter_id")
    if form == "peft" and adapter.method != LORA:
        raise BadRequestError(
            f"PEFT has no {adapter.method} adapters; export this one with format=pqm.",
            param="format",
            code="unsupported_format",
        )
    data = await _stored_weights(store.bind(session), adapter)
    if form == "pqm":
        return AdapterFile(filename=f"{adapter.id}.safetensors", data=data, sha256=adapter.sha256)
    fits = served is not None and served.fingerprint == adapter.base_fingerprint
    base_model = served.model_id if served is not None and fits else None
    try:
        archive = await asyncio.to_thread(to_peft, data, base_model)  # byte work, no torch
    except AdapterFileError as exc:  # stored files were checked: this is no user's doing
        raise _integrity_failure(adapter, f"cannot be put in PEFT's form ({exc})") from exc
    return AdapterFile(
        filename=f"{adapter.id}.peft.zip",
        data=archive,
        sha256=sha256_hex(archive),
        media_type="application/zip",
    )


async def _stored_weights(store: AdapterStore, adapter: Adapter) -> bytes:
    try:
        data = await store.get(adapter.blob_key)
    except BlobNotFoundError as exc:
        raise _integrity_failure(adapter, "are missing from the adapter store", "missing") from exc
    except StoreError as exc:
        raise _integrity_failure(adapter, "fail their checksum in the adapter store") from exc
    if len(data) != adapter.size_bytes or sha256_hex(data) != adapter.sha256:
        raise _integrity_failure(adapter, "differ from the recorded sha256")
    return data


def _integrity_failure(adapter: Adapter, problem: str, kind: str = "corrupt") -> DataIntegrityError:
    logger.error(
        "adapter weights unavailable for export",
        extra={"adapter_id": adapter.id, "user_id": adapter.user_id, "reason": problem},
    )
    return DataIntegrityError(
        f"The stored weights of adapter {adapter.id!r} {problem}; they cannot be exported.",
        param="adapter_id",
        code=f"adapter_weights_{kind}",
    )


async def import_adapter(
    session: AsyncSession,
    store: AdapterStore,
    engine: SpeechEngine,
    principal: Principal,
    user_id: str,
    upload: AdapterUpload,
    max_bytes: int,
) -> Adapter:
    """Validates the file whole, then stores it, records it and (if asked) activates it in the
    session's transaction: a refused file leaves nothing behind."""
    await get_user(session, principal, user_id)
    if len(upload.data) > max_bytes:
        raise PayloadTooLargeError(
            f"The adapter file exceeds the {max_bytes} byte limit.", param="file"
        )
    # The header is checked first, off the inference thread (and a PEFT zip unpacked there):
    # a hostile file is refused without delaying anyone's transcription.
    fingerprint = engine.info.fingerprint
    file = await asyncio.to_thread(_checked_header, upload.data, fingerprint, max_bytes)
    try:
        form = await engine.checked(file)
    except BaseModelMismatchError as exc:
        raise _refused(exc, "base_model_mismatch") from exc
    except AdapterFileError as exc:
        raise _refused(exc, "invalid_adapter") from exc
    if form.out_of_bounds is not None:
        raise _refused(form.out_of_bounds, "invalid_adapter")
    new = NewAdapter(user_id=user_id, form=form, source="import", activate=upload.activate)
    return await store_adapter(session, store, new)


def _checked_header(data: bytes, fingerprint: str, max_bytes: int) -> TensorFile:
    """The file with its header checked, a PEFT zip turned into the service's file first (plain
    Python and numpy, no torch). Such a zip names no base model the service can check: it is
    stamped with the served one's `fingerprint` (unless it is one of our exports, which carry
    theirs), and `check_compatible` checks its modules and shapes."""
    if not data:
        raise BadRequestError("The adapter file is empty.", param="file", code="invalid_adapter")
    try:
        if is_zip(data):
            data = from_peft(data, fingerprint, max_bytes)
        file = read_any_header(data)
    except AdapterFileError as exc:
        raise _refused(exc, "invalid_adapter") from exc
    if file.metadata.get("format") == SAML_FORMAT and file.metadata.get("kind") == "bank":
        raise _refused(
            "it is an expert bank, not a speaker's adapter (expert banks go to /v1/expert-banks)",
            "invalid_adapter",
        )
    return file


def _refused(problem: AdapterFileError | str, code: str) -> BadRequestError:
    return BadRequestError(f"The adapter file was refused: {problem}.", param="file", code=code)
