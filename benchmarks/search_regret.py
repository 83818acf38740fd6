"""Search quality on a finite space with known answers: Accel-NASBench rows held out of the accuracy model's fit.

    python benchmarks/search_regret.py [--seeds 5] [--trials 16] [--holdout 0.3] [--column latency_zcu102_mean]

For each seed: hold back a random ``holdout`` fraction of the Accel-NASBench rows, fit the accuracy model on the
rest (the same fit as `nas accuracy fit`, without the timm scaling part, which a fixed-width 224 px space does not
use), then search the held-back rows as a finite space at three budgets (the 25th, 50th and 75th percentiles of the
latency column). A "measurement" reveals a row's latency from the column (the Xilinx ZCU102 FPGA latency the
benchmark's authors measured; a throughput column, such as throughput_3090_mean, is read as milliseconds per image);
accuracy is never revealed to the searches that use the model. Regret is the true
top-1 (val_top1) of the best row meeting the budget minus that of the exported row.

Searches, each allowed ``trials`` measurements:
- default: what `nas search` does (screen.evolve over the space, latency from screen.latency_model fitted
  on the rows measured so far, picks at several confidence levels, rounds of 4; the first 3 rows measured at random,
  standing in for the references); exports the best predicted top-1 among measured rows meeting the budget.
- random: ``trials`` random rows, each measured and trained (its true top-1 revealed, an oracle no search has);
  exports the best true top-1 among those meeting the budget.
- evolution+table: the same evolution with every latency known exactly (Once-for-All with a perfect latency
  table): what the accuracy model alone allows.

Prints progress; writes benchmarks/results/search_regret_<column>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nas.core.arch import Arch
from nas.predictors.imagenet_accuracy import DATA_DIR, ImageNetAccuracyModel, anb_arch, read_rows
from nas.search.screen import evolve, latency_model

BLOCKS = [f"block{i}_{k}" for i in range(7) for k in ("e", "k", "l", "se")]


class FiniteSpace:
    """The held-back rows as a search space: parameters are the 28 block choices; a parameter set that is not a
    row maps to the nearest row (fewest differing choices), so every candidate is one of the rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.codes = np.array([[_code(r[c]) for c in BLOCKS] for r in rows])
        self.archs = [anb_arch(r) for r in rows]
        self.index = {a.hash: i for i, a in enumerate(self.archs)}
        self._choices = {c: tuple(sorted({_code(r[c]) for r in rows})) for c in BLOCKS}

    def choices(self) -> dict[str, tuple]:
        return self._choices

    def arch_of(self, params: dict[str, Any]) -> Arch:
        x = np.array([params[c] for c in BLOCKS])
        return self.archs[int(np.argmin((self.codes != x).sum(axis=1)))]

    def params_of_row(self, i: int) -> dict[str, Any]:
        return dict(zip(BLOCKS, self.codes[i].tolist(), strict=True))


def _code(v: Any) -> float:
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return float(v.lower() == "true")
    return float(v)


def default_search(space: FiniteSpace, top1: Any, lat: np.ndarray, budget: float, trials: int,
                   rng: np.random.Generator) -> int:
    measured: list[int] = list(rng.choice(len(space.rows), 3, replace=False))
    while len(measured) < trials:
        latency = latency_model([space.archs[i] for i in measured], lat[measured], num_classes=1000)
        known = {space.archs[i].hash for i in measured}
        picks = evolve(space, top1, latency, budget, min(4, trials - len(measured)), known, rng).picks
        new = [space.index[p.arch.hash] for p in picks]
        if not new:  # nothing predicted to fit: measure a random row, as the sampler would propose one
            new = [int(rng.choice([i for i in range(len(space.rows)) if i not in measured]))]
        measured += new
    ok = [i for i in measured if lat[i] <= budget]
    scores = top1([space.archs[i] for i in ok]) if ok else []
    return ok[int(np.argmax(scores))] if ok else -1


