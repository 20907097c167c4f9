"""`pqm experts build`: an expert bank from a manifest of speakers' recordings (a data set read
in place, not users of the service), built at once and stored like the worker's banks."""

import asyncio
import csv
import time
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import Settings
from app.db.enrolment_status import EnrolmentStatus
from app.db.migrate import upgrade_to_head
from app.db.repositories.expert_banks import ExpertBankRepository
from app.db.session import create_engine, create_sessionmaker, transaction
from app.engine.adaptation.saml.weights import SamlWeights
from app.engine.audio import decode_audio
from app.engine.training.bank import PoolSpeaker
from app.engine.training.data import Utterance
from app.engine.training.process import BankRequest, run_in_subprocess
from app.services.expert_banks import BankBuild, built_bank, record_bank, store_bank_file
from app.services.model_loading import resolve_model_dir
from app.services.stores import adapter_store_for

__all__ = ["ManifestBank", "ManifestError", "build_from_manifest", "read_manifest"]

MANIFEST_COLUMNS = ("path", "speaker", "text")
CLI_WORKER = "pqm-experts-build"


class ManifestError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ManifestBank:
    bank_id: str
    speakers: int
    utterances: int
    seconds: float
    activated: bool


def read_manifest(
    manifest: Path, *, only: Collection[str] | None = None, exclude: Collection[str] = ()
) -> list[PoolSpeaker]:
    """The manifest's speakers (a TSV with a header: `path` relative to the manifest, `speaker`,
    `text`), their audio decoded; `only` / `exclude` choose speakers by name."""
    by_speaker: dict[str, list[Utterance]] = defaultdict(list)
    with manifest.open(newline="", encoding="utf-8") as file:
        rows = csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = set(MANIFEST_COLUMNS) - set(rows.fieldnames or ())
        if missing:
            raise ManifestError(f"{manifest}: no column {', '.join(sorted(missing))}")
        for row in rows:
            speaker = row["speaker"]
            if (only is not None and speaker not in only) or speaker in exclude:
                continue
            audio = decode_audio(manifest.parent / row["path"])
            by_speaker[speaker].append(Utterance(audio=audio, text=row["text"]))
    return [PoolSpeaker(name, utterances) for name, utterances in sorted(by_speaker.items())]


def build_from_manifest(
    settings: Settings, speakers: list[PoolSpeaker], build: BankBuild, *, activate: bool
) -> ManifestBank:
    """Builds the bank in a child process, then records it in the service's database and
    store (as `pqm serve` configures them), activated if asked."""
    started = time.monotonic()
    request = BankRequest(
        model_dir=resolve_model_dir(settings),
        speakers=speakers,
        config=build.config(threads=settings.enrolment.training_threads),
        precision=settings.model.precision,
        device=settings.model.device,
        priority=settings.enrolment.training_priority,
    )
    result = run_in_subprocess(request)
    bank = built_bank(result)
    bank_id = asyncio.run(_record(settings, build, result.metrics, bank, activate))
    return ManifestBank(
        bank_id=bank_id,
        speakers=len(speakers),
        utterances=sum(len(s.utterances) for s in speakers),
        seconds=time.monotonic() - started,
        activated=activate,
    )


async def _record(
    settings: Settings,
    build: BankBuild,
    metrics: dict[str, Any],
    weights: SamlWeights,
    activate: bool,
) -> str:
    database_url = settings.resolved_database_url
    await asyncio.to_thread(upgrade_to_head, database_url)
    engine = create_engine(database_url)
    try:
        sessions = create_sessionmaker(engine)
        store = adapter_store_for(settings, sessions)
        async with transaction(sessions) as session:
            bank = await record_bank(session, weights.base_fingerprint, build, [])
            repository = ExpertBankRepository(session)
            if await repository.claim(bank.id, CLI_WORKER) is None:
                raise RuntimeError("the new bank could not be claimed")
            await store_bank_file(session, store, bank, weights)
            bank.metrics = {**metrics, "source": "manifest"}
            await repository.finish(bank, EnrolmentStatus.SUCCEEDED)
            if activate:
                await repository.activate(bank)
            return bank.id
    finally:
        await engine.dispose()
