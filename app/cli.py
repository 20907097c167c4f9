"""`pqm serve | worker | admin-key | model import | experts build` — the service's command
line."""

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from app.config import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

OFFLINE_ENVIRONMENT = {
    # Nothing is downloaded at run time. bitsandbytes, on CPUs with AVX512-BF16, otherwise asks
    # the Hugging Face kernel hub for a CPU kernel whenever it is imported: a network call, and
    # on a connected machine code fetched and run. Its own CPU kernels serve instead.
    "HF_HUB_OFFLINE": "1",
    # transformers' "Loading weights" bar would break the one-JSON-object-per-line stderr.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
KERNEL_HUB_LOGGERS = ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub")
KERNEL_HUB_NOTICES = (
    "Failed to load CPU gemm_4bit_forward from kernels-community",
    "Skipping publisher trust check for 'kernels-community/",
)


class _DropKernelHubNotices(logging.Filter):
    """Drops the warnings about the kernel hub being off: it is off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(KERNEL_HUB_NOTICES)


def _drop_kernel_hub_notices() -> None:
    notices = _DropKernelHubNotices()
    for name in KERNEL_HUB_LOGGERS:
        logging.getLogger(name).addFilter(notices)


# On import, not in `main`: the training process, started with multiprocessing's "spawn",
# imports the `pqm` script, hence this module, before it imports bitsandbytes.
_drop_kernel_hub_notices()


def _run_offline() -> None:
    """Called before torch, transformers or bitsandbytes are imported (they read it once); the
    processes the service starts inherit it."""
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def _serve(args: argparse.Namespace) -> int:
    _run_offline()
    _private_files()
    import uvicorn

    from app.logging import configure_logging
    from app.main import create_app

    settings = Settings()
    if not _model_path_usable(settings):
        return 1
    configure_logging(settings.log_level, json_lines=settings.log_json)
    if not _database_reachable(settings):
        return 1
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
    return 0


def _database_reachable(settings: Settings) -> bool:
    """Waits up to `PQM_DATABASE_WAIT_S` for the database; says in one line why not (rather
    than a start-up traceback)."""
    from app.db.wait import DatabaseUnreachable, wait_for_database

    try:
        wait_for_database(settings.resolved_database_url, settings.database_wait_s)
    except DatabaseUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    return True


def _private_files() -> None:
    """Everything the process creates is its user's alone (see `app.private_files`)."""
    from app.private_files import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)


def _model_path_usable(settings: Settings) -> bool:
    """Says in one line what is wrong with `PQM_MODEL__PATH` (rather than a start-up traceback)."""
    from app.engine.errors import ModelLoadError
    from app.services.model_loading import check_model_path

    try:
        check_model_path(settings)
    except ModelLoadError as exc:
        print(f"error: PQM_MODEL__PATH: {exc}", file=sys.stderr)
        return False
    return True


def _import_model(args: argparse.Namespace) -> int:
    _run_offline()
    from app.engine.errors import ModelImportError
    from app.engine.model_import import import_bundled_model

    settings = Settings()
    try:
        path = import_bundled_model(args.bundled, settings.models_dir, force=args.force)
    except ModelImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _worker(_: argparse.Namespace) -> int:
    _run_offline()
    _private_files()
    import asyncio

    from app.logging import configure_logging
    from app.worker import run_worker

    settings = Settings()
    if not _model_path_usable(settings):
        return 1
    configure_logging(settings.log_level, json_lines=settings.log_json)
    if not _database_reachable(settings):
        return 1
    asyncio.run(run_worker(settings))
    return 0


def _retrain_adapters(_: argparse.Namespace) -> int:
    _run_offline()
    _private_files()
    import asyncio

    from app.services.model_change import retrain_served_model

    settings = Settings()
    if not _model_path_usable(settings):
        return 1
    outcome = asyncio.run(retrain_served_model(settings))
    print(f"queued {len(outcome.queued)} retraining job(s), skipped {len(outcome.skipped)}")
    for user_id, job_id in outcome.queued.items():
        print(f"  {user_id}: job {job_id}")
    for user_id, reason in outcome.skipped.items():
        print(f"  {user_id}: skipped: {reason}")
    return 0