def random_search(space: FiniteSpace, truth: np.ndarray, lat: np.ndarray, budget: float, trials: int,
                  rng: np.random.Generator) -> int:
    picked = rng.choice(len(space.rows), trials, replace=False)
    ok = [int(i) for i in picked if lat[i] <= budget]
    return max(ok, key=lambda i: truth[i]) if ok else -1


def table_evolution(space: FiniteSpace, top1: Any, lat: np.ndarray, budget: float, rng: np.random.Generator) -> int:
    def latency(batch: list[Arch]) -> tuple[np.ndarray, np.ndarray]:
        m = np.array([lat[space.index[a.hash]] for a in batch])
        return m, np.zeros_like(m)

    picks = evolve(space, top1, latency, budget, 1, set(), rng).picks
    return space.index[picks[0].arch.hash] if picks else -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=16, help="measurements per search (nas search's default)")
    ap.add_argument("--holdout", type=float, default=0.3)
    ap.add_argument("--column", default="latency_zcu102_mean")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/search_regret_<column>.json")
    args = ap.parse_args()
    rows = [r for r in read_rows(DATA_DIR / "accel_nasbench.csv") if r.get(args.column) not in (None, "")]
    print(f"{len(rows)} Accel-NASBench rows with {args.column}; holding back {args.holdout:.0%} per seed", flush=True)
    runs = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(rows))
        n_hold = int(len(rows) * args.holdout)
        held = [rows[i] for i in order[:n_hold]]
        fit_rows = [rows[i] for i in order[n_hold:]]
        t0 = time.perf_counter()
        model = ImageNetAccuracyModel(seed=seed).fit(fit_rows)
        print(f"seed {seed}: fitted on {len(fit_rows)} rows in {time.perf_counter() - t0:.0f} s", flush=True)
        space = FiniteSpace(held)
        truth = np.array([float(r["val_top1"]) for r in held])
        # A throughput column becomes time per image (ms) at the authors' batch: the same order as a latency.
        lat = np.array([float(r[args.column]) for r in held])
        if args.column.startswith("throughput"):
            lat = 1000.0 / lat

        def top1(archs: list[Arch], model: Any = model) -> np.ndarray:
            return model.predict_benchmark(archs)[0]

        for q in (25, 50, 75):
            budget = float(np.percentile(lat, q))
            best = float(truth[lat <= budget].max())
            found = {
                "default": default_search(space, top1, lat, budget, args.trials, np.random.default_rng(seed)),
                "random": random_search(space, truth, lat, budget, args.trials, np.random.default_rng(seed)),
                "evolution+table": table_evolution(space, top1, lat, budget, np.random.default_rng(seed)),
            }
            regret = {k: (best - float(truth[i])) if i >= 0 else None for k, i in found.items()}
            runs.append({"seed": seed, "budget_percentile": q, "budget_ms": budget, "best_top1": best,
                         "regret": regret})
            print(f"  budget p{q} = {budget:.3f} ms (best {best:.2f}): regret " + ", ".join(
                f"{k} {v:.2f}" if v is not None else f"{k} none under budget" for k, v in regret.items()), flush=True)
    summary = {}
    for k in ("default", "random", "evolution+table"):
        vals = [r["regret"][k] for r in runs if r["regret"][k] is not None]
        misses = sum(r["regret"][k] is None for r in runs)
        summary[k] = {"median": statistics.median(vals) if vals else None,
                      "mean": statistics.fmean(vals) if vals else None, "max": max(vals) if vals else None,
                      "no_export": misses, "n": len(runs)}
        m = summary[k]
        print(f"{k}: median regret {m['median']:.2f}, mean {m['mean']:.2f}, max {m['max']:.2f} top-1 points over "
              f"{len(vals)} searches ({misses} exported nothing)", flush=True)
    out = Path(args.out or Path(__file__).parent / "results" / f"search_regret_{args.column}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "column": args.column,
                               "trials": args.trials, "holdout": args.holdout, "summary": summary, "runs": runs},
                              indent=1))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
