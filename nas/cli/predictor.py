"""`nas predictor fit` and `nas predictor eval`: measure diverse archs, fit, and test on fresh ones."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from nas.config import PredictorCmdConfig, workdir_path
from nas.core.arch import Arch
from nas.core.errors import NasError, TargetError
from nas.core.registry import predictors
from nas.latency.block_latency import make_entry_measure
from nas.latency.cache import MeasurementCache
from nas.latency.measure import deploy_shape, measure_arch, scratch_dir
from nas.latency.onnx_export import export_onnx
from nas.latency.targets import make_target
from nas.latency.targets.base import Target
from nas.predictors.base import load_predictor, predictor_path, save_predictor
from nas.predictors.sampling import sample_stratified
from nas.search_spaces.build import build_model
from nas.search_spaces.factorized import FactorizedSpace, make_space
from nas.tracking.client import Tracker


def measure_many(archs: list[Arch], target: Target, cfg: PredictorCmdConfig, workdir: Path, say: Any,
                 what: str) -> tuple[np.ndarray, np.ndarray]:
    """The budget statistic of each arch and its relative interval half-width, through the measurement cache,
    with a progress line each."""
    cache = MeasurementCache(workdir / "measurements.db")
    out, halfwidth = np.empty(len(archs)), np.zeros(len(archs))
    with scratch_dir(workdir) as scratch:
        for i, arch in enumerate(archs):
            lat = measure_arch(arch, target, cache, scratch, cfg.num_classes)
            out[i] = lat.stats.value(str(cfg.target.statistic))
            halfwidth[i] = lat.stats.rel_halfwidth(str(cfg.target.statistic))
            say(f"[{i + 1:>3}/{len(archs)}] {what} {arch.hash[:8]} {lat.graph.macs / 1e6:6.0f} MMACs "
                f"{cfg.target.statistic} {out[i]:7.3f} ms ±{halfwidth[i]:.1%}{' (cached)' if lat.cached else ''}")
    return out, halfwidth


def _setup(cfg: PredictorCmdConfig) -> tuple[Path, Target, FactorizedSpace, dict[str, Any]]:
    target = make_target(cfg.target)
    if target.predicted:
        raise TargetError(f"target={cfg.target.name} has no device here ({target.reason}), so its latencies come "
                          "from the analytic model already; a learned predictor needs measurements")
    return workdir_path(cfg.workdir), target, make_space(cfg.search_space), target.fingerprint()


def _log_run(cfg: PredictorCmdConfig, workdir: Path, command: str, metrics: dict[str, float],
             artifact: Path, artifact_dir: str, tags: dict[str, str] | None = None) -> None:
    """One MLflow run per predictor command, in the predictors' experiment."""
    tracker = Tracker(workdir, cfg.experiment)
    run = tracker.client.create_run(tracker.experiment_id, run_name=f"{command}-{cfg.target.name}-{cfg.kind}",
                                    tags={"command": f"predictor {command}", "target": cfg.target.name,
                                          "kind": cfg.kind, **(tags or {})})
    tracker.log(run.info.run_id, metrics)
    tracker.log_artifact(run.info.run_id, artifact, artifact_dir)
    tracker.end(run.info.run_id)


