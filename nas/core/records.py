"""Plain result values read back from the Optuna storage: what the summary, Pareto front and export use."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna

from nas.core import names
from nas.core.arch import Arch
from nas.core.stats import LatencyStats
from nas.core.workers import WORKER_DIED


@dataclass(frozen=True)
class TrialRecord:
    study: str
    number: int
    state: str  # complete | failed | running | waiting | skipped (by the latency predictor) | duplicate
    arch: Arch | None
    accuracy: float | None
    latency_ms: float | None  # the budget statistic
    latency: LatencyStats | None
    params: int | None
    macs: int | None
    run_id: str | None
    reason: str | None
    attrs: dict[str, Any]

    @property
    def label(self) -> str:
        return self.attrs.get(names.REFERENCE) or (self.arch.hash[:8] if self.arch else f"#{self.number}")

    def feasible(self, budget_ms: float) -> bool:
        return self.state == "complete" and self.latency_ms is not None and self.latency_ms <= budget_ms


_STATES = {
    optuna.trial.TrialState.COMPLETE: "complete",
    optuna.trial.TrialState.FAIL: "failed",
    optuna.trial.TrialState.RUNNING: "running",
    optuna.trial.TrialState.PRUNED: "skipped",
    optuna.trial.TrialState.WAITING: "waiting",
}


def record_of(study_name: str, t: optuna.trial.FrozenTrial) -> TrialRecord:
    a = t.user_attrs
    arch = Arch.from_dict(a[names.ARCH]) if names.ARCH in a else None
    lat = LatencyStats.from_dict(a[names.LATENCY]) if names.LATENCY in a else None
    state = _STATES.get(t.state, str(t.state))
    if state == "skipped" and names.DUPLICATE_OF in a:  # pruned because the study already had the arch
        state = "duplicate"
    if state == "complete" and names.SKIPPED in a:  # completed at its predicted latency only to steer NSGA-II
        state = "skipped"
    complete = state == "complete"
    return TrialRecord(
        study=study_name,
        number=t.number,
        state=state,
        arch=arch,
        accuracy=t.values[0] if complete and t.values else None,
        latency_ms=t.values[1] if complete and t.values else a.get(names.LATENCY_MS),
        latency=lat,
        params=a.get(names.PARAMS),
        macs=a.get(names.MACS),
        run_id=a.get(names.RUN_ID),
        reason=a.get(names.FAIL_REASON) or (WORKER_DIED if t.state == optuna.trial.TrialState.FAIL else None)
        or (f"duplicate of trial {a[names.DUPLICATE_OF]}" if state == "duplicate" else None),
        attrs=dict(a),
    )


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Completed trials no other completed trial beats on both accuracy (higher) and latency (lower).

    Not Optuna's ``study.best_trials``: that keeps only the trials meeting the study's budget (its constraint), while
    this front spans every budget (``nas export budget_ms=X`` answers any budget from it) and may merge the records of
    several studies (``nas export`` over a study-name prefix)."""
    done = [r for r in records if r.state == "complete"]
    front = []
    for r in done:
        dominated = any(
            o.accuracy >= r.accuracy and o.latency_ms <= r.latency_ms
            and (o.accuracy > r.accuracy or o.latency_ms < r.latency_ms)
            for o in done
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.latency_ms)


STATE_ORDER = ("complete", "failed", "skipped", "duplicate", "running", "waiting")
STATE_WORDS = {"skipped": "skipped by the latency predictor", "duplicate": "duplicates (not run again)",
               "waiting": "queued, not run yet"}


def state_counts(records: list[TrialRecord]) -> str:
    """'N trials: a complete, b failed, ...': every state present, so that the parts add up to N."""
    n = Counter(r.state for r in records)
    order = [*STATE_ORDER, *sorted(s for s in n if s not in STATE_ORDER)]
    parts = [f"{n[s]} {STATE_WORDS.get(s, s)}" for s in order if n[s] or s in ("complete", "failed")]
    return f"{len(records)} trials: " + ", ".join(parts)


def best_under_budget(records: list[TrialRecord], budget_ms: float) -> TrialRecord | None:
    """The most accurate completed trial meeting the budget (ties: the faster); always on the Pareto front."""
    ok = [r for r in records if r.feasible(budget_ms)]
    return max(ok, key=lambda r: (r.accuracy, -r.latency_ms)) if ok else None


def fastest(records: list[TrialRecord]) -> TrialRecord | None:
    done = [r for r in records if r.state == "complete"]
    return min(done, key=lambda r: r.latency_ms) if done else None
