"""The stores a search keeps in ``workdir``: opened under one lock, checked first, damage named in one line.

Two processes opening a fresh workdir at once would otherwise race MLflow's and Optuna's schema creation (and
a half-made schema breaks every later open), so whatever creates or migrates a schema runs under an exclusive
``flock`` on ``workdir/.nas.lock``. A damaged SQLite file (truncated, overwritten) is found by SQLite's own
``quick_check`` before anything is written, and reported as one line naming the file and what to do.
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nas.errors import StoreError, first_line

STORE_FILES = {"optuna.db": "the Optuna studies", "mlflow.db": "the MLflow runs",
               "measurements.db": "the measurement cache"}


_held: dict[Path, int] = {}  # lock path -> nesting depth in this process (flock is per open file, not per process)


@contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """An exclusive lock on ``workdir`` across processes (held while schemas are created or checked); re-entrant."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = (workdir / ".nas.lock").resolve()
    if _held.get(path):
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        _held[path] = 1
        try:
            yield
        finally:
            _held.pop(path, None)
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_sqlite(path: Path) -> None:
    """Raise ``StoreError`` when ``path`` exists and SQLite finds it damaged; a missing file is fine (created later)."""
    if not path.exists():
        return
    what = STORE_FILES.get(path.name, "a store")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            rows = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
        problem = None if rows == ["ok"] else "; ".join(str(r) for r in rows[:2])
    except sqlite3.DatabaseError as e:
        problem = first_line(e)
    if problem is not None:
        raise StoreError(f"{path} ({what}) is damaged: {problem}; restore it from a backup, or move it aside (or set "
                         "workdir= to another folder) to start afresh")


def check_stores(workdir: Path, names: tuple[str, ...] = tuple(STORE_FILES)) -> None:
    """Check every existing store of ``workdir`` before a command writes to any of them."""
    for name in names:
        check_sqlite(workdir / name)
