"""The service's files hold voice recordings, key hashes and adapters: only its own user may
read them. New directories are 0700 and files 0600; existing ones left looser by an older
version are tightened."""

import contextlib
import logging
import os
import stat
from pathlib import Path

__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "PRIVATE_UMASK", "private_dir", "private_file"]

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PRIVATE_UMASK = 0o077
"""Set by `pqm serve` and `pqm worker`: whatever else they create (SQLite's WAL, temporary
files, converted models) is private too."""

logger = logging.getLogger(__name__)


def private_dir(path: Path) -> None:
    """Creates `path` (and its parents) if needed; `path` itself ends up 0700."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, PRIVATE_DIR_MODE)


def private_file(path: Path) -> None:
    """Creates `path` empty with mode 0600 unless it exists, else tightens it to 0600. SQLite
    gives its WAL and shared-memory files the mode of the database file."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    for companion in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        if companion.exists():
            _tighten(companion, PRIVATE_FILE_MODE)


def _tighten(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        try:
            os.chmod(path, mode)
        except PermissionError:  # not ours: say so, and go on
            logger.warning("cannot make private", extra={"path": str(path), "mode": oct(current)})
        else:
            logger.info("made private", extra={"path": str(path), "was": oct(current)})
