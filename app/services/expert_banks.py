"""Use cases for expert banks: asking for a build, listing, activating, deleting, storing a
built bank, and withdrawing a contributor."""

import contextlib
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore
from adapters_store.base import sha256_hex
from app.db.enrolment_status import EnrolmentStatus
from app.db.models import ExpertBank, ExpertBankContributor
from app.db.repositories.expert_banks import ExpertBankRepository
from app.engine.adaptation.saml.file import dump_saml
from app.engine.adaptation.saml.weights import SamlWeights
from app.engine.training.bank import BankConfig
from app.engine.training.errors import TrainingFailed
from app.engine.training.trainer import TrainingResult
from app.errors import BadRequestError, ConflictError, NotFoundError
from app.services.adapter_storage import write_verified
from app.services.auth import Principal
from app.services.blob_keys import bank_key

__all__ = [
    "BankBuild",
    "BankView",
    "activate_bank",
    "built_bank",
    "delete_bank",
    "get_bank",
    "list_banks",
    "record_bank",
    "request_build",
    "requested_build",
    "store_bank_file",
    "withdraw_contributor",
]

MIN_SPEAKERS = 2


@dataclass(frozen=True, slots=True)
class BankBuild:
    """What a build asks for; None: the builder's defaults (`BankConfig`)."""

    experts: int | None = None
    epochs: int | None = None
    expert_epochs: int | None = None
    seed: int = 0

    def config(self, threads: int) -> BankConfig:
        default = BankConfig()
        return BankConfig(
            experts=self.experts or default.experts,
            router=default.router,
            expert_epochs=self.expert_epochs or default.expert_epochs,
            epochs=self.epochs or default.epochs,
            seed=self.seed,
            threads=threads,
        )


@dataclass(frozen=True, slots=True)
class BankView:
    bank: ExpertBank
    contributors: int
    withdrawn_contributors: int


async def request_build(
    session: AsyncSession, principal: Principal, fingerprint: str, build: BankBuild
) -> BankView:
    """Queues a build for the worker, learning from the stored recordings of every user who
    lets banks learn from theirs (at least `MIN_SPEAKERS` of them)."""
    principal.require_admin()
    willing = await ExpertBankRepository(session).willing_speakers()
    if len(willing) < MIN_SPEAKERS:
        raise BadRequestError(
            f"An expert bank needs stored recordings of at least {MIN_SPEAKERS} users who "
            f"contribute recordings (contribute_recordings=true); {len(willing)} do."
        )
    contributors = [
        ExpertBankContributor(user_id=user_id, recordings=count, withdrawn=False)
        for user_id, count in willing.items()
    ]
    bank = await record_bank(session, fingerprint, build, contributors)
    return BankView(bank, len(contributors), 0)


async def record_bank(
    session: AsyncSession,
    fingerprint: str,
    build: BankBuild,
    contributors: list[ExpertBankContributor],
) -> ExpertBank:
    """A new bank's row, its build queued (the CLI builds it at once and claims it)."""
    repository = ExpertBankRepository(session)
    config = build.config(threads=1)
    bank = ExpertBank(
        base_fingerprint=fingerprint,
        version=await repository.next_version(fingerprint),
        experts=config.experts,
        router=config.router,
        params={
            "epochs": config.epochs,
            "expert_epochs": config.expert_epochs,
            "seed": config.seed,
        },
        progress=0.0,
        cancel_requested=False,
        attempts=0,
        active=False,
        includes_withdrawn=False,
    )
    return await repository.add(bank, contributors)


def requested_build(bank: ExpertBank) -> BankBuild:
    """What the bank's build was asked for, as `record_bank` recorded it."""
    params = bank.params
    return BankBuild(
        experts=bank.experts,
        epochs=params.get("epochs"),
        expert_epochs=params.get("expert_epochs"),
        seed=int(params.get("seed") or 0),
    )


async def list_banks(session: AsyncSession, principal: Principal) -> list[BankView]:
    principal.require_admin()
    repository = ExpertBankRepository(session)
    return [await _view(repository, bank) for bank in await repository.list_all()]


async def get_bank(session: AsyncSession, principal: Principal, bank_id: str) -> BankView:
    principal.require_admin()
    repository = ExpertBankRepository(session)
    return await _view(repository, await _existing(repository, bank_id))


async def activate_bank(
    session: AsyncSession, principal: Principal, bank_id: str, fingerprint: str
) -> BankView:
    """Makes the bank the one new SAML adapters start from, for the served base model
    (`fingerprint`); the bank active before stays stored."""
    principal.require_admin()
    repository = ExpertBankRepository(session)
    bank = await _existing(repository, bank_id)
    if bank.status != EnrolmentStatus.SUCCEEDED:
        raise ConflictError(f"The bank's build is {bank.status}; only a built bank can serve.")
    if bank.base_fingerprint != fingerprint:
        raise ConflictError("The bank was built for another base model than the one served.")
    if bank.includes_withdrawn:
        raise ConflictError(
            "The bank learned from a contributor who withdrew; it is never activated again."
        )
    await repository.activate(bank)
    return await _view(repository, bank)


async def delete_bank(
    session: AsyncSession, store: AdapterStore, principal: Principal, bank_id: str
) -> None:
    """Deletes the bank's row and file. SAML adapters hold copies of what they started from,
    so nothing served changes; a build still running notices at its next heartbeat and
    stops."""
    principal.require_admin()
    repository = ExpertBankRepository(session)
    bank = await _existing(repository, bank_id)
    key = bank.blob_key
    await repository.delete(bank.id)
    if key is not None:
        await store.bind(session).delete(key)


def built_bank(result: TrainingResult) -> SamlWeights:
    """The bank a bank-building child process returned."""
    bank = result.adapter
    if not isinstance(bank, SamlWeights) or bank.kind != "bank":
        raise TrainingFailed("the bank-building process returned no expert bank")
    return bank


async def store_bank_file(
    session: AsyncSession, store: AdapterStore, bank: ExpertBank, weights: SamlWeights
) -> None:
    """Writes the built bank's file (verified, as adapters are) and records it on `bank`, in the
    session's transaction; the file is deleted again when any of it fails."""
    data = dump_saml(weights)
    bound = store.bind(session)
    key = bank_key(bank.id)
    try:
        await write_verified(bound, key, data)
    except Exception:
        with contextlib.suppress(Exception):
            await bound.delete(key)
        raise
    bank.blob_key, bank.sha256, bank.size_bytes = key, sha256_hex(data), len(data)
    bank.experts, bank.router = weights.experts, weights.router


async def withdraw_contributor(session: AsyncSession, user_id: str) -> None:
    """The user's voice stops shaping new adapters at once: every bank that learned from them is
    deactivated and never activated again, and builds not finished yet are cancelled. Adapters
    already trained from such a bank keep serving: they are copies, and their speakers' own."""
    repository = ExpertBankRepository(session)
    for bank in await repository.withdraw(user_id):
        while not EnrolmentStatus(bank.status).finished and not bank.cancel_requested:
            await repository.cancel(bank)


async def _existing(repository: ExpertBankRepository, bank_id: str) -> ExpertBank:
    bank = await repository.get(bank_id)
    if bank is None:
        raise NotFoundError(f"No expert bank with id {bank_id!r}.", param="bank_id")
    return bank


async def _view(repository: ExpertBankRepository, bank: ExpertBank) -> BankView:
    contributors = await repository.contributors(bank.id)
    withdrawn = sum(1 for contributor in contributors if contributor.withdrawn)
    return BankView(bank, len(contributors), withdrawn)
