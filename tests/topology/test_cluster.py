"""The deployed topology as real processes on loopback: its own PostgreSQL, two `pqm serve`
replicas, two `pqm worker`s and nginx with the compose file's config (tests/support/cluster.py).

Timings are reported (run with `-s` to see them), never asserted: behaviour is."""

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from app.db.enrolment_status import EnrolmentStatus
from tests.support.audio import speech_16k, to_bytes
from tests.support.cluster import ADMIN_KEY, Cluster, Process, Replica, postgres_bin
from tests.support.load import Load
from tests.support.waiting import until

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# A German voice reading English: tiny.en gets it wrong, so an adapter has work to do.
VOICE = {"voice": "de", "speed": 150}
SENTENCES = (
    "Please open the window in the kitchen.",
    "The weather will be warm and sunny tomorrow.",
    "My brother works at the hospital downtown.",
    "We need more milk, bread and butter.",
)
JOB_WITHIN_S = 600.0
ORPHAN_EPOCHS = 8
ORPHAN_GONE_WITHIN_S = 20.0


def _missing_programs() -> str | None:
    try:
        postgres_bin("initdb")
    except FileNotFoundError as exc:
        return str(exc)
    return None if shutil.which("nginx") else "nginx is not installed"


@dataclass(frozen=True)
class Speaker:
    id: str
    key: str
    adapter_id: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def report(**timings: float | int) -> None:
    print("topology:", ", ".join(f"{name}={value:.2f}" for name, value in timings.items()))