def _admin_key(_: argparse.Namespace) -> int:
    settings = Settings()
    if settings.admin_key is not None:
        print(settings.admin_key.get_secret_value())
        return 0
    key_file = settings.admin_key_file
    if not key_file.is_file():
        print(
            f"error: no admin key yet: `pqm serve` generates one on its first start and stores "
            f"it in {key_file} (or set PQM_ADMIN_KEY)",
            file=sys.stderr,
        )
        return 1
    print(key_file.read_text().strip())
    return 0


def _build_experts(args: argparse.Namespace) -> int:
    _run_offline()
    _private_files()
    from app.services.expert_banks import BankBuild
    from app.services.manifest_banks import ManifestError, build_from_manifest, read_manifest

    settings = Settings()
    if not _model_path_usable(settings):
        return 1
    try:
        speakers = read_manifest(
            args.manifest,
            only=_names(args.speakers) if args.speakers else None,
            exclude=_names(args.exclude_speakers) if args.exclude_speakers else (),
        )
    except (ManifestError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    build = BankBuild(experts=args.experts, epochs=args.epochs, expert_epochs=args.expert_epochs)
    built = build_from_manifest(settings, speakers, build, activate=args.activate)
    print(f"bank {built.bank_id}{' (active)' if built.activated else ''}")
    print(f"speakers {built.speakers}, utterances {built.utterances}, {built.seconds:.1f} s")
    return 0


def _names(path: Path) -> set[str]:
    """Speaker names, one a line."""
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _add_experts_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    experts = commands.add_parser("experts", help="manage SAML expert banks")
    experts_commands = experts.add_subparsers(dest="experts_command", required=True)
    build = experts_commands.add_parser(
        "build",
        help="build an expert bank from a manifest of speakers' recordings and store it in the "
        "service's database and store",
    )
    build.add_argument(
        "--manifest",
        type=Path,
        required=True,
        help="TSV with a header: path (relative to the manifest), speaker, text",
    )
    chosen = build.add_mutually_exclusive_group()
    chosen.add_argument("--speakers", type=Path, help="file of the speakers to use, one a line")
    chosen.add_argument(
        "--exclude-speakers", type=Path, help="file of speakers to leave out, one a line"
    )
    build.add_argument("--experts", type=int, default=10, help="(default: %(default)s)")
    build.add_argument("--epochs", type=int, help="epochs of the mixture over every speaker")
    build.add_argument("--expert-epochs", type=int, help="epochs of each expert on its speaker")
    build.add_argument("--activate", action="store_true", help="activate the new bank")
    build.set_defaults(handler=_build_experts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pqm",
        description="PQM Server. Settings come from PQM_* environment variables (see README).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP API",
        description="Run the HTTP API (and, unless PQM_ENROLMENT__WORKER=false, the job worker).",
    )
    serve.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default: %(default)s, this machine only; "
        "0.0.0.0 for every interface)",
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="TCP port (default: %(default)s)"
    )
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser(
        "worker",
        help="run the job worker on its own, against the same database (PostgreSQL: a "
        "procrastinate worker; SQLite: the API's in-process loop, on the same machine)",
    )
    worker.set_defaults(handler=_worker)

    admin_key = commands.add_parser(
        "admin-key",
        help="print the admin key: PQM_ADMIN_KEY, else the one stored in the data directory",
    )
    admin_key.set_defaults(handler=_admin_key)

    model = commands.add_parser("model", help="manage the base model")
    model_commands = model.add_subparsers(dest="model_command", required=True)
    model_import = model_commands.add_parser(
        "import", help="convert a bundled Whisper into the data directory (done on first start)"
    )
    model_import.add_argument(
        "--bundled",
        choices=["tiny.en", "base"],
        default="tiny.en",
        help="which bundled model (default: %(default)s)",
    )
    model_import.add_argument("--force", action="store_true", help="convert again")
    model_import.set_defaults(handler=_import_model)

    adapters = commands.add_parser("adapters", help="manage users' adapters")
    adapters_commands = adapters.add_subparsers(dest="adapters_command", required=True)
    retrain = adapters_commands.add_parser(
        "retrain",
        help="after changing the served model: queue a retraining, from their stored "
        "recordings, for every user whose active adapter was trained for another model",
    )
    retrain.set_defaults(handler=_retrain_adapters)
    _add_experts_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
