"""Use cases for a user's adapters, and resolving which adapter serves a request."""

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore, StoreError
from adapters_store.base import sha256_hex
from app.db.models import Adapter, AdapterStatus
from app.db.repositories.adapters import AdapterRepository
from app.engine.adaptation.files import read_any_header
from app.engine.adaptation.lora.file import AdapterFileError
from app.engine.adaptation.residency import AnyAdapter
from app.engine.facade import SpeechEngine
from app.engine.tensor_file import TensorFile
from app.errors import ConflictError, NotFoundError
from app.metrics import Metrics
from app.services.auth import Principal

logger = logging.getLogger(__name__)

LOAD_CONCURRENCY = 2
"""Adapter loads in flight at once: one can read from the store while another is parsed (on
the inference thread, one at a time anyway)."""
TENSOR_OVERHEAD_BYTES = 1024
"""Memory a parsed adapter holds per tensor beyond its data (the tensor objects: measured
740 B, 4% of a rank-8 tiny.en adapter), counted so that the budget bounds the real footprint."""
LOAD_COPIES = 2
"""Copies of an adapter a load holds at its peak: the file and the parsed weights."""


async def list_adapters(session: AsyncSession, principal: Principal, user_id: str) -> list[Adapter]:
    principal.require_speaker_access_to(user_id)
    return await AdapterRepository(session).list_for_user(user_id)


async def _owned(
    session: AsyncSession, principal: Principal, user_id: str, adapter_id: str
) -> Adapter:
    principal.require_access_to(user_id)
    adapter = await AdapterRepository(session).get_for_user(user_id, adapter_id)
    if adapter is None:
        raise NotFoundError(f"No adapter with id {adapter_id!r}.", param="adapter_id")
    return adapter


async def delete_adapter(
    session: AsyncSession,
    store: AdapterStore,
    principal: Principal,
    user_id: str,
    adapter_id: str,
) -> None:
    """Deletes the row first: from the next request on nobody is served by it, whatever happens
    to the blob afterwards."""
    adapter = await _owned(session, principal, user_id, adapter_id)
    await AdapterRepository(session).delete(adapter)
    await store.bind(session).delete(adapter.blob_key)


async def activate_adapter(
    session: AsyncSession,
    principal: Principal,
    user_id: str,
    adapter_id: str,
    served_fingerprint: str,
) -> Adapter:
    adapter = await _owned(session, principal, user_id, adapter_id)
    if adapter.base_fingerprint != served_fingerprint:
        raise ConflictError(
            "This adapter was trained for a different base model than the one served.",
            param="adapter_id",
            code="base_model_mismatch",
        )
    if adapter.status == AdapterStatus.QUARANTINED:
        raise ConflictError(
            f"This adapter is quarantined and cannot be activated: {adapter.note}",
            param="adapter_id",
            code="adapter_quarantined",
        )
    await AdapterRepository(session).activate(adapter)
    return adapter


@dataclass(frozen=True, slots=True)
class ResolvedAdapter:
    id: str
    weights: AnyAdapter


