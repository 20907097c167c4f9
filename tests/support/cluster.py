"""The deployed topology as real processes on 127.0.0.1: a PostgreSQL cluster of its own (initdb
in a temporary directory, so stopping it disturbs nothing else), API replicas, job workers and
nginx, run with docker-compose.yml's commands, environment and nginx config file (only addresses,
paths and the database are this machine's). Used by tests/topology and bench/cluster.py."""

import asyncio
import os
import pwd
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

from tests.support.live import free_port
from tests.support.waiting import until

REPOSITORY = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPOSITORY / "docker-compose.yml"
ADMIN_KEY = "cluster-admin-key-0123456789abcdef"
START_WITHIN_S = 300.0
STOP_WITHIN_S = 30.0
WORKER_HEARTBEAT_FRESH_S = 5.0

# What the service processes are given besides compose's environment and their own database
# and directories: small enough for a 2-core machine, quick to notice a worker gone.
SERVICE_ENVIRONMENT = {
    "PQM_ADMIN_KEY": ADMIN_KEY,
    "PQM_LOG_JSON": "true",
    "PQM_MODEL__THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "PQM_ENROLMENT__MIN_UTTERANCES": "4",
    "PQM_ENROLMENT__GATE_FOLDS": "2",
    "PQM_ENROLMENT__POLL_INTERVAL_S": "0.5",
    "PQM_ENROLMENT__HEARTBEAT_INTERVAL_S": "0.5",
    "PQM_ENROLMENT__STALE_AFTER_S": "5",
    "PQM_ENROLMENT__TRAINING_PRIORITY": "normal",
}


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3])
    )
    if not candidates:
        raise FileNotFoundError(f"{name} (PostgreSQL server) is not installed")
    return str(candidates[-1])


def compose_service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"][name]
    return service


def compose_command(name: str, **options: str) -> list[str]:
    """The service's command as compose runs it, from this checkout: `pqm` is the console
    script of `app.cli`; `options` replace the values of its options (`host="..."` for
    `--host`)."""
    command = [str(part) for part in compose_service(name)["command"]]
    assert command[0] == "pqm", command
    for option, value in options.items():
        command[command.index(f"--{option}") + 1] = value
    return [sys.executable, "-m", "app.cli", *command[1:]]


COMPOSE_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def compose_environment(name: str) -> dict[str, str]:
    """The service's environment in compose, each `${NAME:-default}` at its default; values
    compose requires from the operator (`${NAME:?...}`) are left to the caller."""
    environment: dict[str, object] = compose_service(name).get("environment", {})
    resolved = {key: COMPOSE_DEFAULT.sub(r"\2", str(value)) for key, value in environment.items()}
    return {key: value for key, value in resolved.items() if "${" not in value}


def nginx_template() -> Path:
    """The config template compose mounts into the nginx image."""
    for volume in compose_service("nginx")["volumes"]:
        source, target = str(volume).split(":")[:2]
        if target.startswith("/etc/nginx/templates/"):
            return REPOSITORY / source
    raise AssertionError("compose mounts no nginx template")


def render_nginx_config(values: Mapping[str, str]) -> str:
    """The template as the nginx image's entrypoint renders it: envsubst of the named variables
    only (nginx's own `$variables` stay)."""
    return string.Template(nginx_template().read_text()).safe_substitute(values)


