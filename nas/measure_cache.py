"""Persistent measurement cache keyed by (arch hash, target fingerprint): nothing is measured twice."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from nas.targets.base import LatencyStats, fingerprint_hash

_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    arch_hash TEXT NOT NULL,
    fingerprint_hash TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    stats TEXT NOT NULL,
    extra TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (arch_hash, fingerprint_hash)
)
"""


class MeasurementCache:
    """A small SQLite table in ``workdir``; safe to share between processes (SQLite locking)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._connect() as db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, arch_hash: str, fingerprint: dict[str, Any]) -> tuple[LatencyStats, dict[str, Any]] | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT stats, extra FROM measurements WHERE arch_hash=? AND fingerprint_hash=?",
                (arch_hash, fingerprint_hash(fingerprint)),
            ).fetchone()
        if row is None:
            return None
        return LatencyStats.from_dict(json.loads(row[0])), json.loads(row[1])

    def put(self, arch_hash: str, fingerprint: dict[str, Any], stats: LatencyStats,
            extra: dict[str, Any] | None = None) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?)",
                (arch_hash, fingerprint_hash(fingerprint), json.dumps(fingerprint, sort_keys=True),
                 json.dumps(stats.to_dict()), json.dumps(extra or {}), time.time()),
            )

    def rows(self, fingerprint: dict[str, Any]) -> list[tuple[dict[str, Any], LatencyStats]]:
        """(extra, stats) of every measurement on this set-up, oldest first."""
        with self._connect() as db:
            found = db.execute("SELECT extra, stats FROM measurements WHERE fingerprint_hash=? ORDER BY created",
                               (fingerprint_hash(fingerprint),)).fetchall()
        return [(json.loads(e), LatencyStats.from_dict(json.loads(s))) for e, s in found]

    def count(self, fingerprint: dict[str, Any] | None = None) -> int:
        with self._connect() as db:
            if fingerprint is None:
                return db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
            return db.execute("SELECT COUNT(*) FROM measurements WHERE fingerprint_hash=?",
                              (fingerprint_hash(fingerprint),)).fetchone()[0]
