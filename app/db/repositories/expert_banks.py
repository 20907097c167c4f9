"""Expert banks, their build jobs (statuses as `JobRepository` changes them) and contributors."""

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.enrolment_status import UNFINISHED
from app.db.models import ExpertBank, ExpertBankContributor, Recording, User
from app.db.repositories.jobs import JobRepository

__all__ = ["ExpertBankRepository"]


class ExpertBankRepository(JobRepository[ExpertBank]):
    def __init__(self, session: AsyncSession) -> None:
        super().__init__(session, ExpertBank)

    async def add(self, bank: ExpertBank, contributors: list[ExpertBankContributor]) -> ExpertBank:
        """Records a new bank (given without a status), its build queued, learning from
        `contributors`."""
        async with self._queueing(bank):
            for contributor in contributors:
                contributor.bank_id = bank.id
            self._session.add_all(contributors)
            await self._session.flush()
        return bank

    async def next_version(self, fingerprint: str) -> int:
        latest = await self._session.scalar(
            select(func.max(ExpertBank.version)).where(ExpertBank.base_fingerprint == fingerprint)
        )
        return int(latest or 0) + 1

    async def list_all(self) -> list[ExpertBank]:
        """Newest first."""
        result = await self._session.execute(
            select(ExpertBank).order_by(ExpertBank.created_at.desc(), ExpertBank.id)
        )
        return list(result.scalars())

    async def contributors(self, bank_id: str) -> list[ExpertBankContributor]:
        result = await self._session.execute(
            select(ExpertBankContributor)
            .where(ExpertBankContributor.bank_id == bank_id)
            .order_by(ExpertBankContributor.id)
        )
        return list(result.scalars())

    async def contributed_recordings(self, bank: ExpertBank) -> dict[str, list[Recording]]:
        """User id -> the recordings the build learns from, for each contributor who has not
        withdrawn: the oldest `recordings` of theirs among those stored when the build was asked
        for (fewer when they deleted some since, perhaps none)."""
        contributed: dict[str, list[Recording]] = {}
        for contributor in await self.contributors(bank.id):
            if contributor.withdrawn or contributor.user_id is None:
                continue
            result = await self._session.execute(
                select(Recording)
                .where(
                    Recording.user_id == contributor.user_id,
                    Recording.created_at <= bank.created_at,
                )
                .order_by(Recording.created_at, Recording.id)
                .limit(contributor.recordings)
            )
            contributed[contributor.user_id] = list(result.scalars())
        return contributed

    async def willing_speakers(self) -> dict[str, int]:
        """User id -> how many recordings they have stored, for every user who lets banks learn
        from their recordings and has some."""
        result = await self._session.execute(
            select(User.id, func.count(Recording.id))
            .join(Recording, Recording.user_id == User.id)
            .where(User.contribute_recordings.is_(True))
            .group_by(User.id)
            .order_by(User.id)
        )
        return {user_id: int(count) for user_id, count in result.all()}

    async def active_for(self, fingerprint: str) -> ExpertBank | None:
        return await self._session.scalar(
            select(ExpertBank).where(
                ExpertBank.base_fingerprint == fingerprint, ExpertBank.active.is_(True)
            )
        )

    async def activate(self, bank: ExpertBank) -> None:
        """Makes `bank` the only active bank for its base model."""
        await self._session.execute(
            update(ExpertBank)
            .where(ExpertBank.base_fingerprint == bank.base_fingerprint, ExpertBank.id != bank.id)
            .values(active=False)
            .execution_options(synchronize_session="fetch")
        )
        await self._session.flush()  # the old one off before the new one on: a unique index
        bank.active = True
        await self._session.flush()

    async def delete(self, bank_id: str) -> bool:
        result = await self._session.execute(delete(ExpertBank).where(ExpertBank.id == bank_id))
        return bool(getattr(result, "rowcount", 0))

    async def withdraw(self, user_id: str) -> list[ExpertBank]:
        """Marks every bank that learned (or is learning) from the user as including a withdrawn
        contributor, deactivated; returns those whose build has not finished, for the caller to
        cancel."""
        await self._session.execute(
            update(ExpertBankContributor)
            .where(ExpertBankContributor.user_id == user_id)
            .values(withdrawn=True)
            .execution_options(synchronize_session="fetch")
        )
        learned = select(ExpertBankContributor.bank_id).where(
            ExpertBankContributor.user_id == user_id
        )
        await self._session.execute(
            update(ExpertBank)
            .where(ExpertBank.id.in_(learned))
            .values(includes_withdrawn=True, active=False)
            .execution_options(synchronize_session="fetch")
        )
        result = await self._session.execute(
            select(ExpertBank).where(ExpertBank.id.in_(learned), ExpertBank.status.in_(UNFINISHED))
        )
        return list(result.scalars())