@pytest.fixture(scope="module")
async def cluster(
    tiny_en_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    missing = _missing_programs()
    if missing is not None:
        pytest.skip(missing)
    started = time.monotonic()
    async with Cluster(tiny_en_dir, tmp_path_factory.mktemp("cluster")) as running:
        report(all_ready_s=time.monotonic() - started)
        yield running


@pytest.fixture(scope="module")
def clip() -> bytes:
    return to_bytes(speech_16k("Turn left after the old church.", **VOICE), 16_000)


@pytest.fixture(scope="module")
def recordings() -> list[tuple[bytes, str]]:
    return [(to_bytes(speech_16k(text, **VOICE), 16_000), text) for text in SENTENCES]


async def create_speaker(url: str, name: str) -> Speaker:
    async with httpx.AsyncClient(timeout=60) as http:
        created = await http.post(f"{url}/v1/users", json={"name": name}, headers=ADMIN)
    assert created.status_code == 201, created.text
    return Speaker(created.json()["id"], created.json()["api_key"])


async def enrol(
    url: str, speaker: Speaker, recordings: list[tuple[bytes, str]], epochs: int = 1
) -> str:
    """Queues an enrolment (1 epoch: the topology is under test, not the training)."""
    files = [("files", (f"r{i}.wav", wav)) for i, (wav, _) in enumerate(recordings)]
    data = {"transcripts": [text for _, text in recordings], "epochs": str(epochs)}
    headers = {**speaker.headers, "Idempotency-Key": uuid.uuid4().hex}
    async with httpx.AsyncClient(timeout=120) as http:
        response = await http.post(
            f"{url}/v1/users/{speaker.id}/enrolments", files=files, data=data, headers=headers
        )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def job(url: str, job_id: str) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.get(f"{url}/v1/enrolments/{job_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def finished_job(url: str, job_id: str) -> dict[str, object]:
    """Polls until the job ends; a job left `running` fails the test at the deadline."""
    seen: dict[str, object] = {}

    async def finished() -> bool:
        seen.update(await job(url, job_id))
        return EnrolmentStatus(str(seen["status"])).finished

    await until(finished, JOB_WITHIN_S, f"job {job_id} finished")
    return seen


async def running_on(cluster: Cluster, job_id: str) -> Process:
    """Waits for a worker to run the job; that worker."""
    found: list[Process] = []

    async def running() -> bool:
        worker = await asyncio.to_thread(cluster.worker_running, job_id)
        found[:] = [worker] if worker else []
        return bool(found)

    await until(running, JOB_WITHIN_S, f"job {job_id} running")
    return found[0]


@pytest.fixture(scope="module")
async def alice(cluster: Cluster, recordings: list[tuple[bytes, str]]) -> Speaker:
    """Enrolled through replica 0 directly, trained on a worker, her adapter active."""
    speaker = await create_speaker(cluster.url, "alice")
    job_id = await enrol(cluster.replicas[0].url, speaker, recordings)
    assert await running_on(cluster, job_id) in cluster.workers
    done = await finished_job(cluster.url, job_id)
    assert done["status"] == EnrolmentStatus.SUCCEEDED, done
    adapter_id = str(done["adapter_id"])
    if not done["activated"]:  # the gate may keep a one-epoch adapter back; serving is tested
        async with httpx.AsyncClient(timeout=60) as http:
            path = f"/v1/users/{speaker.id}/adapters/{adapter_id}/activate"
            activated = await http.post(f"{cluster.url}{path}", headers=speaker.headers)
        assert activated.status_code == 200, activated.text
    return Speaker(speaker.id, speaker.key, adapter_id)


async def serving_replica(cluster: Cluster, headers: dict[str, str]) -> Replica:
    request_id = f"probe-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.get(
            f"{cluster.url}/v1/me", headers={**headers, "X-Request-Id": request_id}
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id
    return cluster.serving_replica(request_id)


async def test_started_at_once_everything_answers_through_nginx(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        assert (await http.get(f"{cluster.url}/readyz")).status_code == 200
        assert (await http.get(f"{cluster.url}/v1/models", headers=ADMIN)).status_code == 200
        request_id = f"anonymous-{uuid.uuid4().hex}"
        refused = await http.post(
            f"{cluster.url}/v1/audio/transcriptions",
            content=b"\0" * 2**20,
            headers={"Content-Type": "audio/wav", "X-Request-Id": request_id},
        )
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert cluster.registered_workers() == 2
    # Only the key check reached a replica; the upload never did.
    logged = "\n".join(r.process.log.read_text() for r in cluster.replicas)
    lines = [line for line in logged.splitlines() if request_id in line]
    assert lines
    assert all('"path": "/v1/auth/check"' in line for line in lines), lines


async def test_enrolled_on_one_replica_trained_on_a_worker_served_through_nginx(
    cluster: Cluster, alice: Speaker, clip: bytes
) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        response = await http.post(
            f"{cluster.url}/v1/audio/transcriptions",
            files={"file": ("a.wav", clip)},
            data={"model": "whisper-1"},
            headers=alice.headers,
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-adapter-id"] == alice.adapter_id


async def test_a_user_stays_on_one_replica_however_the_key_is_written(
    cluster: Cluster, alice: Speaker
) -> None:
    spellings = [f"Bearer {alice.key}", f"bearer {alice.key}", f"BEARER   {alice.key}"]
    replicas = {
        (await serving_replica(cluster, {"Authorization": spelling})).port
        for spelling in spellings * 2
    }
    assert len(replicas) == 1
    # And users spread over the replicas.
    seen: set[int] = set()

    async def both_used() -> bool:
        speaker = await create_speaker(cluster.url, f"u{len(seen)}")
        seen.add((await serving_replica(cluster, speaker.headers)).port)
        return len(seen) == len(cluster.replicas)

    await until(both_used, 120, "users on every replica")


async def test_a_replica_killed_under_load_loses_no_transcription(
    cluster: Cluster, alice: Speaker, clip: bytes
) -> None:
    home = await serving_replica(cluster, alice.headers)
    async with Load(cluster.url, alice.key, clip, clients=8) as load:
        started = time.monotonic()
        await until(load.served_since(started), 300, "every client served")
        killed_at = time.monotonic()
        home.process.kill()
        await until(load.served_since(killed_at), 300, "every client served after the kill")
    try:
        failed = [o for o in load.outcomes if not o.ok]
        assert not failed, failed
        assert {o.adapter for o in load.outcomes} == {alice.adapter_id}
        after = [o for o in load.outcomes if o.started > killed_at]
        assert after
        assert {cluster.serving_replica(o.request_id).port for o in after} != {home.port}
        report(
            failover_gap_s=load.all_served_again_after(killed_at),
            requests=len(load.outcomes),
            longest_request_over_the_kill_s=max(
                o.ended - o.started for o in load.outcomes if o.started <= killed_at < o.ended
            ),
        )
    finally:
        await cluster.revive(home)
    # Back on her own replica once it is back.
    assert (await serving_replica(cluster, alice.headers)).port == home.port


async def test_database_stopped_under_load_answers_503_then_recovers(
    cluster: Cluster, alice: Speaker, clip: bytes, recordings: list[tuple[bytes, str]]
) -> None:
    dave = await create_speaker(cluster.url, "dave")
    job_id = await enrol(cluster.url, dave, recordings, epochs=ORPHAN_EPOCHS)
    await running_on(cluster, job_id)  # the outage hits it mid-run
    async with Load(cluster.url, alice.key, clip, clients=8) as load:
        started = time.monotonic()
        await until(load.served_since(started), 300, "every client served")
        stopped_at = time.monotonic()
        await asyncio.to_thread(cluster.postgres.stop)
        await until(lambda: _refused(load, stopped_at), 60, "a 503 while the database is down")
        # The outage itself lasts 10 s; nothing waits on it.
        await asyncio.sleep(max(0.0, stopped_at + 10 - time.monotonic()))
        await asyncio.to_thread(cluster.postgres.start)
        restarted_at = time.monotonic()  # accepting connections again
        await until(load.served_since(restarted_at), 300, "every client served again")
    statuses = [o.status for o in load.outcomes]
    assert set(statuses) <= {200, 503}, statuses
    refused = [o for o in load.outcomes if o.status == 503]
    assert refused
    assert all(o.retry_after for o in refused)
    assert all(o.status == 200 for o in load.outcomes if o.started > restarted_at)
    report(
        refused_503=len(refused),
        answered=len(statuses),
        first_503_after_stop_s=min(o.ended for o in refused) - stopped_at,
        recovered_s=load.all_served_again_after(restarted_at),
    )
    assert all(process.alive for process in cluster.processes)
    # No job lost: the one running through the outage ends, and says how.
    done = await finished_job(cluster.url, job_id)
    print("topology: the job that ran through the outage:", done["status"], done["error"])
    assert done["status"] == EnrolmentStatus.SUCCEEDED, done


async def _refused(load: Load, since: float) -> bool:
    return any(o.status == 503 for o in load.answered_since(since))


async def test_a_worker_killed_while_training_leaves_no_job_running_and_no_orphan(
    cluster: Cluster, recordings: list[tuple[bytes, str]]
) -> None:
    bob = await create_speaker(cluster.url, "bob")
    # Long enough that an orphaned training process would still be training at the deadline.
    job_id = await enrol(cluster.url, bob, recordings, epochs=ORPHAN_EPOCHS)
    worker = await running_on(cluster, job_id)
    trainer = await training_process(cluster.url, worker, job_id)
    killed_at = time.monotonic()
    worker.kill()
    await until(lambda: _gone(trainer), ORPHAN_GONE_WITHIN_S, "training gone with its worker")
    orphan_gone_s = time.monotonic() - killed_at
    done = await finished_job(cluster.url, job_id)
    report(orphan_gone_s=orphan_gone_s, job_finished_s=time.monotonic() - killed_at)
    print("topology: the job after its worker was killed:", done["status"], done["error"])
    if done["status"] == EnrolmentStatus.FAILED:
        assert "worker stopped" in str(done["error"]), done
    else:
        assert done["status"] == EnrolmentStatus.SUCCEEDED, done
    async with httpx.AsyncClient(timeout=60) as http:
        listed = await http.get(f"{cluster.url}/v1/users/{bob.id}/adapters", headers=bob.headers)
        for adapter in listed.json()["data"]:
            path = f"/v1/users/{bob.id}/adapters/{adapter['id']}/weights"
            weights = await http.get(f"{cluster.url}{path}", headers=bob.headers)
            assert weights.status_code == 200, weights.text  # verified against its checksum
    await cluster.revive_worker(worker)


async def test_a_user_deleted_while_their_job_runs_leaves_nothing_behind(
    cluster: Cluster, recordings: list[tuple[bytes, str]]
) -> None:
    carol = await create_speaker(cluster.url, "carol")
    job_id = await enrol(cluster.url, carol, recordings, epochs=ORPHAN_EPOCHS)
    worker = await running_on(cluster, job_id)
    trainer = await training_process(cluster.url, worker, job_id)
    async with httpx.AsyncClient(timeout=60) as http:
        deleted = await http.delete(f"{cluster.url}/v1/users/{carol.id}", headers=ADMIN)
    assert deleted.status_code == 204, deleted.text
    deleted_at = time.monotonic()
    await until(lambda: _gone(trainer), ORPHAN_GONE_WITHIN_S, "training stopped")
    stopped_s = time.monotonic() - deleted_at

    async def queue_job_ended() -> bool:
        status = await asyncio.to_thread(_queue_job_status, cluster, job_id)
        return status not in ("todo", "doing")

    await until(queue_job_ended, 60, "the job's procrastinate job ended")
    report(training_stopped_after_delete_s=stopped_s)
    # procrastinate's name for a job cancelled while it ran.
    assert _queue_job_status(cluster, job_id) == "aborted"
    for table in ("users", "recordings", "adapters", "enrolment_jobs"):
        column = "id" if table == "users" else "user_id"
        count = cluster.fetch_value(f"SELECT count(*) FROM {table} WHERE {column} = %s", carol.id)
        assert count == 0, table
    blobs = cluster.fetch_value(
        "SELECT count(*) FROM adapter_blobs WHERE key LIKE %s", f"users/{carol.id}/%"
    )
    assert blobs == 0
    assert worker.alive


def _queue_job_status(cluster: Cluster, job_id: str) -> str:
    status = cluster.fetch_value(
        "SELECT status FROM procrastinate_jobs WHERE args->>'job_id' = %s ORDER BY id DESC",
        job_id,
    )
    return str(status)


async def training_process(url: str, worker: Process, job_id: str) -> list[psutil.Process]:
    """Waits until the worker's training process trains; that process."""
    trainer: list[psutil.Process] = []

    async def training() -> bool:
        children = psutil.Process(worker.popen.pid).children(recursive=True)
        # multiprocessing's "spawn" children (not its resource tracker).
        trainer[:] = [c for c in children if "--multiprocessing-fork" in c.cmdline()]
        # Progress comes from the training process once it trains (not while it imports).
        return bool(trainer) and float(str((await job(url, job_id))["progress"])) > 0

    await until(training, 120, "the training process training")
    return trainer


async def _gone(processes: list[psutil.Process]) -> bool:
    return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)
