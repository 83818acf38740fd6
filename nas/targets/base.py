"""What every target gives: a fingerprint of the set-up and latency statistics for a model file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one model on one target, in milliseconds."""

    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    n: int
    split_ms: dict[str, float] | None = None  # pipeline scope: median ms of preprocess, model, postprocess
    source: str = "measured"  # or "predicted": from a latency model, no device ran it (n == 0)

    @property
    def cv(self) -> float:
        """Coefficient of variation: std / mean."""
        return self.std / self.mean if self.mean else 0.0

    @classmethod
    def from_samples(cls, samples_ms: list[float] | np.ndarray) -> LatencyStats:
        s = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p95, p99 = np.percentile(s, [50, 90, 95, 99])
        return cls(float(p50), float(p90), float(p95), float(p99), float(s.mean()), float(s.std()),
                   float(s.min()), int(s.size))

    @classmethod
    def from_rounds(cls, rounds_ms: list[np.ndarray], split_ms: dict[str, float] | None = None) -> LatencyStats:
        """Percentiles as the median over rounds of each round's percentile.

        On a shared machine a burst of foreign load spoils a stretch of consecutive runs; taking the median
        over rounds spaced in time keeps one spoiled round from moving the figure (see
        benchmarks/latency_repeatability.py). Mean, std and min use all samples.
        """
        if len(rounds_ms) == 1:
            return replace(cls.from_samples(rounds_ms[0]), split_ms=split_ms)
        per_round = np.array([np.percentile(np.asarray(r, dtype=np.float64), [50, 90, 95, 99]) for r in rounds_ms])
        p50, p90, p95, p99 = np.median(per_round, axis=0)
        s = np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds_ms])
        return cls(float(p50), float(p90), float(p95), float(p99), float(s.mean()), float(s.std()),
                   float(s.min()), int(s.size), split_ms)

    @classmethod
    def predicted(cls, ms: float, rel_error: float) -> LatencyStats:
        """A latency model's estimate: every percentile is the estimate; std is its typical relative error."""
        return cls(ms, ms, ms, ms, ms, ms * rel_error, ms, 0, None, "predicted")

    def value(self, statistic: str) -> float:
        return float(getattr(self, statistic))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cv"] = self.cv
        if self.split_ms is None:
            d.pop("split_ms")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        return cls(**{k: d[k] for k in ("p50", "p90", "p95", "p99", "mean", "std", "min", "n")},
                   split_ms=d.get("split_ms"), source=d.get("source", "measured"))


class Target(Protocol):
    name: str

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes a measurement: device, runtime and versions, threads, precision, shape."""
        ...

    def measure(self, model_path: Path) -> LatencyStats: ...


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
