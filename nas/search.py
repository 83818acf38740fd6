"""The study loop: Optuna samples, each candidate is measured and trained, everything lands in Optuna and MLflow."""

from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from nas.accuracy.datasets import ImageData, load_dataset, train_resolution
from nas.accuracy.train import TrainingDiverged, evaluate_accuracy
from nas.arch import Arch
from nas.config import SearchConfig
from nas.errors import CandidateFailed, NasError
from nas.export import ExportResult, bundle_name, choose, write_bundle
from nas.latency import deploy_shape, measure_arch, scratch_dir
from nas.measure_cache import MeasurementCache
from nas.plots import front_json, plot_pareto
from nas.predictor_gate import PredictorGate
from nas.predictors.base import predictor_path
from nas.records import TrialRecord, best_under_budget, pareto_front, record_of
from nas.search_spaces.factorized import FactorizedSpace, make_space
from nas.stores import check_stores, workdir_lock
from nas.targets.base import Target
from nas.targets.factory import make_target
from nas.tracking import Tracker
from nas.workers import WORKER_DIED, reap_dead_trials, remove_dead_scratch, this_worker

optuna.logging.set_verbosity(optuna.logging.ERROR)  # our progress lines say it once
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def study_name(cfg: SearchConfig) -> str:
    return cfg.study.name or f"{study_prefix(cfg)}-{cfg.budget_ms:g}ms"


def study_prefix(cfg: SearchConfig) -> str:
    """Target, space and dataset: trials of studies sharing it are comparable whatever their budget."""
    return f"{cfg.target.name}-{cfg.search_space.name}-{cfg.dataset.name}"


def storage_url(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'optuna.db').resolve()}"


def open_storage(workdir: Path, on_stale: Any = None) -> optuna.storages.RDBStorage:
    """The workdir's Optuna storage. The heartbeat fails trials of workers that stopped beating (a dead machine);
    ``on_stale(study, trial)`` then closes their MLflow runs."""
    with workdir_lock(workdir):  # schema creation must not race another process's
        return optuna.storages.RDBStorage(storage_url(workdir), heartbeat_interval=30, grace_period=90,
                                          heartbeat_stale_trial_callback=on_stale)


def make_sampler(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    seed = cfg.study.seed
    if cfg.study.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if cfg.study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)


@dataclass
class SearchSummary:
    study: str
    records: list[TrialRecord]
    export: ExportResult | None
    export_error: str | None
    parent_run_id: str
    interrupted: bool = False


class _Context:
    """What every trial of one run shares: built once, read by the objective."""

    def __init__(self, cfg: SearchConfig, workdir: Path, target: Target, data: ImageData,
                 space: FactorizedSpace, tracker: Tracker, parent_id: str, name: str) -> None:
        self.cfg, self.workdir, self.target, self.data = cfg, workdir, target, data
        self.space, self.tracker, self.parent_id, self.name = space, tracker, parent_id, name
        self.cache = MeasurementCache(workdir / "measurements.db")
        self.history: dict[int, list[float]] = {}  # epoch -> top-1 of earlier trials (early cut-off)
        self.gate = PredictorGate(cfg.predictor, cfg.target.statistic, cfg.budget_ms, target, self.cache,
                                  data.num_classes, predictor_path(workdir, cfg.target.name, target.fingerprint(),
                                                                   cfg.predictor.kind))


