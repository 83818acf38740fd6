"""The re-evaluated winner: before export, the top feasible candidates are retrained at the top rung with several
seeds, and the export picks by mean top-1, the faster among candidates whose means are within one standard error.

Re-evaluations are stored on the study (one user attribute per candidate and fidelity, one entry per seed) as
each seed finishes, so `nas export budget_ms=X` and an interrupted run reuse them and train only what is missing.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import optuna

from nas.accuracy.train import Recipe, train_run
from nas.config import SearchConfig
from nas.core import names
from nas.core.errors import CandidateFailed, first_line
from nas.core.records import TrialRecord
from nas.data.images import ImageData
from nas.tracking.client import Tracker


@dataclass(frozen=True)
class Reevaluation:
    record: TrialRecord
    epochs: int
    resolution: int
    top1: dict[int, float]  # seed -> top-1 on the selection half (of the deployed model on int8 targets)
    failed: dict[int, str] | None = None  # seed -> why its training failed (a NaN loss, ...): left out of the mean
    report: dict[int, float] | None = None  # seed -> the float network's top-1 on the report half

    @property
    def report_mean(self) -> float | None:
        return statistics.fmean(self.report.values()) if self.report else None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.top1.values())

    @property
    def std(self) -> float:
        return statistics.stdev(self.top1.values()) if len(self.top1) > 1 else 0.0

    @property
    def se(self) -> float:
        return self.std / math.sqrt(len(self.top1))

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.record.number, "study": self.record.study, "label": self.record.label,
                "mean": self.mean, "std": self.std, "se": self.se, "seeds": sorted(self.top1),
                "top1": {str(k): v for k, v in sorted(self.top1.items())}, "epochs": self.epochs,
                "train_resolution": self.resolution, "latency_ms": self.record.latency_ms,
                "report_mean": self.report_mean,
                "report": {str(k): v for k, v in sorted((self.report or {}).items())},
                **({"failed_seeds": {str(k): v for k, v in sorted(self.failed.items())}} if self.failed else {})}


def at_fidelity(r: TrialRecord) -> float:
    """The trial's top-1 at the highest rung it reached (its objective is the first rung's, shared by all)."""
    rungs = r.attrs.get(names.RUNG_TOP1) or {}
    return float(rungs.get(str(r.attrs.get(names.FIDELITY)), r.accuracy or 0.0))


def ranked(records: list[TrialRecord], budget_ms: float) -> list[TrialRecord]:
    """Feasible trials, best first: highest fidelity reached, then top-1 at it (never across fidelities first)."""
    ok = [r for r in records if r.feasible(budget_ms)]
    return sorted(ok, key=lambda r: (r.attrs.get(names.FIDELITY, 0), at_fidelity(r), -r.latency_ms), reverse=True)


def reevaluate(cfg: SearchConfig, studies: dict[str, optuna.Study], records: list[TrialRecord], data: ImageData,
               target_cls: Any, recipe: Recipe, tracker: Tracker, log: Any) -> list[Reevaluation]:
    """Retrain the ``cfg.study.reeval_top_k`` best feasible candidates at the top rung with ``reeval_seeds`` seeds
    (reusing what is stored, and a trial's own top-rung run as its first seed)."""
    epochs = cfg.study.rungs[-1]
    seeds = [cfg.study.seed + i for i in range(cfg.study.reeval_seeds)]
    top = ranked(records, cfg.budget_ms)[:cfg.study.reeval_top_k]
    missing = sum(len(set(seeds) - set(_known(studies[r.study], r, epochs, cfg.study.seed))) for r in top)
    if top and missing > 0:
        log(f"re-evaluating the top {len(top)} feasible candidate(s) at {epochs} epochs with {len(seeds)} seeds "
            f"({missing} training run(s))")
    out = []
    for r in top:
        study = studies[r.study]
        res = int(r.attrs[names.TRAIN_RESOLUTION])
        top1 = _known(study, r, epochs, cfg.study.seed)
        report = _known(study, r, epochs, cfg.study.seed, report=True)
        failed = {int(k): v for k, v in (study.user_attrs.get(_key(r, epochs) + ":failed") or {}).items()}
        for seed in seeds:
            if seed in top1 or seed in failed:
                continue
            try:
                run = train_run(r.arch, data.at(res), epochs, seed, recipe)
                deployed = target_cls.deployed_top1(cfg.target, run.model, data.at(res), recipe.batch_size)
            except CandidateFailed as e:  # one seed's failure is recorded; the ranking goes on without it
                failed[seed] = first_line(e)[:300]
                study.set_user_attr(_key(r, epochs) + ":failed", {str(k): v for k, v in failed.items()})
                log(f"  trial {r.number} ({r.label}) seed {seed}: FAILED ({failed[seed]}); left out of its mean")
                continue
            top1[seed] = run.top1 if deployed is None else deployed
            if run.top1_report is not None:
                report[seed] = run.top1_report
                study.set_user_attr(_key(r, epochs) + ":report", {str(k): v for k, v in report.items()})
            study.set_user_attr(_key(r, epochs), {str(k): v for k, v in top1.items()})  # resumable, per seed
            log(f"  trial {r.number} ({r.label}) seed {seed}: top-1 {top1[seed]:.3f} ({run.train_seconds:.0f} s)")
        if not top1:
            log(f"  trial {r.number} ({r.label}): every seed failed; it leaves the ranking")
            continue
        rev = Reevaluation(r, epochs, res, top1, failed or None, report or None)
        out.append(rev)
        if r.run_id:
            tracker.log(r.run_id, {names.REEVAL_MEAN: rev.mean, names.REEVAL_STD: rev.std,
                                   names.REEVAL_SEEDS: len(top1)})
    return out


def pick(reevals: list[Reevaluation]) -> tuple[Reevaluation, list[Reevaluation]]:
    """The winner and every candidate tied with the best mean (within its standard error): the faster one wins."""
    best = max(reevals, key=lambda r: r.mean)
    tied = [r for r in reevals if r.mean >= best.mean - best.se]
    return min(tied, key=lambda r: (r.record.latency_ms, -r.mean)), tied


def _key(r: TrialRecord, epochs: int) -> str:
    return f"{names.REEVAL_KEY}:{r.arch.hash}:{epochs}e:{r.attrs[names.TRAIN_RESOLUTION]}px"


def _known(study: optuna.Study, r: TrialRecord, epochs: int, seed: int, report: bool = False) -> dict[int, float]:
    """Seeds already trained at ``epochs``: stored re-evaluations, and the trial's own top-rung run (at ``seed``;
    not on an int8 target, whose seeds are the deployed model's figures and whose trial kept the float one's)."""
    key = _key(r, epochs) + (":report" if report else "")
    known = {int(k): float(v) for k, v in (study.user_attrs.get(key) or {}).items()}
    own = (r.attrs.get(names.REPORT_TOP1) if report
           else (r.attrs.get(names.RUNG_TOP1) or {}).get(str(epochs)))
    if r.attrs.get(names.FIDELITY) == epochs and own is not None and names.ACCURACY_FP32 not in r.attrs:
        known.setdefault(seed, float(own))
    return known
