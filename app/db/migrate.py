"""Runs the Alembic migrations that ship inside the installed package."""

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.db.session import ensure_sqlite_file, sync_url


def alembic_config(raw_url: str) -> Config:
    script_location = Path(str(files("migrations")))
    config = Config()
    config.set_main_option("script_location", str(script_location))
    url = sync_url(raw_url)
    config.attributes["sqlalchemy_url"] = url
    return config


def upgrade_to_head(raw_url: str) -> None:
    ensure_sqlite_file(sync_url(raw_url))
    command.upgrade(alembic_config(raw_url), "head")