def run_search(cfg: SearchConfig, log: Any = print) -> SearchSummary:
    workdir = Path(cfg.workdir).expanduser().resolve()
    # Everything that can fail on bad input fails before anything is written.
    data = load_dataset(cfg.dataset.name, cfg.dataset.val_fraction, cfg.dataset.seed, cfg.dataset.path,
                        cfg.dataset.max_images, max(train_res(cfg, r) for r in cfg.search_space.resolution))
    target = make_target(cfg.target)
    space = make_space(cfg.search_space)

    check_stores(workdir)  # a damaged store is one line, before anything is written
    name = study_name(cfg)
    tracker = Tracker(workdir, cfg.study.experiment)

    def close_stale_run(_study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        reason: str = f"{WORKER_DIED} (no heartbeat)") -> None:
        if run_id := trial.user_attrs.get("mlflow_run_id"):
            tracker.fail_run(run_id, reason)

    with workdir_lock(workdir):
        study = optuna.create_study(study_name=name, storage=open_storage(workdir, close_stale_run),
                                    sampler=make_sampler(cfg), directions=["maximize", "minimize"],
                                    load_if_exists=True)
        reaped = reap_dead_trials(study, lambda t: close_stale_run(study, t, WORKER_DIED))
        remove_dead_scratch(workdir)
        enqueued = _enqueue_references(study, space) if cfg.search_space.enqueue_references else []
        parent_id = tracker.study_run(name, {
            "target": cfg.target.name, "search_space": cfg.search_space.name, "dataset": cfg.dataset.name,
            "budget_ms": f"{cfg.budget_ms:g}", "statistic": cfg.target.statistic})
    predicted = bool(getattr(target, "predicted", False))
    study.set_metric_names(["accuracy", f"{'predicted_' if predicted else ''}latency_{cfg.target.statistic}_ms"])
    # What `nas export` needs later without loading the dataset or the target again.
    study.set_user_attr("num_classes", data.num_classes)
    study.set_user_attr("fingerprint", target.fingerprint())
    before = len(study.trials)
    if reaped:
        log(f"trial(s) {', '.join(map(str, reaped))} of a process that died were marked failed ({WORKER_DIED})")
    tracker.log(parent_id, tags={"fingerprint": json.dumps(target.fingerprint(), sort_keys=True),
                                 "latency_source": "predicted" if predicted else "measured"})
    if (warning := getattr(target, "warning", lambda: None)()) is not None:
        log(warning)
    ctx = _Context(cfg, workdir, target, data, space, tracker, parent_id, name)
    for r in (record_of(name, t) for t in study.trials):
        _remember_history(ctx, r.attrs.get("history"))

    if cfg.predictor.enabled and not predicted:
        log(f"latency predictor: {ctx.gate.source}" + ("" if ctx.gate.predictor or ctx.gate.prior else
            f" (fitted online after {cfg.predictor.min_fit} measurements on this set-up)"))
    log(f"study {name}: {before} trial(s) stored, adding {cfg.study.n_trials}"
        + (f" (first: {', '.join(enqueued)})" if enqueued else "")
        + f"; budget {cfg.budget_ms:g} ms {cfg.target.statistic} on {cfg.target.name}; workdir {workdir}")
    progress = _Progress(cfg, log, cfg.study.n_trials)
    interrupted = False
    with scratch_dir(workdir) as ctx.scratch:
        try:
            study.optimize(lambda trial: _objective(trial, ctx), n_trials=cfg.study.n_trials,
                           timeout=cfg.study.timeout_s, catch=(CandidateFailed,), callbacks=[progress],
                           gc_after_trial=False)
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: finished trials are kept; run the same command again to resume")

    records = [record_of(name, t) for t in study.trials]
    if cfg.predictor.enabled and not predicted:
        log(ctx.gate.summary())
    elif predicted:
        log(f"{ctx.gate.stats.skipped} candidate(s) not trained: predicted surely over budget")
    _finish_tracking(ctx, records)
    export, export_error = None, None
    try:
        export = export_best(cfg, records, target.fingerprint(), data.num_classes, tracker, parent_id)
    except NasError as e:
        export_error = str(e)
    tracker.end(parent_id, "KILLED" if interrupted else "FINISHED")
    return SearchSummary(name, records, export, export_error, parent_id, interrupted)


def train_res(cfg: SearchConfig, deploy_resolution: int) -> int:
    return train_resolution(deploy_resolution, cfg.dataset.proxy_scale, cfg.dataset.min_resolution)


def _enqueue_references(study: optuna.Study, space: FactorizedSpace) -> list[str]:
    """Enqueue each reference the space contains, unless the study has it done, queued, running, or failed for a
    reason of its own; a reference whose run was interrupted or whose worker died is run again."""
    names = []
    for ref_name, arch in space.references().items():
        params = space.params_of(arch)
        if params is None:
            continue
        if any(t.user_attrs.get("reference") == ref_name and not _retry(t) for t in study.trials):
            continue
        study.enqueue_trial(params, user_attrs={"reference": ref_name})
        names.append(ref_name)
    return names


def _retry(t: optuna.trial.FrozenTrial) -> bool:
    """A failed trial that says nothing about its candidate: it was interrupted or its worker died."""
    reason = t.user_attrs.get("fail_reason")
    return t.state == optuna.trial.TrialState.FAIL and (reason is None or reason == "interrupted"
                                                        or reason.startswith(WORKER_DIED))


