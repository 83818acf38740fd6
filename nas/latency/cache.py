"""Persistent measurement cache keyed by (arch hash, target fingerprint): nothing is measured twice.

It lives beside the study: its own SQLite file in ``workdir`` by default, a table in the same PostgreSQL database
when the study is shared, so one worker's measurement is never repeated by another on the same set-up.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Float, MetaData, String, Table, Text, select

from nas.core.stores import engine_for
from nas.latency.targets.base import LatencyStats, fingerprint_hash

_META = MetaData()
_TABLE = Table(
    "measurements", _META,
    Column("arch_hash", String(64), primary_key=True),
    Column("fingerprint_hash", String(64), primary_key=True),
    Column("fingerprint", Text, nullable=False),
    Column("stats", Text, nullable=False),
    Column("extra", Text, nullable=False),
    Column("created", Float, nullable=False),
)


class MeasurementCache:
    """One table; safe to share between processes and machines (the database's own locking)."""

    def __init__(self, where: Path | str) -> None:
        """``where``: a SQLite file path, or a database URL."""
        if isinstance(where, Path):
            where.parent.mkdir(parents=True, exist_ok=True)
            where = f"sqlite:///{where.resolve()}"
        self.url = where
        self.engine = engine_for(where)
        _META.create_all(self.engine, checkfirst=True)

    def get(self, arch_hash: str, fingerprint: dict[str, Any]) -> tuple[LatencyStats, dict[str, Any]] | None:
        with self.engine.connect() as db:
            row = db.execute(select(_TABLE.c.stats, _TABLE.c.extra).where(
                _TABLE.c.arch_hash == arch_hash, _TABLE.c.fingerprint_hash == fingerprint_hash(fingerprint))).first()
        if row is None:
            return None
        return LatencyStats.from_dict(json.loads(row[0])), json.loads(row[1])

    def put(self, arch_hash: str, fingerprint: dict[str, Any], stats: LatencyStats,
            extra: dict[str, Any] | None = None) -> None:
        values = dict(arch_hash=arch_hash, fingerprint_hash=fingerprint_hash(fingerprint),
                      fingerprint=json.dumps(fingerprint, sort_keys=True), stats=json.dumps(stats.to_dict()),
                      extra=json.dumps(extra or {}), created=time.time())
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(_TABLE).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=["arch_hash", "fingerprint_hash"],
                                          set_={k: stmt.excluded[k] for k in ("stats", "extra", "created")})
        with self.engine.begin() as db:
            db.execute(stmt)

    def rows(self, fingerprint: dict[str, Any]) -> list[tuple[dict[str, Any], LatencyStats]]:
        """(extra, stats) of every measurement on this set-up, oldest first."""
        with self.engine.connect() as db:
            found = db.execute(select(_TABLE.c.extra, _TABLE.c.stats).where(
                _TABLE.c.fingerprint_hash == fingerprint_hash(fingerprint)).order_by(_TABLE.c.created)).all()
        return [(json.loads(e), LatencyStats.from_dict(json.loads(s))) for e, s in found]
