"""The stores a search keeps in ``workdir``: opened under one lock, checked first, damage named in one line.

Two processes opening a fresh workdir at once would otherwise race MLflow's and Optuna's schema creation (and
a half-made schema breaks every later open), so whatever creates or migrates a schema runs under an exclusive
``flock`` on ``workdir/.nas.lock``. A damaged SQLite file (truncated, overwritten) is found by SQLite's own
``quick_check`` before anything is written, and reported as one line naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nas.core.errors import StoreError, first_line

STORE_FILES = {"optuna.db": "the Optuna studies", "mlflow.db": "the MLflow runs",
               "measurements.db": "the measurement cache"}


@contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """An exclusive lock on ``workdir`` across processes (held while schemas are created or checked); re-entrant
    (filelock counts nested holds of one lock object, and ``is_singleton`` gives one object per file)."""
    from filelock import FileLock

    workdir.mkdir(parents=True, exist_ok=True)
    with FileLock((workdir / ".nas.lock").resolve(), is_singleton=True):
        yield


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


# -- stores behind URLs ------------------------------------------------------------------------------------------
def study_storage_url(storage: str | None, workdir: Path) -> str:
    """``study.storage``, or the SQLite file in ``workdir`` (the default: one laptop)."""
    return storage or f"sqlite:///{(workdir / 'optuna.db').resolve()}"


def cache_url(storage_url: str, workdir: Path) -> str:
    """The measurement cache lives beside the study: a table in the same server database, or its own SQLite file."""
    return storage_url if not storage_url.startswith("sqlite") else \
        f"sqlite:///{(workdir / 'measurements.db').resolve()}"


def redact(url: str) -> str:
    """``url`` with any password replaced, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def engine_for(url: str) -> Any:
    """A SQLAlchemy engine for ``url`` (SQLite waits up to a minute for another process's write lock)."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        if url.startswith("sqlite"):
            return create_engine(url, connect_args={"timeout": 60})
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError) as e:
        hint = " (pip install '.[postgres]' for postgresql:// URLs)" if "psycopg" in str(e) or \
            isinstance(e, NoSuchModuleError | ImportError) else ""
        raise StoreError(f"study.storage={redact(url)} cannot be used: {first_line(e)}{hint}") from None


def probe(url: str, what: str) -> None:
    """Connect once, so that a wrong URL or a server that is down is one line naming what was tried."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as e:
        raise StoreError(f"cannot reach {what} at {redact(url)}: {first_line(e.orig if hasattr(e, 'orig') else e)}"
                         ) from None
    finally:
        engine.dispose()


@contextmanager
def setup_lock(url: str, workdir: Path) -> Iterator[None]:
    """Held while a worker creates or opens a study, its parent run and its references: a file lock for the
    SQLite default, a PostgreSQL advisory lock (held by one connection) for a shared study."""
    if not url.startswith("postgresql"):
        with workdir_lock(workdir):
            yield
        return
    from sqlalchemy import text

    engine = engine_for(url)
    key = int(hashlib.sha256(b"nas-study-setup").hexdigest()[:15], 16)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()