def _objective(trial: optuna.Trial, ctx: _Context) -> tuple[float, float]:
    cfg = ctx.cfg
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    trial.set_user_attr("worker", this_worker())  # lets a later run tell that this process died
    arch = ctx.space.sample(trial)
    ref = trial.user_attrs.get("reference")
    times["sample"] = time.perf_counter() - t0
    trial.set_user_attr("arch", arch.to_dict())
    trial.set_user_attr("arch_hash", arch.hash)
    res = train_res(cfg, arch.resolution)
    trial.set_user_attr("train_resolution", res)
    data = ctx.data.at(res)
    t0 = time.perf_counter()
    run_id = ctx.tracker.trial_run(ctx.parent_id, ctx.name, trial.number,
                                   {**_arch_params(arch, ref), "train_resolution": res})
    ctx.tracker.log_text(run_id, arch.to_json(), "arch.json")
    trial.set_user_attr("mlflow_run_id", run_id)
    times["log"] = time.perf_counter() - t0
    status = "FAILED"
    try:
        stat = cfg.target.statistic
        pred = ctx.gate.predict(arch, protect=ref is not None)  # references are always measured
        if pred is not None:
            trial.set_user_attr("predicted_ms", pred.mean_ms)
            trial.set_user_attr("predicted_std_ms", pred.std_ms)
        if pred is not None and pred.skip:
            status = "FINISHED"
            trial.set_constraint("latency", pred.mean_ms - cfg.budget_ms)  # samplers steer away from it
            raise _skip(ctx, run_id, "predicted_latency_ms", pred.mean_ms, pred.std_ms)
        try:
            lat = measure_arch(arch, ctx.target, cfg.target, ctx.cache, ctx.scratch / "candidate.onnx",
                               ctx.data.num_classes, data)
        except Exception as e:  # export errors, ORT errors: this candidate fails, the study goes on
            raise _fail(trial, ctx, run_id, "latency", e) from e
        times.update(lat.timings)
        latency_ms = lat.stats.value(stat)
        source = lat.stats.source
        prefix = "predicted_" if source == "predicted" else ""
        if source == "predicted":
            trial.set_user_attr("predicted_ms", latency_ms)
            trial.set_user_attr("predicted_std_ms", lat.stats.std)
            trial.set_user_attr("latency_details", lat.details)
            if cfg.predictor.enabled and ref is None and latency_ms - cfg.predictor.z * lat.stats.std > cfg.budget_ms:
                # The latency model is the only figure there is: training a surely-too-slow candidate is waste.
                trial.set_user_attr("latency", lat.stats.to_dict())
                trial.set_constraint("latency", latency_ms - cfg.budget_ms)
                status = "FINISHED"
                raise _skip(ctx, run_id, f"predicted_latency_{stat}_ms", latency_ms, lat.stats.std)
        else:
            ctx.gate.observe(pred, latency_ms, lat.cached)
        trial.set_user_attr("latency", lat.stats.to_dict())
        trial.set_user_attr("latency_ms", latency_ms)
        trial.set_user_attr("params", lat.graph.params)
        trial.set_user_attr("macs", lat.graph.macs)
        trial.set_constraint("latency", latency_ms - cfg.budget_ms)

        def on_epoch(epoch: int, acc: float) -> bool:
            ctx.tracker.log(run_id, {"val_top1": acc}, step=epoch)
            return _cut_off(ctx, epoch, acc)

        try:
            acc = evaluate_accuracy(arch, data, cfg.study.epochs, cfg.study.batch_size, cfg.study.lr,
                                    cfg.study.seed, cfg.study.train_threads or os.cpu_count() or 1, on_epoch,
                                    cfg.target.precision,
                                    "litert" if cfg.target.deploy_format == "tflite" else "onnxruntime")
        except (TrainingDiverged, RuntimeError, MemoryError) as e:
            raise _fail(trial, ctx, run_id, "training", e) from e
        times["train"] = acc.train_seconds
        trial.set_user_attr("history", list(acc.history))
        trial.set_user_attr("cut_off", acc.cut_off)
        _remember_history(ctx, list(acc.history))

        t0 = time.perf_counter()
        feasible = latency_ms <= cfg.budget_ms
        metrics = {"accuracy": acc.top1, **({"accuracy_fp32": acc.top1_fp32} if acc.top1_fp32 is not None else {}),
                   "params": lat.graph.params, "macs": lat.graph.macs,
                   "train_seconds": acc.train_seconds, "measure_seconds": lat.timings.get("measure", 0.0),
                   **{f"{prefix}latency_{k}_ms": v for k, v in lat.stats.to_dict().items()
                      if k not in ("n", "cv", "source", "split_ms")},
                   **({"latency_cv": lat.stats.cv} if source == "measured" else {}),
                   **detail_metrics(lat.details)}
        ctx.tracker.log(run_id, metrics, tags={
            "feasible": str(feasible).lower(), "pareto": "false", "latency_source": source,
            "latency_cached": str(lat.cached).lower(), "cut_off": str(acc.cut_off).lower(),
            "state": "complete", **({"reference": ref} if ref else {})})
        times["log"] += time.perf_counter() - t0
        trial.set_user_attr("times", times)
        status = "FINISHED"
        return acc.top1, latency_ms
    except KeyboardInterrupt:
        status = "KILLED"
        trial.set_user_attr("fail_reason", "interrupted")
        raise
    finally:
        ctx.tracker.end(run_id, status)


