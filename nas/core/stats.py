"""Latency statistics: one value type that every layer passes around (measured or predicted, with its interval)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one model on one target, in milliseconds, with how sure the figure is."""

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
    # 95% bootstrap interval over rounds of each statistic: {"p90": [low, high], ...} (empty for old records)
    ci: dict[str, list[float]] = field(default_factory=dict)
    rounds: int = 0
    round_spread: float = 0.0  # (max - min) / median of the rounds' medians: how far the rounds disagreed
    settled: bool = True  # False: the interval never got within the tolerance before the time limit

    @property
    def cv(self) -> float:
        """Coefficient of variation: std / mean."""
        return self.std / self.mean if self.mean else 0.0

    def rel_halfwidth(self, statistic: str) -> float:
        """Half the interval's width relative to the figure (0 when no interval is known)."""
        lo, hi = self.ci.get(statistic, (0.0, 0.0))
        v = self.value(statistic)
        return (hi - lo) / 2 / v if v and hi > lo else 0.0

    @classmethod
    def from_samples(cls, samples_ms: list[float] | np.ndarray) -> LatencyStats:
        s = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p95, p99 = np.percentile(s, [50, 90, 95, 99])
        return cls(float(p50), float(p90), float(p95), float(p99), float(s.mean()), float(s.std()),
                   float(s.min()), int(s.size), rounds=1)

    @classmethod
    def from_rounds(cls, rounds_ms: list[np.ndarray], split_ms: dict[str, float] | None = None,
                    settled: bool = True) -> LatencyStats:
        """p50 and p90 as the median over rounds of each round's percentile, with a bootstrap interval over rounds; p95
    and p99 over all ``n`` runs pooled (a round's own p99 would be its maximum).

        On a shared machine a burst of foreign load spoils a stretch of consecutive runs; taking the median
        over rounds spaced in time keeps one spoiled round from moving the figure (see
        benchmarks/latency_repeatability.py). Mean, std and min use all samples.
        """
        if len(rounds_ms) == 1:
            return replace(cls.from_samples(rounds_ms[0]), split_ms=split_ms, settled=settled)
        per_round = round_statistics(rounds_ms)
        p50, p90, _, _, _ = np.median(per_round, axis=0)
        s = np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds_ms])
        lo, hi = bootstrap_interval(per_round)
        # The tails come from all runs pooled: a round of 20 runs has no p99 of its own (its p99 is its maximum).
        p95, p99 = np.percentile(s, [95, 99])
        for q, col in ((95, 2), (99, 3)):
            lo[col], hi[col] = pooled_interval(rounds_ms, q)
        medians = per_round[:, 0]
        return cls(float(p50), float(p90), float(p95), float(p99), float(s.mean()), float(s.std()),
                   float(s.min()), int(s.size), split_ms,
                   ci={k: [float(a), float(b)] for k, a, b in zip(STATS, lo, hi, strict=True)},
                   rounds=len(rounds_ms), round_spread=float(np.ptp(medians) / np.median(medians)),
                   settled=settled)

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
                   split_ms=d.get("split_ms"), source=d.get("source", "measured"), ci=d.get("ci") or {},
                   rounds=d.get("rounds", 0), round_spread=d.get("round_spread", 0.0),
                   settled=d.get("settled", True))


STATS = ("p50", "p90", "p95", "p99", "mean")


def round_statistics(rounds_ms: list[np.ndarray]) -> np.ndarray:
    """Each round's p50, p90, p95, p99 and mean: one row per round."""
    return np.array([[*np.percentile(np.asarray(r, dtype=np.float64), [50, 90, 95, 99]), float(np.mean(r))]
                     for r in rounds_ms])


def bootstrap_interval(per_round: np.ndarray, n_boot: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% interval of the median over rounds, by resampling whole rounds (a round is one window in time)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(per_round), size=(n_boot, len(per_round)))
    medians = np.median(per_round[picks], axis=1)  # (n_boot, statistics)
    return np.percentile(medians, 2.5, axis=0), np.percentile(medians, 97.5, axis=0)


def pooled_interval(rounds_ms: list[np.ndarray], q: float, n_boot: int = 400, seed: int = 0) -> tuple[float, float]:
    """95% interval of the pooled ``q``-th percentile, by resampling whole rounds (the tails' counterpart of
    ``bootstrap_interval``: a tail percentile needs the runs of many rounds, not the median of each round's)."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(r, dtype=np.float64) for r in rounds_ms]
    vals = [np.percentile(np.concatenate([arrays[i] for i in rng.integers(0, len(arrays), len(arrays))]), q)
            for _ in range(n_boot)]
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    """A setup's identity (target fingerprint + head): the key of the measurement cache and of predictor files."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