@dataclass
class Process:
    """A child process whose stdout and stderr go to `log`."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """`kill -9`: nothing is given a chance to clean up."""
        self.popen.kill()
        self.popen.wait()

    def stop(self) -> None:
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def spawn(
    name: str, command: list[str], logs: Path, env: Mapping[str, str], user: str | None = None
) -> Process:
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=REPOSITORY,
            user=user,
            start_new_session=True,
        )
    return Process(name, popen, log)


class Postgres:
    """A PostgreSQL cluster of its own on a free port, trust authentication, database `pqm`."""

    def __init__(self, logs: Path) -> None:
        # Not under pytest's private temporary tree: the server may have to run as `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="pqm-cluster-pg-"))
        self.port = free_port()
        self.logs = logs
        # initdb refuses to run as root.
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.data = self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/pqm"

    def _run(self, *command: str) -> None:
        subprocess.run(
            command, check=True, user=self.user, cwd=self.root, capture_output=True, timeout=120
        )

    def create(self) -> None:
        self._run(postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust")
        self.start()
        with psycopg.connect(self.url.replace("/pqm", "/postgres"), autocommit=True) as db:
            db.execute("CREATE DATABASE pqm")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = self.root / "postgres.log"
        self._run(
            postgres_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(log),
            "-w",
            "start",
        )

    def stop(self) -> None:
        """Fast shutdown: sessions are ended, as when a database server goes away."""
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        log = self.root / "postgres.log"
        if log.exists():
            shutil.copy(log, self.logs / "postgres.log")
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Replica:
    process: Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Cluster:
    """`async with Cluster(model_dir, workdir) as cluster:` starts every process at once and
    returns once all are ready; leaving the block stops them all."""

    def __init__(
        self, model_dir: Path, workdir: Path, replica_count: int = 2, worker_count: int = 2
    ) -> None:
        self.model_dir = model_dir
        self.workdir = workdir
        self.replica_count = replica_count
        self.worker_count = worker_count
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.postgres = Postgres(self.logs)
        self.replicas: list[Replica] = []
        self.workers: list[Process] = []
        self.nginx: Process | None = None
        self.nginx_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def _service_env(self, service: str, name: str) -> dict[str, str]:
        return {
            **compose_environment(service),
            **SERVICE_ENVIRONMENT,
            "PQM_DATABASE_URL": self.postgres.url,
            "PQM_DATA_DIR": str(self.workdir / name),
            "PQM_MODEL__PATH": str(self.model_dir),
        }

    def _spawn_replica(self, name: str, port: int) -> Replica:
        command = compose_command("api", host="127.0.0.1", port=str(port))
        return Replica(spawn(name, command, self.logs, self._service_env("api", name)), port)

    def _spawn_worker(self, name: str) -> Process:
        command = compose_command("worker")
        return spawn(name, command, self.logs, self._service_env("worker", name))

    def _spawn_nginx(self) -> Process:
        prefix = self.workdir / "nginx"
        ports = [replica.port for replica in self.replicas]
        main_conf = write_nginx_config(prefix, self.nginx_port, ports)
        command = [nginx_bin(), "-p", str(prefix), "-c", str(main_conf), "-g", "daemon off;"]
        return spawn("nginx", command, self.logs, {})

    async def start(self) -> None:
        await asyncio.to_thread(self.postgres.create)
        # Everything at once, as compose starts it once the database is healthy.
        self.replicas = [
            self._spawn_replica(f"replica-{i}", free_port()) for i in range(self.replica_count)
        ]
        self.workers = [self._spawn_worker(f"worker-{i}") for i in range(self.worker_count)]
        self.nginx = self._spawn_nginx()
        await until(self._all_ready, START_WITHIN_S, "every process of the cluster ready")

    async def _all_ready(self) -> bool:
        for process in self.processes:
            assert process.alive, f"{process.name} exited:\n{process.tail()}"
        async with httpx.AsyncClient(timeout=5) as client:
            for url in [*(replica.url for replica in self.replicas), self.url]:
                try:
                    if (await client.get(f"{url}/readyz")).status_code != 200:
                        return False
                except httpx.TransportError:
                    return False
        return await asyncio.to_thread(self.registered_workers) == len(self.workers)

    def registered_workers(self) -> int:
        """procrastinate workers with a recent heartbeat: each live `pqm worker` once it
        listens (a killed one's row stays until another prunes it)."""
        count = self.fetch_value(
            "SELECT count(*) FROM procrastinate_workers WHERE last_heartbeat > now() - %s",
            timedelta(seconds=WORKER_HEARTBEAT_FRESH_S),
        )
        return int(str(count))

    async def revive(self, replica: Replica) -> None:
        """Starts a stopped replica again on its port (nginx knows it by that)."""
        index = self.replicas.index(replica)
        self.replicas[index] = self._spawn_replica(replica.process.name, replica.port)
        await until(self._all_ready, START_WITHIN_S, f"{replica.process.name} ready again")

    async def revive_worker(self, worker: Process) -> None:
        """Starts a stopped worker again, under its name."""
        index = self.workers.index(worker)
        self.workers[index] = self._spawn_worker(worker.name)
        await until(self._all_ready, START_WITHIN_S, f"{worker.name} ready again")

    def fetch_value(self, sql: str, *params: object) -> object:
        """The first column of the first row of a query on the cluster's database, or None."""
        with psycopg.connect(self.postgres.url) as db:
            row = db.execute(sql, params).fetchone()
        return row[0] if row else None

    def worker_running(self, job_id: str) -> Process | None:
        """The worker process that holds the enrolment job now (its id names its pid)."""
        worker_id = self.fetch_value(
            "SELECT worker_id FROM enrolment_jobs WHERE id = %s AND status = 'running'", job_id
        )
        if worker_id is None:
            return None
        pid = int(str(worker_id).split(":")[1])
        return next(worker for worker in self.workers if worker.popen.pid == pid)

    def serving_replica(self, request_id: str) -> Replica:
        """The replica whose access log has the request (nginx passes its id on)."""
        found = [
            r for r in self.replicas if f'"request_id": "{request_id}"' in r.process.log.read_text()
        ]
        assert len(found) == 1, f"request {request_id} served by {len(found)} replicas"
        return found[0]

    @property
    def processes(self) -> list[Process]:
        replicas = [replica.process for replica in self.replicas]
        return [*([self.nginx] if self.nginx else []), *self.workers, *replicas]

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        self.postgres.destroy()

    async def __aenter__(self) -> "Cluster":
        try:
            await self.start()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.to_thread(self.close)


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def write_nginx_config(prefix: Path, port: int, replica_ports: list[int]) -> Path:
    """Compose's nginx template rendered with compose's environment for nginx on 127.0.0.1:`port`
    in front of the replicas on `replica_ports`, inside a main config for `prefix`; its path."""
    prefix.mkdir(parents=True, exist_ok=True)
    environment = compose_environment("nginx")
    # Compose names one server, `api:8000`, which Docker's DNS resolves to every replica.
    servers = " ".join(
        environment["PQM_NGINX_SERVERS"].replace("api:8000", f"127.0.0.1:{replica}")
        for replica in replica_ports
    )
    values = {**environment, "PQM_NGINX_LISTEN": f"127.0.0.1:{port}", "PQM_NGINX_SERVERS": servers}
    pqm_conf = prefix / "pqm.conf"
    pqm_conf.write_text(render_nginx_config(values))
    main_conf = prefix / "nginx.conf"
    main_conf.write_text(_nginx_main_config(prefix, pqm_conf))
    return main_conf


def _nginx_main_config(prefix: Path, pqm_conf: Path) -> str:
    """What the nginx image's own nginx.conf provides around conf.d, for an unprivileged prefix."""
    # As root, nginx would hand its workers to `nobody`, who cannot enter the private temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log /dev/stderr notice;\nevents {{ worker_connections 512; }}\n"
        f"http {{\n{temp}\n    include {pqm_conf};\n}}\n"
    )