def _fail(trial: optuna.Trial, ctx: _Context, run_id: str, stage: str, e: BaseException) -> CandidateFailed:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    reason = f"{stage}: {type(e).__name__}: {first}"
    trial.set_user_attr("fail_reason", reason)
    ctx.tracker.log(run_id, tags={"state": "failed", "fail_reason": reason, "feasible": "false", "pareto": "false"})
    return CandidateFailed(reason)


def _cut_off(ctx: _Context, epoch: int, acc: float) -> bool:
    earlier = ctx.history.get(epoch, [])
    return len(earlier) >= 3 and acc < ctx.cfg.study.cutoff_ratio * statistics.median(earlier)


def _remember_history(ctx: _Context, history: list[float] | None) -> None:
    for epoch, acc in enumerate(history or [], start=1):
        ctx.history.setdefault(epoch, []).append(acc)


def _arch_params(arch: Arch, ref: str | None) -> dict[str, Any]:
    p: dict[str, Any] = {"arch_hash": arch.hash, "family": arch.family, "act": arch.act, "width": arch.width,
                         "resolution": arch.resolution, "stem_size": arch.stem_size,
                         "num_features": arch.num_features, "depth": arch.depth}
    for i, stage in enumerate(arch.stages):
        b = stage[0]
        p.update({f"s{i}_kind": b.kind, f"s{i}_depth": sum(x.repeats for x in stage), f"s{i}_kernel": b.kernel,
                  f"s{i}_expansion": b.expansion, f"s{i}_channels": b.channels, f"s{i}_se": b.se,
                  f"s{i}_act": b.act or arch.act})
    if ref:
        p["reference"] = ref
    return p


def _finish_tracking(ctx: _Context, records: list[TrialRecord]) -> None:
    """Tag the Pareto trials, log the front plot and table to the parent run."""
    front = {r.number for r in pareto_front(records)}
    for r in records:
        if r.state == "complete" and r.run_id:
            ctx.tracker.log(r.run_id, tags={"pareto": str(r.number in front).lower()})
    done = [r for r in records if r.state == "complete"]
    best = best_under_budget(records, ctx.cfg.budget_ms)
    ctx.tracker.log(ctx.parent_id, {
        "trials_complete": len(done), "trials_failed": sum(r.state == "failed" for r in records),
        "pareto_size": len(front), **({"best_accuracy_under_budget": best.accuracy} if best else {})})
    if not done:
        return
    plots = ctx.workdir / "plots"
    png, html = plots / f"{ctx.name}-pareto.png", plots / f"{ctx.name}-pareto.html"
    title = f"{ctx.name}: {len(done)} trials, budget {ctx.cfg.budget_ms:g} ms ({ctx.cfg.target.statistic})"
    plot_pareto(records, ctx.cfg.budget_ms, ctx.cfg.target.statistic, title, png, html)
    ctx.tracker.log_artifact(ctx.parent_id, png, "pareto")
    ctx.tracker.log_artifact(ctx.parent_id, html, "pareto")
    ctx.tracker.log_text(ctx.parent_id, front_json(records), "pareto/front.json")


