"""`pqm experts build`: a bank from a manifest of espeak-ng clips (two voices as two speakers,
a third left out), built tiny (2 experts, 1 epoch of each stage), stored in the configured
database and store, and activated."""

import asyncio
from pathlib import Path

import pytest
import soundfile as sf

from app.cli import main
from app.config import Settings
from app.db.enrolment_status import EnrolmentStatus
from app.db.repositories.expert_banks import ExpertBankRepository
from app.db.session import create_engine, create_sessionmaker
from app.engine.adaptation.saml.file import load_saml
from app.services.stores import adapter_store_for
from tests.support.audio import speech_16k

VOICES = {"alice": "en-us", "bob": "en-gb", "carol": "en-us"}
TEXTS = ("the cat sat on the mat", "seven green apples")


def _manifest(root: Path) -> Path:
    rows = ["path\tspeaker\ttext"]
    for speaker, voice in VOICES.items():
        for number, text in enumerate(TEXTS):
            relative = f"audio/{speaker}/{number}.flac"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / relative, speech_16k(text, voice=voice), 16000, format="FLAC")
            rows.append(f"{relative}\t{speaker}\t{text.upper()}")
    manifest = root / "manifest.tsv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


async def _stored_banks(settings: Settings) -> list[tuple[str, bool, int, str | None]]:
    engine = create_engine(settings.resolved_database_url)
    try:
        sessions = create_sessionmaker(engine)
        store = adapter_store_for(settings, sessions)
        async with sessions() as session:
            banks = await ExpertBankRepository(session).list_all()
            for bank in banks:
                assert bank.blob_key is not None
                weights = load_saml(await store.bind(session).get(bank.blob_key))
                assert (weights.kind, weights.experts) == ("bank", bank.experts)
            return [(b.id, b.active, b.experts, b.status) for b in banks]
    finally:
        await engine.dispose()


def test_experts_build_stores_and_activates_a_bank(
    tmp_path: Path,
    tiny_en_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PQM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PQM_MODEL__PATH", str(tiny_en_dir))
    manifest = _manifest(tmp_path / "set")
    excluded = tmp_path / "exclude.txt"
    excluded.write_text("carol\n")

    argv = ["experts", "build", "--manifest", str(manifest), "--exclude-speakers", str(excluded)]
    tiny = ["--experts", "2", "--epochs", "1", "--expert-epochs", "1", "--activate"]
    assert main([*argv, *tiny]) == 0

    out = capsys.readouterr().out
    assert "speakers 2, utterances 4" in out
    bank_id = out.split()[1]
    assert asyncio.run(_stored_banks(Settings())) == [(bank_id, True, 2, EnrolmentStatus.SUCCEEDED)]


def test_experts_build_refuses_a_manifest_without_its_columns(
    tmp_path: Path,
    tiny_en_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PQM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PQM_MODEL__PATH", str(tiny_en_dir))
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("file\tspeaker\n")
    assert main(["experts", "build", "--manifest", str(manifest)]) == 1
    assert "no column path, text" in capsys.readouterr().err
