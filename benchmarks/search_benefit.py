"""Search benefit of the latency predictor: two searches side by side at equal wall-clock.

Runs the same search (same seed, space, budget) twice for T seconds each, once with the predictor gate and once
without, each in a fresh workdir, and reports candidates considered, measured, trained, skipped, and the best
proxy accuracy found under the budget.

    python benchmarks/search_benefit.py [--seconds 300] [--predictor-file F] [budget_ms=8 other overrides]

With --predictor-file (a `nas predictor fit` output for this target set-up) a third search starts with it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nas.config import SearchConfig
from nas.core.records import best_under_budget
from nas.search.loop import run_search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--predictor-file", type=Path)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rows = {}
    arms = [("online predictor", "true", None), ("no predictor", "false", None)]
    if args.predictor_file:
        arms.insert(0, ("fitted predictor", "true", args.predictor_file))
    for label, enabled, file in arms:
        with tempfile.TemporaryDirectory() as tmp:
            if file is not None:
                (Path(tmp) / "predictors").mkdir()
                shutil.copy(file, Path(tmp) / "predictors" / file.name)
            with initialize_config_module(config_module="nas.conf", version_base=None):
                cfg: SearchConfig = OmegaConf.to_object(compose("search", [
                    f"workdir={tmp}", f"predictor.enabled={enabled}", "study.n_trials=1000",
                    f"study.timeout_s={args.seconds}", *args.overrides]))
            summary = run_search(cfg, log=lambda m, **_: print(m, file=sys.stderr, flush=True))
            recs = summary.records
            best = best_under_budget(recs, cfg.budget_ms)
            rows[label] = {
                "considered": len(recs), "measured": sum(r.latency is not None for r in recs),
                "trained": sum(r.state == "complete" for r in recs), "skipped": sum(r.state == "skipped" for r in recs),
                "best_accuracy_under_budget": best.accuracy if best else None,
                "best_latency_ms": best.latency_ms if best else None, "budget_ms": cfg.budget_ms}
    print(f"{'':<17} {'considered':>10} {'measured':>9} {'trained':>8} {'skipped':>8} {'best acc<=budget':>17}")
    for label, r in rows.items():
        acc = f"{r['best_accuracy_under_budget']:.3f}" if r["best_accuracy_under_budget"] is not None else "none"
        print(f"{label:<17} {r['considered']:>10} {r['measured']:>9} {r['trained']:>8} {r['skipped']:>8} {acc:>17}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
