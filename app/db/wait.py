"""Waiting at start for a database server that is not up yet (a service started beside it)."""

import logging
import time

from sqlalchemy import URL, create_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from app.db.session import sync_url

__all__ = ["DatabaseUnreachable", "printable_url", "wait_for_database"]

logger = logging.getLogger(__name__)

FIRST_RETRY_S = 0.5
LONGEST_RETRY_S = 5.0
CONNECT_TIMEOUT_S = 5


class DatabaseUnreachable(Exception):
    """The database did not accept a connection within the bound; the message says why."""


def printable_url(raw_url: str) -> str:
    """The URL as an operator wrote it, without its password."""
    url = sync_url(raw_url)
    query = {name: value for name, value in url.query.items() if name != "password"}
    shown = URL.create(
        url.get_backend_name(), url.username, None, url.host, url.port, url.database, query
    )
    return shown.render_as_string(hide_password=False)


def wait_for_database(raw_url: str, within_s: float) -> None:
    """Returns once the database accepts a connection: at once for SQLite (a file, no server);
    otherwise tries again with growing pauses (0.5 s, doubling, at most 5 s), logging one
    warning per failed attempt, for up to `within_s` seconds. Raises `DatabaseUnreachable`.

    Every failure is retried: libpq reports a refused port, a server still starting, a missing
    database and a wrong password alike (no SQLSTATE), and the first line logged names it."""
    url = sync_url(raw_url)
    if url.get_backend_name() == "sqlite":
        return
    shown = printable_url(raw_url)
    engine = create_engine(
        url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )
    deadline = time.monotonic() + within_s
    pause = FIRST_RETRY_S
    attempt = 0
    try:
        while True:
            attempt += 1
            try:
                engine.connect().close()
            except OperationalError as exc:
                reason = _reason(exc)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseUnreachable(
                        f"database {shown} not reachable after {within_s:g} s "
                        f"({attempt} attempt{'s' if attempt > 1 else ''}): {reason}"
                    ) from None
                pause = min(pause, left)
                logger.warning(
                    f"database {shown} not reachable (attempt {attempt}): {reason}; "
                    f"next attempt in {pause:.1f} s",
                    extra={"database": shown, "attempt": attempt, "retry_in_s": round(pause, 2)},
                )
                time.sleep(pause)
                pause = min(pause * 2, LONGEST_RETRY_S)
                continue
            if attempt > 1:
                logger.info(
                    f"database {shown} reachable (attempt {attempt})",
                    extra={"database": shown, "attempt": attempt},
                )
            return
    finally:
        engine.dispose()


def _reason(exc: OperationalError) -> str:
    """The driver's own first line ("connection failed: ... Connection refused")."""
    lines = str(exc.orig).strip().splitlines()
    return lines[0].strip() if lines else type(exc.orig).__name__
