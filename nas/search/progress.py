"""One line per finished trial: number, arch, latency, accuracy, time, best under budget so far."""

from __future__ import annotations

import time
from typing import Any

import optuna

from nas.accuracy.reeval import at_fidelity, ranked
from nas.config import SearchConfig
from nas.core import names
from nas.core.records import record_of


class Progress:
    """An Optuna callback that prints a line as each trial of this run ends."""

    def __init__(self, cfg: SearchConfig, log: Any, n: int) -> None:
        self.cfg, self.log, self.n, self.i = cfg, log, n, 0
        self.t0 = time.perf_counter()

    def __call__(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        r = record_of(study.study_name, frozen)
        self.i += r.state != "duplicate"  # a duplicate does not use up study.n_trials: another is proposed
        arch = r.arch.summary(r.attrs.get(names.REFERENCE)) if r.arch else ""
        head = f"[{'dup' if r.state == 'duplicate' else self.i:>3}/{self.n}] trial {r.number:>3} {arch}"
        stat = str(self.cfg.target.statistic)
        if r.state == "duplicate":
            body = f"{r.reason}: not measured again; the sampler proposes another"
        elif r.state == "skipped":
            mean, std = r.attrs.get(names.PREDICTED_MS, 0.0), r.attrs.get(names.PREDICTED_STD_MS, 0.0)
            body = f"skipped: predicted {mean:.2f} ± {std:.2f} ms, surely over budget"
        elif r.state == "complete":
            mark = "ok " if r.latency_ms <= self.cfg.budget_ms else "over"
            kind = " predicted" if r.latency is not None and r.latency.source == "predicted" else ""
            fid, first = r.attrs.get(names.FIDELITY, 0), self.cfg.study.rungs[0]
            how = (f"± {r.attrs[names.ACCURACY_STD]:.2f} predicted" if names.ACCURACY_STD in r.attrs else
                   f"@{first}ep {r.attrs.get(names.TRAIN_RESOLUTION, '?')}px"
                   + (f" ({at_fidelity(r):.3f} @{fid}ep)" if fid > first else ""))
            body = f"{stat} {r.latency_ms:6.2f} ms{kind} {mark} | top-1 {r.accuracy:.3f} {how}"
        else:
            body = f"{r.state}: {r.reason or ''}"
        best = next(iter(ranked([record_of(study.study_name, t) for t in study.trials], self.cfg.budget_ms)), None)
        tail = (f"best<= {self.cfg.budget_ms:g} ms: {at_fidelity(best):.3f} @{best.attrs.get(names.FIDELITY, '?')}ep "
                f"(#{best.number})" if best else "best: none yet")
        dur = frozen.duration.total_seconds() if frozen.duration else 0.0
        self.log(f"{head} | {body} | {dur:5.1f} s | {tail}")