def export_best(cfg: SearchConfig, records: list[TrialRecord], fingerprint: dict[str, Any], num_classes: int,
                tracker: Tracker, run_id: str) -> ExportResult:
    """Write the budget's bundle and register it in MLflow as ``nas-<target>-<budget>ms``."""
    record = choose(records, cfg.budget_ms, cfg.target.statistic)
    name = bundle_name(cfg.target.name, cfg.budget_ms)
    fingerprint = {**fingerprint, "shape": list(deploy_shape(cfg.target, record.arch))}
    result = write_bundle(cfg, record, fingerprint, num_classes, Path(cfg.workdir).resolve() / "exports" / name)
    tracker.log_artifact(run_id, result.path, f"export/{name}")
    source = record.latency.source if record.latency else "measured"
    tracker.register(f"nas-{name}", run_id, f"export/{name}",
                     {"trial": str(record.number), "study": record.study, "latency_source": source})
    return result


class _Progress:
    """One line per finished trial: number, arch, latency, accuracy, best under budget so far."""

    def __init__(self, cfg: SearchConfig, log: Any, n: int) -> None:
        self.cfg, self.log, self.n, self.i = cfg, log, n, 0
        self.t0 = time.perf_counter()

    def __call__(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        self.i += 1
        r = record_of(study.study_name, frozen)
        arch = r.arch.summary(r.attrs.get("reference")) if r.arch else ""
        head = f"[{self.i:>3}/{self.n}] trial {r.number:>3} {arch}"
        if r.state == "skipped":
            mean, std = r.attrs.get("predicted_ms", 0.0), r.attrs.get("predicted_std_ms", 0.0)
            body = f"skipped: predicted {mean:.2f} ± {std:.2f} ms, surely over budget"
        elif r.state == "complete":
            mark = "ok " if r.latency_ms <= self.cfg.budget_ms else "over"
            cut = " (cut off)" if r.attrs.get("cut_off") else ""
            kind = " predicted" if r.latency is not None and r.latency.source == "predicted" else ""
            body = f"{self.cfg.target.statistic} {r.latency_ms:6.2f} ms{kind} {mark} | top-1 {r.accuracy:.3f}{cut}"
        else:
            body = f"{r.state}: {r.reason or ''}"
        best = best_under_budget([record_of(study.study_name, t) for t in study.trials], self.cfg.budget_ms)
        tail = f"best<= {self.cfg.budget_ms:g} ms: {best.accuracy:.3f} (#{best.number})" if best else "best: none yet"
        dur = (frozen.duration.total_seconds() if frozen.duration else 0.0)
        self.log(f"{head} | {body} | {dur:5.1f} s | {tail}")


def _skip(ctx: _Context, run_id: str, metric: str, mean_ms: float, std_ms: float) -> optuna.TrialPruned:
    """Record a candidate predicted surely over budget (neither measured nor trained); the caller raises it.
    ``metric`` names the prediction as the trial's other predicted figures are named."""
    ctx.gate.stats.skipped += 1
    ctx.tracker.log(run_id, {metric: mean_ms, "predicted_latency_std_ms": std_ms},
                    tags={"state": "skipped", "latency_source": "predicted", "feasible": "false", "pareto": "false"})
    return optuna.TrialPruned(f"predicted {mean_ms:.2f} ± {std_ms:.2f} ms, over budget {ctx.cfg.budget_ms:g} ms")


def detail_metrics(details: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics from how a latency was obtained: the TFLite check, the Edge TPU estimate or compile report."""
    out: dict[str, float] = {}
    conv = details.get("conversion") or {}
    for k in ("top1_agreement", "rel_error", "seconds"):
        if k in conv:
            out[f"tflite_{k}"] = float(conv[k])
    est = details.get("estimate") or {}
    for k in ("overhead_ms", "compute_ms", "streaming_ms", "cpu_ms"):
        if k in est:
            out[f"predicted_{k}"] = float(est[k])
    for k in ("tpu_ops", "cpu_ops", "param_bytes", "streamed_bytes"):
        if k in est:
            out[f"edgetpu_{k}"] = float(est[k])
    comp = details.get("compile") or {}
    for k in ("tpu_ops", "cpu_ops", "on_chip_mib", "off_chip_mib"):
        if comp.get(k) is not None:
            out[f"edgetpu_compiled_{k}"] = float(comp[k])
    return out

