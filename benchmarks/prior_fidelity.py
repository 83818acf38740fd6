"""Which ranks the long trainings best: the ImageNet prior, the short-training proxy, or both combined?

Reads the results of ``benchmarks/accuracy_fidelity.py`` (the archs, each one's short runs and its long runs) and
scores the same archs with the shipped ImageNet accuracy model (``accuracy=train``'s rung 0). Prints Kendall tau
and Spearman against the long trainings' mean for:

- ``prior``: predicted ImageNet top-1 (its domain per arch: Accel-NASBench, scaled or extrapolated);
- ``proxy``: the re-evaluated short figure (the mean over seeds of the top rung: what the export is decided by);
- ``combined``: the mean of the two ranks (no weight fitted on the archs it is scored on);

and the long trainings' own noise ceiling (one seed against the other seeds' mean). No training is run: a few
seconds. Honest limits: the long runs are those the results file holds, with the recipe it names.

    python benchmarks/prior_fidelity.py [--results benchmarks/results/accuracy_fidelity_elpv.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, rankdata, spearmanr

from nas.accuracy.imagenet import ImageNetAccuracy
from nas.core.arch import Arch

HERE = Path(__file__).resolve().parent


def figures(results: dict, model: ImageNetAccuracy) -> dict[str, dict[str, float]]:
    top = max(results["rungs"])
    long_e, out = results["long_epochs"], {}
    for label, runs in results["runs"].items():
        long = [v[0] for k, v in runs.items() if k.startswith(f"{long_e}e-s")]
        proxy = [v[0] for k, v in runs.items() if k.startswith(f"{top}e-s")]
        if len(long) < 2 or not proxy:
            continue
        arch = Arch.from_dict(results["archs"][label])
        p = model.score([arch])[0]
        out[label] = {"long": statistics.fmean(long), "proxy": statistics.fmean(proxy), "prior": p.top1,
                      "domain": p.domain, "long_seeds": long}
    return out


def agreement(x: list[float], y: list[float]) -> tuple[float, float]:
    return float(kendalltau(x, y).statistic), float(spearmanr(x, y).statistic)


def noise_ceiling(rows: dict[str, dict]) -> float:
    """Spearman of one seed's long figure against the other seeds' mean, averaged over the held-out seed."""
    n = min(len(r["long_seeds"]) for r in rows.values())
    out = []
    for s in range(n):
        one = [r["long_seeds"][s] for r in rows.values()]
        rest = [statistics.fmean(r["long_seeds"][:s] + r["long_seeds"][s + 1:n]) for r in rows.values()]
        out.append(spearmanr(one, rest).statistic)
    return float(np.mean(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(HERE / "results" / "accuracy_fidelity_elpv.json"))
    args = ap.parse_args()
    results = json.loads(Path(args.results).read_text())
    print(f"loading the ImageNet accuracy model; results: {args.results} ({results['dataset']}, long "
          f"{results['long_epochs']} epochs, recipe {results.get('recipe')})", flush=True)
    rows = figures(results, ImageNetAccuracy())
    labels = list(rows)
    long = [rows[k]["long"] for k in labels]
    prior = [rows[k]["prior"] for k in labels]
    proxy = [rows[k]["proxy"] for k in labels]
    combined = list((rankdata(prior) + rankdata(proxy)) / 2)
    print(f"{len(labels)} archs; prior domains: "
          + ", ".join(f"{d} {sum(rows[k]['domain'] == d for k in labels)}" for d in sorted({r['domain'] for r in
                                                                                         rows.values()})))
    table = {}
    for name, x in (("prior", prior), ("proxy", proxy), ("combined", combined)):
        tau, rho = agreement(x, long)
        table[name] = {"kendall": tau, "spearman": rho}
        print(f"{name:<9} Kendall {tau:+.3f}  Spearman {rho:+.3f}")
    ceiling = noise_ceiling(rows)
    print(f"noise ceiling (one long seed against the others' mean): Spearman {ceiling:+.3f}")
    out = HERE / "results" / f"prior_fidelity_{results['dataset']}.json"
    out.write_text(json.dumps({"results": Path(args.results).name, "archs": rows, "agreement": table,
                               "noise_ceiling_spearman": ceiling}, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
