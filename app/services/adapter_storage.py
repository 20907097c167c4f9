"""The one way an adapter is stored, whether an enrolment trained it or a user imported it.

The engine's `SpeechEngine.checked` gives the file to store and what it parses back to,
checked against the served base model and the bounds; `store_adapter` writes that file, reads
it back to verify it, and records the adapter, in the caller's transaction.
"""

import contextlib
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore
from adapters_store.base import sha256_hex
from app.db.models import Adapter, AdapterStatus, new_id
from app.db.repositories.adapters import AdapterRepository
from app.engine.facade import CheckedAdapter
from app.errors import DataIntegrityError
from app.services.blob_keys import adapter_key

__all__ = ["NewAdapter", "store_adapter", "write_verified"]


@dataclass(frozen=True, slots=True)
class NewAdapter:
    user_id: str
    form: CheckedAdapter
    source: Literal["enrolment", "import"]
    activate: bool
    note: str | None = None
    """Why the adapter is not activated."""
    enrolment_id: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)

    def __post_init__(self) -> None:
        if self.activate and self.quarantined:
            raise ValueError("an adapter out of bounds is quarantined, never activated")

    @property
    def quarantined(self) -> bool:
        return self.form.out_of_bounds is not None

    @property
    def key(self) -> str:
        return adapter_key(self.user_id, self.id)


async def store_adapter(session: AsyncSession, store: AdapterStore, new: NewAdapter) -> Adapter:
    """Writes the weights and verifies them, records the adapter (quarantined when it is out
    of bounds) and activates it if asked, in the session's transaction. When any of it fails
    the weights are deleted again: a file-system blob does not roll back with the transaction."""
    bound = store.bind(session)
    try:
        await write_verified(bound, new.key, new.form.data)
        repository = AdapterRepository(session)
        adapter = await repository.add(_row(new, await repository.next_version(new.user_id)))
        if new.activate:
            await repository.activate(adapter)
    except Exception:
        with contextlib.suppress(Exception):
            await bound.delete(new.key)
        raise
    return adapter


async def write_verified(store: AdapterStore, key: str, data: bytes) -> None:
    """Writes `data` and reads it back: the one way weights (adapters, expert banks) are
    written."""
    stored = await store.put(key, data)
    if sha256_hex(await store.get(key)) != stored.sha256:
        raise DataIntegrityError("The adapter weights failed verification after writing.")


def _row(new: NewAdapter, version: int) -> Adapter:
    weights, data = new.form.weights, new.form.data
    return Adapter(
        id=new.id,
        user_id=new.user_id,
        version=version,
        method=weights.method,
        rank=weights.rank,
        target_modules=weights.target_modules,
        base_fingerprint=weights.base_fingerprint,
        encoder_window=weights.encoder_window,
        blob_key=new.key,
        size_bytes=len(data),
        sha256=sha256_hex(data),
        parameter_count=weights.parameter_count,
        metrics=new.metrics,
        source=new.source,
        enrolment_id=new.enrolment_id,
        active=False,
        note=new.note,
        status=AdapterStatus.QUARANTINED if new.quarantined else AdapterStatus.READY,
    )
