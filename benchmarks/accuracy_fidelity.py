"""Rank fidelity of the search's accuracy figures against a long training (issue 12, item 6).

For architectures of the default space (the three references and random samples), each figure the search can
use is computed on a dataset:

- ``zero-cost``: synflow (one forward/backward pass of an all-ones input through |weights|, no data) and the
  parameter count;
- ``rung E``: one complete training run of E epochs (seed 0), for each rung of the study;
- ``TSE E``: the same run's summed training losses (the mean loss of each epoch, summed over its E epochs; Ru et
  al., "Speedy Performance Estimation for Neural Architecture Search", NeurIPS 2021), lower ranks higher;
- ``re-evaluated``: the mean over ``--seeds`` seeds of the top rung (what the export picks by);

and compared with the ``long`` figure: the mean over ``--seeds`` seeds of ``--long-epochs``-epoch trainings
(at least 10x the search's default), and with the long training's own repeatability (one seed's long top-1 against
the other seeds' mean: the noise ceiling, above which no figure's agreement can be shown with this many archs and
seeds). Prints Kendall tau and Spearman of each figure against the long mean, the
seed standard deviation, each figure's cost per candidate (epochs and measured seconds, and the fraction of the
long training's cost), and whether it ranks the three references as the long training does. Results are kept in
``--out`` (JSON) as they come, so an interrupted run resumes where it stopped.

    python benchmarks/accuracy_fidelity.py --dataset digits [--archs 12] [--long-epochs 30] [--seeds 3]
    python benchmarks/accuracy_fidelity.py --dataset elpv     # after pip install '.[elpv]'

``--compare DIR/arch.json`` (an export's arch file; repeatable) adds an exported arch outside the ranked set and
gives it the same long training, for the end-to-end comparison of issue 12 item 7: the exported model against the
references, each trained long with the same recipe and seeds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from scipy.stats import kendalltau, spearmanr

from nas import builtins
from nas.accuracy.train import Recipe, train_run
from nas.config import SearchConfig
from nas.core.arch import Arch
from nas.data.datasets import load_dataset, train_resolution
from nas.search_spaces.build import build_model
from nas.search_spaces.factorized import make_space

REFS = ("efficientnet_b0", "mnasnet_100", "mobilenetv2_100")


def config(dataset: str) -> SearchConfig:
    builtins.register()
    with initialize_config_module(config_module="nas.conf", version_base=None):
        return OmegaConf.to_object(compose("search", [f"dataset={dataset}"]))


def archs_of(cfg: SearchConfig, n: int) -> dict[str, Arch]:
    """The references the space contains, then random samples (fixed seed) up to ``n``."""
    space = make_space(cfg.search_space)
    out = {k: a for k, a in space.references().items() if space.contains(a)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    while len(out) < n:
        trial = study.ask()
        arch = space.sample(trial)
        study.tell(trial, 0.0)
        out.setdefault(arch.hash[:8], arch)
    return out


def synflow(arch: Arch, resolution: int, num_classes: int) -> float:
    """SynFlow (Tanaka et al. 2020): sum of |theta * dR/dtheta| for R = sum of the output with |weights| and an
    all-ones input, in float64 and eval-mode BatchNorm so that it is data-free."""
    model = build_model(arch, num_classes=num_classes, seed=0).double().eval()
    signs = {}
    with torch.no_grad():
        for name, p in model.state_dict().items():
            signs[name] = torch.sign(p)
            p.abs_()
    model.zero_grad()
    out = model(torch.ones(1, 3, resolution, resolution, dtype=torch.float64))
    out.sum().backward()
    score = sum(float((p.detach() * p.grad).abs().sum()) for p in model.parameters() if p.grad is not None)
    return float(np.log(score + 1e-300))


def job(args: tuple[str, dict[str, Any], str, int, int, int]) -> tuple[str, str, float, float, float]:
    """One training run in a worker process: (arch label, run key, top-1, seconds, TSE)."""
    dataset, arch_dict, label, epochs, seed, threads = args
    cfg = config(dataset)
    arch = Arch.from_dict(arch_dict)
    res = train_resolution(arch.resolution, cfg.dataset.proxy_scale, cfg.dataset.min_resolution)
    largest = max(train_resolution(r, cfg.dataset.proxy_scale, cfg.dataset.min_resolution)
                  for r in cfg.search_space.resolution)
    data = _data(cfg, largest).at(res)
    recipe = Recipe(batch_size=cfg.study.batch_size, lr=cfg.study.lr, threads=threads, device="cpu")
    run = train_run(arch, data, epochs, seed, recipe)
    return label, f"{epochs}e-s{seed}", run.top1, run.train_seconds, float(sum(run.train_losses))


_DATA: dict[str, Any] = {}


def _data(cfg: SearchConfig, largest: int) -> Any:
    if cfg.dataset.name not in _DATA:
        _DATA[cfg.dataset.name] = load_dataset(cfg.dataset, largest)
    return _DATA[cfg.dataset.name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--archs", type=int, default=12)
    ap.add_argument("--long-epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rungs", default=None, help="comma-separated epochs (default: the study's rungs)")
    ap.add_argument("--rung-seeds", type=int, default=None,
                    help="seeds per rung after the first (default --seeds; 1: no re-evaluation figure)")
    ap.add_argument("--tse", action="store_true",
                    help="redo stored rung runs that predate the TSE record (same seed: the same top-1)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    ap.add_argument("--compare", action="append", default=[], type=Path,
                    help="an export's arch.json: trained long too and compared with the references (item 7)")
    ap.add_argument("--out", default=None, help="results JSON (default: results/accuracy_fidelity_<dataset>.json)")
    args = ap.parse_args()
    cfg = config(args.dataset)
    rungs = [int(r) for r in args.rungs.split(",")] if args.rungs else list(cfg.study.rungs)
    out = Path(args.out or Path(__file__).parent / "results" / f"accuracy_fidelity_{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.exists() else {}
    rungs = sorted(set(rungs) | set(doc.get("rungs", [])))  # a later call adds rungs, never forgets them
    recipe = {"batch_size": cfg.study.batch_size, "lr": cfg.study.lr, "min_resolution": cfg.dataset.min_resolution,
              "optimizer": "timm AdamW (no decay on norms/biases), cosine + warm-up, BatchNorm recalibrated"}
    if doc.get("recipe") not in (None, recipe):  # runs of another recipe must not be mixed into these
        raise SystemExit(f"{out} holds runs of another recipe ({doc['recipe']}): pass --out NEW.json")
    doc.update(dataset=args.dataset, rungs=rungs, long_epochs=args.long_epochs, seeds=args.seeds, recipe=recipe)
    runs = doc.setdefault("runs", {})
    archs = archs_of(cfg, args.archs)
    doc["archs"] = {k: a.to_dict() for k, a in archs.items()}
    extra = doc.setdefault("compared", {})
    for path in args.compare:
        a = Arch.from_dict(json.loads(path.read_text())["arch"])
        same = [k for k, b in archs.items() if b.hash == a.hash]
        if same:  # one of the set (a reference, say): its long runs are already wanted
            doc.setdefault("compared_in_set", {})[f"exported:{a.hash[:8]}"] = same[0]
            print(f"{path}: the export is {same[0]} of the set")
        else:
            extra[f"exported:{a.hash[:8]}"] = a.to_dict()
    for label, arch in archs.items():  # zero-cost scores: cheap, computed here
        res = train_resolution(arch.resolution, cfg.dataset.proxy_scale, cfg.dataset.min_resolution)
        if "synflow" not in runs.get(label, {}):
            t0 = time.perf_counter()
            runs.setdefault(label, {})["synflow"] = [synflow(arch, res, 10), time.perf_counter() - t0]
            runs[label]["params"] = [float(sum(p.numel() for p in build_model(arch, 10).parameters())), 0.0]
    # Each rung once (seed 0); every rung after the first also with the other seeds (a re-evaluation at that
    # fidelity); the long training with every seed.
    rung_seeds = args.seeds if args.rung_seeds is None else args.rung_seeds
    asked = [int(r) for r in args.rungs.split(",")] if args.rungs else rungs
    wanted = [(label, e, s) for label in archs for e, s in
              [*((r, 0) for r in asked), *((r, s) for r in asked[1:] for s in range(1, rung_seeds)),
               *((args.long_epochs, s) for s in range(args.seeds))]]

    def done(label: str, e: int, s: int) -> bool:
        rec = runs.get(label, {}).get(f"{e}e-s{s}")
        return rec is not None and (len(rec) > 2 or not args.tse or e == args.long_epochs)

    wanted += [(label, args.long_epochs, s) for label in extra for s in range(args.seeds)]
    arch_dicts = {**doc["archs"], **extra}
    todo = [(args.dataset, arch_dicts[label], label, e, s, 1) for label, e, s in wanted if not done(label, e, s)]
    out.write_text(json.dumps(doc, indent=1))
    # Short runs first (the early figures come early); among long runs, a compared export's first.
    todo.sort(key=lambda j: (j[3], j[2] not in extra))
    print(f"{args.dataset}: {len(archs)} archs, {len(todo)} training run(s) to go of {len(wanted)}; "
          f"{args.workers} worker(s), 1 thread each; results in {out}", flush=True)
    t0 = time.perf_counter()
    # spawn, not fork: a forked child of a process that has run torch's thread pool can deadlock.
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for i, (label, key, top1, seconds, tse) in enumerate(pool.map(job, todo), start=1):
            runs.setdefault(label, {})[key] = [top1, seconds, tse]
            out.write_text(json.dumps(doc, indent=1))
            print(f"[{i:>4}/{len(todo)}] {label:<16} {key:<8} top-1 {top1:.4f}  {seconds:6.1f} s  "
                  f"({(time.perf_counter() - t0) / 60:.0f} min)", flush=True)
    report(doc)


def report(doc: dict[str, Any]) -> None:
    runs, rungs, long_e, seeds = doc["runs"], doc["rungs"], doc["long_epochs"], doc["seeds"]
    labels = [k for k in doc["archs"] if all(f"{long_e}e-s{s}" in runs[k] for s in range(seeds))]
    if len(labels) < 4:
        print("fewer than 4 archs have their long training: nothing to rank yet")
        return

    def mean_of(label: str, epochs: int) -> float:
        return statistics.fmean(runs[label][f"{epochs}e-s{s}"][0] for s in range(seeds))

    def cost_of(label: str, keys: list[str]) -> float:
        return sum(runs[label][k][1] for k in keys)

    long = np.array([mean_of(k, long_e) for k in labels])
    long_cost = statistics.median(cost_of(k, [f"{long_e}e-s{s}" for s in range(seeds)]) for k in labels)
    seed_std = statistics.median(statistics.stdev(runs[k][f"{long_e}e-s{s}"][0] for s in range(seeds))
                                 for k in labels)
    figures: dict[str, tuple[list[float], list[str], float]] = {
        "zero-cost: params": ([runs[k]["params"][0] for k in labels], ["params"], 0.0),
        "zero-cost: synflow": ([runs[k]["synflow"][0] for k in labels], ["synflow"], 0.0),
    }
    for r in rungs:
        key = f"{r}e-s0"
        if all(key in runs[k] for k in labels):
            figures[f"rung {r} epoch(s), 1 seed"] = ([runs[k][key][0] for k in labels], [key], r)
        if all(len(runs[k].get(key, [])) > 2 for k in labels):
            figures[f"TSE {r} epoch(s), 1 seed"] = ([-runs[k][key][2] for k in labels], [key], r)
    for r in rungs[1:]:
        reeval_keys = [f"{r}e-s{s}" for s in range(seeds)]
        if all(key in runs[k] for k in labels for key in reeval_keys):
            figures[f"re-evaluated: {r} epochs, {seeds} seeds (mean)"] = (
                [mean_of(k, r) for k in labels], reeval_keys, r * seeds)
    runs_long = np.array([[runs[k][f"{long_e}e-s{s}"][0] for s in range(seeds)] for k in labels])
    ceiling = [(float(kendalltau(runs_long[:, s], np.delete(runs_long, s, 1).mean(1)).statistic),
                float(spearmanr(runs_long[:, s], np.delete(runs_long, s, 1).mean(1)).statistic))
               for s in range(seeds)]
    print(f"\n{doc['dataset']}: {len(labels)} archs; long = {long_e} epochs x {seeds} seeds (mean), median cost "
          f"{long_cost:.0f} s/candidate, median seed std of the long top-1 {seed_std:.4f}")
    print(f"{'figure':<44} {'Kendall':>8} {'Spearman':>9} {'epochs':>7} {'s/cand':>7} {'of long':>8}  refs")
    long_refs = _order(labels, list(long))
    rows = []
    for name, (values, keys, epochs) in figures.items():
        tau = float(kendalltau(values, long).statistic)
        rho = float(spearmanr(values, long).statistic)
        cost = statistics.median(cost_of(k, keys) for k in labels)
        refs_ok = _order(labels, values) == long_refs
        rows.append({"figure": name, "kendall_tau": tau, "spearman": rho, "epochs": epochs, "seconds": cost,
                     "fraction_of_long": cost / long_cost, "references_in_long_order": refs_ok})
        print(f"{name:<44} {tau:>8.3f} {rho:>9.3f} {epochs:>7g} {cost:>7.1f} {cost / long_cost:>8.1%}  "
              f"{'same' if refs_ok else 'differ'}")
    tau_c, rho_c = statistics.median(c[0] for c in ceiling), statistics.median(c[1] for c in ceiling)
    print(f"{'noise ceiling: 1 long seed vs the others mean':<44} {tau_c:>8.3f} {rho_c:>9.3f} {long_e:>7g}")
    rows.append({"figure": "noise ceiling: one long seed against the other seeds' mean (median over seeds)",
                 "kendall_tau": tau_c, "spearman": rho_c, "epochs": long_e})
    print(f"references by long top-1: {' > '.join(long_refs)}")
    compared = {}
    for label in dict.fromkeys([*REFS, *doc.get("compared_in_set", {}).values(), *doc.get("compared", {})]):
        tops = [runs[label][f"{long_e}e-s{s}"][0] for s in range(seeds) if f"{long_e}e-s{s}" in runs.get(label, {})]
        if len(tops) == seeds:
            compared[label] = {"mean": statistics.fmean(tops), "std": statistics.stdev(tops), "top1": tops}
            print(f"long {label:<20} {compared[label]['mean']:.4f} +- {compared[label]['std']:.4f}  "
                  f"({', '.join(f'{t:.4f}' for t in tops)})")
    print(json.dumps({"dataset": doc["dataset"], "n_archs": len(labels), "long_epochs": long_e, "seeds": seeds,
                      "long_seed_std": seed_std, "rows": rows,
                      "long_compared": compared}))


def _order(labels: list[str], values: list[float]) -> list[str]:
    refs = [(v, k) for k, v in zip(labels, values, strict=True) if k in REFS]
    return [k for _, k in sorted(refs, reverse=True)]


if __name__ == "__main__":
    main()