class ActiveAdapters:
    """Finds the adapter to apply for a user; the host-memory tier of the adapter cache.

    The database says which adapter is active, checked on every request, so a deletion or an
    activation made anywhere (another replica, a `pqm worker`) takes effect on the next request.
    Deserialised weights are kept in an LRU cache bounded in bytes, keyed by adapter id and
    checksum; concurrent first requests for the same adapter share one load. When a user's
    active adapter changes, or an adapter leaves this tier, it is dropped from the model's slots
    too. All bookkeeping is per cached adapter, so memory is bounded by the budget, however many
    users there are; at most `LOAD_CONCURRENCY` loads hold a file and its parsed copy at once,
    however many new users arrive together, and room for them is made in the budget first.
    """

    def __init__(
        self,
        store: AdapterStore,
        engine: SpeechEngine,
        capacity_bytes: int = 64 * 2**20,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._engine = engine
        self._capacity_bytes = capacity_bytes
        self._metrics = metrics
        self._cache: OrderedDict[tuple[str, str], tuple[str, AnyAdapter]] = OrderedDict()
        """(adapter id, sha256) -> (user id, weights), least recently used first."""
        self._cached_bytes = 0
        self._reserved_bytes = 0
        """Room held for loads in flight (`LOAD_COPIES` times the file each)."""
        self._cached_for: dict[str, tuple[str, str]] = {}
        """user id -> key of their adapter in the cache (users with a cached adapter only)."""
        self._loading: dict[tuple[str, str], asyncio.Future[AnyAdapter | None]] = {}
        self._load_gate = asyncio.Semaphore(LOAD_CONCURRENCY)

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    async def resolve(self, session: AsyncSession, user_id: str) -> ResolvedAdapter | None:
        """`active` then `weights_of`; `session` stays open while a cold adapter loads."""
        row = await self.active(session, user_id)
        return await self.weights_of(row) if row is not None else None

    async def active(self, session: AsyncSession, user_id: str) -> Adapter | None:
        """The user's active adapter row, read now (what the cache holds for the user
        otherwise is dropped). Needs no session after: see `weights_of`."""
        row = await AdapterRepository(session).active_for_user(user_id)
        self._note_served(user_id, (row.id, row.sha256) if row is not None else None)
        return row

    async def weights_of(self, row: Adapter) -> ResolvedAdapter | None:
        """The row's weights, from the cache or loaded (None when they cannot be used). A
        cold load may wait for other loads and for the inference thread: callers should not
        hold a database connection meanwhile, or a burst of new users exhausts the pool."""
        weights = await self._weights(row)
        return ResolvedAdapter(row.id, weights) if weights is not None else None

    async def quarantine(self, session: AsyncSession, adapter_id: str, reason: str) -> None:
        """Never serves the adapter again: marked quarantined (and inactive) in `session`'s
        transaction, dropped from this tier and from the model's slots at once."""
        await AdapterRepository(session).quarantine(adapter_id, reason)
        for key in [key for key in self._cache if key[0] == adapter_id]:
            self._drop(key)
        self._publish()
        logger.warning("adapter quarantined", extra={"adapter_id": adapter_id, "reason": reason})

    def _note_served(self, user_id: str, key: tuple[str, str] | None) -> None:
        """The user is served `key` now: whatever of theirs the cache holds otherwise goes."""
        previous = self._cached_for.get(user_id)
        if previous is not None and previous != key:
            self._drop(previous)
            self._publish()

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._cache.pop(key, None)
        if entry is None:
            return
        user_id, weights = entry
        self._cached_bytes -= _size(weights)
        if self._cached_for.get(user_id) == key:
            del self._cached_for[user_id]
        self._engine.forget(weights)

    async def _weights(self, row: Adapter) -> AnyAdapter | None:
        key = (row.id, row.sha256)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self._count("hit")
            return cached[1]
        self._count("miss")
        pending = self._loading.get(key)
        if pending is not None:  # another request is loading it: share that load
            return await asyncio.shield(pending)
        future: asyncio.Future[AnyAdapter | None] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        started = time.perf_counter()
        try:
            async with self._load_gate:
                weights = await self._reserved_load(row)
        except BaseException as exc:  # the requests sharing this load fail with it
            future.set_exception(exc)
            future.exception()  # retrieved here: a load nobody else awaited is not an error
            raise
        else:
            future.set_result(weights)
        finally:
            del self._loading[key]
        if self._metrics is not None:
            self._metrics.adapter_load.observe(time.perf_counter() - started)
        if weights is None:
            self._count("refused")
            return None
        self._keep(key, row.user_id, weights)
        return weights

    async def _reserved_load(self, row: Adapter) -> AnyAdapter | None:
        """`_load`, with room made in the budget first for what the load holds at its peak
        (the file and its parsed copy), so the tier stays within its budget, loads included."""
        reservation = LOAD_COPIES * row.size_bytes
        self._reserved_bytes += reservation
        try:
            self._evict_over_budget(keep=0)
            self._publish()
            return await self._load(row)
        finally:
            self._reserved_bytes -= reservation

    def _keep(self, key: tuple[str, str], user_id: str, weights: AnyAdapter) -> None:
        if key in self._cache:  # loaded twice (a load raced an eviction): keep one
            self._drop(key)
        self._cache[key] = (user_id, weights)
        self._cached_for[user_id] = key
        self._cached_bytes += _size(weights)
        self._evict_over_budget(keep=1)
        self._publish()

    def _evict_over_budget(self, keep: int) -> None:
        """Evicts least recently used adapters while over budget, keeping at least `keep`."""
        while (
            self._cached_bytes + self._reserved_bytes > self._capacity_bytes
            and len(self._cache) > keep
        ):
            self._drop(next(iter(self._cache)))
            self._count("eviction")

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.adapters_resident.labels("host").set(len(self._cache))
            self._metrics.adapter_cache_bytes.labels("host").set(self._cached_bytes)

    def _count(self, event: str) -> None:
        if self._metrics is not None:
            self._metrics.adapter_cache.labels("host", event).inc()

    async def _load(self, row: Adapter) -> AnyAdapter | None:
        """The adapter's weights, or None (logged) when they are missing, corrupt or do not fit
        the served model: the user is then served by the base model, never by broken weights."""
        try:
            data = await self._store.get(row.blob_key)
            # Checksum and header are checked off the inference thread (and the event loop):
            # a damaged or hostile blob delays nobody's transcription.
            file = await asyncio.to_thread(_checked_file, data, row.size_bytes, row.sha256)
            weights = await self._engine.prepare_adapter(file)
            if (weights.base_fingerprint, weights.method) != (row.base_fingerprint, row.method):
                raise AdapterFileError("file and database disagree on the base model or method")
        except (StoreError, AdapterFileError) as exc:
            logger.error(
                "adapter refused; serving the base model",
                extra={"adapter_id": row.id, "user_id": row.user_id, "reason": str(exc)},
            )
            return None
        return weights


def _checked_file(data: bytes, size_bytes: int, sha256: str) -> TensorFile:
    """The stored file as recorded, its header checked (plain Python, no torch)."""
    if len(data) != size_bytes or sha256_hex(data) != sha256:
        raise AdapterFileError("stored weights differ from the recorded checksum")
    return read_any_header(data)


def _size(weights: AnyAdapter) -> int:
    """What a cached adapter takes: its tensors' data and their objects (LoRA factors, or
    SAML experts and routers alike)."""
    data = sum(t.numel() * t.element_size() for t in weights.tensors.values())
    return data + TENSOR_OVERHEAD_BYTES * len(weights.tensors)
