"""The one way adapters are stored (enrolments and imports alike): checked in the form that
will serve, written and verified, recorded ready or quarantined, and nothing left behind when
any of it fails."""

import dataclasses

import httpx
import pytest
import torch
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore, StoredBlob
from app.db.models import Adapter, AdapterStatus
from app.db.session import transaction
from app.engine.adaptation.lora.file import (
    AdapterWeights,
    BaseModelMismatchError,
    dump_adapter,
)
from app.engine.facade import CheckedAdapter
from app.engine.whisper import WhisperEngine
from app.errors import DataIntegrityError
from app.services.adapter_storage import NewAdapter, store_adapter
from app.services.blob_keys import adapter_key
from app.state import ServiceState
from tests.conftest import create_user
from tests.support.adapters import random_adapter


@pytest.fixture(scope="module")
def weights(nf4_engine: WhisperEngine) -> AdapterWeights:
    return random_adapter(nf4_engine, 31)


async def _checked(state: ServiceState, weights: AdapterWeights) -> CheckedAdapter:
    return await state.engine.checked(weights)


async def _rows(state: ServiceState, user_id: str) -> list[Adapter]:
    async with state.sessions() as session:
        result = await session.execute(
            select(Adapter).where(Adapter.user_id == user_id).order_by(Adapter.version)
        )
        return list(result.scalars())


async def test_the_checked_form_is_the_file_and_what_it_serves(
    state: ServiceState, weights: AdapterWeights
) -> None:
    form = await _checked(state, weights)
    assert form.data == dump_adapter(weights)
    assert form.out_of_bounds is None
    assert form.weights.tensors.keys() == weights.tensors.keys()
    for name, tensor in weights.tensors.items():
        assert torch.equal(form.weights.tensors[name], tensor)


async def test_an_adapter_out_of_bounds_is_marked(
    state: ServiceState, weights: AdapterWeights
) -> None:
    form = await _checked(state, dataclasses.replace(weights, alpha=1e38))
    assert form.out_of_bounds is not None
    assert "'alpha' / 'rank' is 2.5e+37; at most 64" in form.out_of_bounds


async def test_an_adapter_for_another_model_is_refused(
    state: ServiceState, weights: AdapterWeights
) -> None:
    with pytest.raises(BaseModelMismatchError):
        await _checked(state, dataclasses.replace(weights, base_fingerprint="f" * 64))


async def test_stored_weights_are_verified_and_recorded(
    client: httpx.AsyncClient, state: ServiceState, weights: AdapterWeights
) -> None:
    user = await create_user(client)
    form = await _checked(state, weights)
    first = NewAdapter(user_id=user["id"], form=form, source="import", activate=True)
    second = NewAdapter(
        user_id=user["id"],
        form=form,
        source="enrolment",
        activate=False,
        note="not activated: no better",
        enrolment_id="e" * 32,
        metrics={"gate": {"activate": False}},
    )
    for new in (first, second):
        async with transaction(state.sessions) as session:
            await store_adapter(session, state.adapter_store, new)

    rows = await _rows(state, user["id"])
    assert [(row.id, row.version, row.active) for row in rows] == [
        (first.id, 1, True),
        (second.id, 2, False),
    ]
    assert [(row.source, row.enrolment_id, row.note) for row in rows] == [
        ("import", None, None),
        ("enrolment", "e" * 32, "not activated: no better"),
    ]
    assert rows[1].metrics == {"gate": {"activate": False}}
    for row in rows:
        assert row.status == AdapterStatus.READY
        assert row.blob_key == adapter_key(user["id"], row.id)
        assert await state.adapter_store.get(row.blob_key) == form.data
        assert (row.size_bytes, row.rank, row.method) == (len(form.data), 4, "lora")


async def test_an_adapter_out_of_bounds_is_stored_quarantined(
    client: httpx.AsyncClient, state: ServiceState, weights: AdapterWeights
) -> None:
    user = await create_user(client)
    form = await _checked(state, dataclasses.replace(weights, alpha=1e38))
    with pytest.raises(ValueError, match="never activated"):
        NewAdapter(user_id=user["id"], form=form, source="enrolment", activate=True)
    new = NewAdapter(
        user_id=user["id"], form=form, source="enrolment", activate=False, note="quarantined"
    )
    async with transaction(state.sessions) as session:
        await store_adapter(session, state.adapter_store, new)

    [row] = await _rows(state, user["id"])
    assert (row.status, row.active, row.note) == (AdapterStatus.QUARANTINED, False, "quarantined")


@dataclasses.dataclass
class _CorruptingStore:
    """Writes through to the real store (in its own transaction, as a file system does) but
    reads back other bytes."""

    inner: AdapterStore
    joins_transactions = False

    async def put(self, key: str, data: bytes) -> StoredBlob:
        return await self.inner.put(key, data)

    async def get(self, key: str) -> bytes:
        return b"rotten " + await self.inner.get(key)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.inner.delete_prefix(prefix)

    def bind(self, session: AsyncSession) -> AdapterStore:
        return self


async def test_weights_that_fail_verification_leave_nothing_behind(
    client: httpx.AsyncClient, state: ServiceState, weights: AdapterWeights
) -> None:
    user = await create_user(client)
    new = NewAdapter(
        user_id=user["id"], form=await _checked(state, weights), source="import", activate=True
    )
    with pytest.raises(DataIntegrityError, match="failed verification"):
        async with transaction(state.sessions) as session:
            await store_adapter(session, _CorruptingStore(state.adapter_store), new)

    assert not await state.adapter_store.exists(new.key)
    assert await _rows(state, user["id"]) == []
