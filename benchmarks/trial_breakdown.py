"""Per-trial time breakdown of a real `nas search`, and the framework's own overhead.

Runs a search in a fresh temporary workdir (the default config unless overrides are given), then reads each
trial's step timings back from the Optuna storage. Overhead = trial wall time minus the real work (build,
export, graph stats, ONNX Runtime session, timed runs, training): Optuna, MLflow and bookkeeping. Goal (issue 2):
at most 2% of trial time. Also times the two ONNX exporters on the same candidates.

    python benchmarks/trial_breakdown.py [study.n_trials=8] [other overrides]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nas.config import SearchConfig
from nas.core.records import record_of
from nas.latency.onnx_export import export_onnx
from nas.search.loop import run_search
from nas.search_spaces.build import build_model

WORK = ("build", "export", "graph", "session", "measure", "train")


def main(overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_module(config_module="nas.conf", version_base=None):
            cfg: SearchConfig = OmegaConf.to_object(compose("search", [f"workdir={tmp}", "study.n_trials=8",
                                                                         *overrides]))
        summary = run_search(cfg, log=lambda m, **_: print(m, file=sys.stderr))
        storage = f"sqlite:///{Path(tmp) / 'optuna.db'}"
        trials = [t for t in optuna.load_study(study_name=summary.study, storage=storage).trials
                  if t.state == optuna.trial.TrialState.COMPLETE and "times" in t.user_attrs]
        rows = []
        for t in trials:
            times = dict(t.user_attrs["times"])
            total = t.duration.total_seconds()
            times["overhead"] = total - sum(times.get(k, 0.0) for k in WORK)
            times["total"] = total
            rows.append(times)
        steps = ["sample", *WORK, "log", "overhead", "total"]
        print(f"{'step':<10} {'median s':>9} {'share':>7}")
        med_total = statistics.median(r["total"] for r in rows)
        for k in steps:
            med = statistics.median(r.get(k, 0.0) for r in rows)
            print(f"{k:<10} {med:>9.3f} {med / med_total:>7.1%}")
        shares = [r["overhead"] / r["total"] for r in rows]
        print(f"framework overhead (Optuna + MLflow + bookkeeping): median {statistics.median(shares):.2%} "
              f"of trial time over {len(rows)} trials (goal <= 2%)")

        archs = [record_of(summary.study, t).arch for t in trials[:4]]
        ex = {"legacy": [], "dynamo": []}
        for arch in archs:
            model = build_model(arch, num_classes=10)
            for exporter in ex:
                t0 = time.perf_counter()
                export_onnx(model, (1, 3, arch.resolution, arch.resolution), Path(tmp) / f"x-{exporter}.onnx",
                            exporter)
                ex[exporter].append(time.perf_counter() - t0)
        leg, dyn = statistics.median(ex["legacy"]), statistics.median(ex["dynamo"])
        print(f"ONNX export per candidate: legacy {leg:.2f} s, dynamo {dyn:.2f} s (median of {len(archs)}; "
              f"dynamo/legacy {dyn / leg:.1f}x)")
        print(json.dumps({"trials": len(rows), "median_total_s": med_total,
                          "median_overhead_share": statistics.median(shares),
                          "steps_median_s": {k: statistics.median(r.get(k, 0.0) for r in rows) for k in steps},
                          "export_legacy_s": leg, "export_dynamo_s": dyn}))


if __name__ == "__main__":
    main(sys.argv[1:])