def fit(cfg: PredictorCmdConfig, say: Any) -> dict[str, Any]:
    workdir, target, space, fp = _setup(cfg)
    archs = sample_stratified(space, cfg.n_samples, cfg.seed)
    say(f"fitting a {cfg.kind} predictor for {cfg.target.name} on {len(archs)} archs of {space.name} "
        f"(stratified over MACs)")
    y, halfwidth = measure_many(archs, target, cfg, workdir, say, "measured")
    predictor = predictors.get(cfg.kind).factory(num_classes=cfg.num_classes, seed=cfg.seed)
    entries_s = 0.0
    if cfg.kind == "lut":  # the table's entries are measured first, block by block, on the target
        t0 = time.perf_counter()
        # Entries are small and many: fewer timed runs each, no pauses (the table's scale/overhead fit absorbs
        # the systematic part of the difference to whole-model timing).
        entry_cfg = replace(cfg.target, repeats=max(10, cfg.target.repeats // 4), rounds=min(3, cfg.target.rounds),
                            round_pause_s=0.0)
        with scratch_dir(workdir) as scratch:
            measure = make_entry_measure(make_target(entry_cfg), scratch, cfg.num_classes)
            predictor.fit(archs, y, measure, progress=lambda i, n: say(f"lookup table: entries of arch {i}/{n}")
                          if i % 10 == 0 or i == n else None)
        entries_s = time.perf_counter() - t0
        say(f"lookup table: {len(predictor.table_)} entries measured in {entries_s:.0f} s")
    t0 = time.perf_counter()
    if cfg.kind == "kernel_sum":  # weighs each measurement by how sure it is
        predictor.fit(archs, y, halfwidth)
    else:
        predictor.fit(archs, y)
    fit_s = time.perf_counter() - t0
    mean, _ = predictor.predict(archs)
    train_mape = float(np.mean(np.abs(mean - y) / y))
    path = save_predictor(predictor, predictor_path(workdir, cfg.target.name, fp, cfg.kind), fp, cfg.num_classes,
                          {"fit_hashes": [a.hash for a in archs], "search_space": space.name,
                           "statistic": str(cfg.target.statistic), "n_fit": len(archs)})
    result = {"path": str(path), "kind": cfg.kind, "n_fit": len(archs), "fit_seconds": fit_s,
              "entry_measure_seconds": entries_s, "train_mape": train_mape}
    _log_run(cfg, workdir, "fit", {"fit_seconds": fit_s, "train_mape": train_mape, "n_fit": len(archs),
                                   "entry_measure_seconds": entries_s}, path, "predictor",
             {"fingerprint": json.dumps(fp, sort_keys=True)})
    say(f"fitted in {fit_s:.2f} s, training MAPE {train_mape:.1%}; saved {path}")
    return result


def evaluate(cfg: PredictorCmdConfig, say: Any) -> dict[str, Any]:
    workdir, target, space, fp = _setup(cfg)
    path = predictor_path(workdir, cfg.target.name, fp, cfg.kind)
    if not path.exists():
        raise NasError(f"no {cfg.kind} predictor for target {cfg.target.name} in {workdir}: run "
                       f"`nas predictor fit target={cfg.target.name}` first")
    predictor, doc = load_predictor(path, fp)
    held_out = sample_stratified(space, cfg.n_samples, cfg.seed + 7919, exclude=set(doc.get("fit_hashes", [])))
    say(f"evaluating {path.name} on {len(held_out)} held-out archs (none used in fitting)")
    y, _ = measure_many(held_out, target, cfg, workdir, say, "held-out")
    t0 = time.perf_counter()
    mean, std = predictor.predict(held_out)
    per_arch_ms = (time.perf_counter() - t0) * 1e3 / len(held_out)
    one_ms = _time_one(predictor, held_out[0])
    m = error_metrics(mean, y)
    m.update(n=len(held_out), predict_ms_per_arch_batched=per_arch_ms, predict_ms_single=one_ms,
             mean_std_rel=float(np.mean(std / mean)))
    m["noise_floor"] = noise_floor(held_out[: cfg.noise_repeats], y[: cfg.noise_repeats], target, cfg, workdir)
    png = workdir / "plots" / f"predictor-{cfg.target.name}-{cfg.kind}.png"
    plot_predicted(mean, std, y, png, f"{cfg.kind} on {cfg.target.name}: {len(y)} held-out archs", m)
    flat = {k: v for k, v in m.items() if isinstance(v, float | int)}
    flat.update({f"noise_{k}": v for k, v in m["noise_floor"].items() if isinstance(v, float | int)})
    _log_run(cfg, workdir, "eval", flat, png, "plots")
    nf = m["noise_floor"]
    say(f"held-out {m['n']}: MAPE {m['mape']:.1%}, within ±5% {m['within_5']:.1%}, within ±10% "
        f"{m['within_10']:.1%}, Kendall tau {m['kendall_tau']:.3f}, RMSE {m['rmse_ms']:.3f} ms; predict "
        f"{one_ms:.3f} ms/arch")
    if nf.get("n"):
        say(f"within ±10%: predictor {m['within_10']:.0%}, repeat floor {nf['within_10']:.0%} (a second "
            f"measurement of {nf['n']} of the same archs, same device, same time: median |diff| "
            f"{nf['median_abs_rel']:.1%}, within ±5% {nf['within_5']:.0%}); "
            + ("the device, not the predictor, is the limit" if m["within_10"] >= nf["within_10"] - 0.05
               else "the predictor is the limit"))
    say(f"plot: {png}")
    return m


def error_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    rel = (pred - y) / y
    return {"rmse_ms": float(np.sqrt(np.mean((pred - y) ** 2))), "mape": float(np.mean(np.abs(rel))),
            "within_5": float(np.mean(np.abs(rel) <= 0.05)), "within_10": float(np.mean(np.abs(rel) <= 0.10)),
            "kendall_tau": float(kendalltau(pred, y).statistic), "max_abs_rel": float(np.max(np.abs(rel)))}


def noise_floor(archs: list[Arch], first: np.ndarray, target: Target, cfg: PredictorCmdConfig,
                workdir: Path) -> dict[str, Any]:
    """Measure archs again (fresh export and session, no cache): how far two measurements of one arch differ."""
    if not archs:
        return {"n": 0}
    again = []
    with scratch_dir(workdir) as scratch:
        for arch in archs:
            path = export_onnx(build_model(arch, cfg.num_classes), deploy_shape(cfg.target, arch),
                               scratch / "noise.onnx", str(cfg.target.exporter), cfg.target.opset)
            again.append(target.measure(path).stats.value(str(cfg.target.statistic)))
    rel = np.abs(np.array(again) - first) / first
    return {"n": len(archs), "median_abs_rel": float(np.median(rel)), "within_5": float(np.mean(rel <= 0.05)),
            "within_10": float(np.mean(rel <= 0.10)), "max_abs_rel": float(rel.max())}


def _time_one(predictor: Any, arch: Arch, n: int = 50) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        predictor.predict([arch])
    return (time.perf_counter() - t0) * 1e3 / n


def plot_predicted(mean: np.ndarray, std: np.ndarray, y: np.ndarray, path: Path, title: str,
                   m: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
    lo, hi = float(min(y.min(), mean.min())) * 0.95, float(max(y.max(), mean.max())) * 1.05
    xs = np.linspace(lo, hi, 10)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="#e7f5ff", label="±10%")
    ax.fill_between(xs, xs * 0.95, xs * 1.05, color="#a5d8ff", label="±5%")
    ax.plot(xs, xs, c="#1c7ed6", lw=1)
    ax.errorbar(y, mean, yerr=std, fmt="o", ms=3, c="#d9480f", ecolor="#ffc9a9", elinewidth=1, label="held-out")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"{title}\nMAPE {m['mape']:.1%}, ±10%: {m['within_10']:.0%}, tau {m['kendall_tau']:.2f}",
                 fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
