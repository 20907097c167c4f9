"""The one question enrolment asks of expert banks: which bank a SAML adapter starts from."""

from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore
from app.db.repositories.expert_banks import ExpertBankRepository

__all__ = ["NO_ACTIVE_BANK", "active_bank"]

NO_ACTIVE_BANK = (
    "no active expert bank; build one with `pqm experts build` or POST /v1/expert-banks"
)


async def active_bank(
    session: AsyncSession, store: AdapterStore, fingerprint: str
) -> tuple[str, bytes] | None:
    """The id and `pqm-saml/1` file (kind `bank`) of the active expert bank for the base model
    with `fingerprint`; None when there is none."""
    bank = await ExpertBankRepository(session).active_for(fingerprint)
    if bank is None or bank.blob_key is None:
        return None
    return bank.id, await store.bind(session).get(bank.blob_key)
