"""One trial as a short pipeline of steps: start, predict, measure, train, record.

Each step returns a value. ``objective`` is the one place that turns a candidate's failure into a trial state,
as Optuna's own ``_run_trial`` does: a ``Skip`` becomes a COMPLETE trial at its predicted latency with a violated
constraint and the ``skipped`` mark (NSGA-II reads completed trials only: that is how a skip steers it; records
read it back as skipped), a duplicate becomes PRUNED, a ``CandidateFailed``
FAIL with its reason while the study goes on, Ctrl-C FAIL with ``interrupted``; anything else is recorded and
stops the study (a ``NasError`` as one line, a bug as its traceback).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from nas.accuracy.imagenet import IMAGENET_CLASSES, ImageNetAccuracy
from nas.accuracy.train import Recipe, Training
from nas.config import SearchConfig
from nas.core import names
from nas.core.arch import Arch
from nas.core.errors import CandidateFailed, first_line
from nas.core.workers import host_lock, this_worker
from nas.data.datasets import train_resolution
from nas.data.images import ImageData, TensorSplits
from nas.latency.cache import MeasurementCache
from nas.latency.gate import Prediction, PredictorGate
from nas.latency.measure import ArchLatency, measure_arch
from nas.latency.targets.base import Target
from nas.tracking.client import Tracker


@dataclass
class TrialContext:
    """What every trial of one run shares: built once, read by the steps."""

    cfg: SearchConfig
    target: Target
    data: ImageData | None  # accuracy=train's dataset; None with accuracy=imagenet
    space: Any
    tracker: Tracker
    parent_id: str
    study: str
    cache: MeasurementCache
    gate: PredictorGate
    scratch: Path
    recipe: Recipe = field(default_factory=Recipe)
    reap: Callable[[], list[int]] | None = None  # fail trials of dead workers on this host (each trial start)
    imagenet: ImageNetAccuracy | None = None  # accuracy=imagenet's model; None: candidates are trained
    prior: ImageNetAccuracy | None = None  # accuracy=train: the ImageNet accuracy model as rung 0 (promotion)

    @property
    def num_classes(self) -> int:
        """The classifier head candidates are measured with: the dataset's, or ImageNet's 1,000."""
        return self.data.num_classes if self.data is not None else IMAGENET_CLASSES


@dataclass
class Candidate:
    trial: optuna.Trial
    arch: Arch
    reference: str | None
    run_id: str
    train_resolution: int | None  # None: nothing is trained (accuracy=imagenet)
    data: TensorSplits | None
    stage: str = "latency"  # where a failure happened: latency or training
    times: dict[str, float] = field(default_factory=dict)


class Skip(Exception):
    """The candidate is surely over budget by a prediction: neither measured further nor trained."""

    def __init__(self, metric: str, mean_ms: float, std_ms: float) -> None:
        super().__init__(f"predicted {mean_ms:.2f} ± {std_ms:.2f} ms, surely over budget")
        self.metric, self.mean_ms, self.std_ms = metric, mean_ms, std_ms


class Duplicate(Exception):
    """The study already has this arch (done, or running on another worker): it is not measured or trained again."""

    def __init__(self, number: int) -> None:
        super().__init__(f"duplicate of trial {number}")
        self.number = number


def objective(trial: optuna.Trial, ctx: TrialContext) -> tuple[float, float]:
    try:
        cand = start(trial, ctx)
    except Duplicate as d:  # the sampler proposed an arch the study has: the next trial samples again
        trial.set_user_attr(names.DUPLICATE_OF, d.number)
        raise optuna.TrialPruned(str(d)) from None
    status = "FAILED"
    try:
        pred = predict(cand, ctx)
        lat = measure(cand, ctx, pred)
        cand.stage = "training"
        acc = (train(cand, ctx, lat.stats.value(str(ctx.cfg.target.statistic))) if ctx.imagenet is None
               else predicted_top1(cand, ctx.imagenet))
        result = record(cand, ctx, lat, acc)
        status = "FINISHED"
        return result
    except Skip as s:
        status = "FINISHED"
        _record_skip(cand, ctx, s)
        # No accuracy was estimated (0.0, the worst): with its constraint violated NSGA-II ranks it below every
        # candidate within budget, and by how far over budget it is predicted, which is what steers it away.
        return 0.0, s.mean_ms
    except KeyboardInterrupt:
        status = "KILLED"
        trial.set_user_attr(names.FAIL_REASON, "interrupted")
        raise
    except BaseException as e:  # recorded here whatever it is; only a CandidateFailed lets the study go on
        _record_failure(cand, ctx, f"{cand.stage}: {type(e).__name__}: {first_line(e)[:300]}")
        raise
    finally:
        ctx.tracker.end(cand.run_id, status)


def start(trial: optuna.Trial, ctx: TrialContext) -> Candidate:
    """Sample the arch and open the trial's MLflow run."""
    trial.set_user_attr(names.WORKER, this_worker())  # lets a later run tell that this process died
    if ctx.reap is not None:  # another worker on this host was killed: its trial is retried at once, not in 90 s
        ctx.reap()
    t0 = time.perf_counter()
    arch = ctx.space.sample(trial)
    ref = trial.user_attrs.get(names.REFERENCE)
    if ref is not None:  # measured as itself, also where the space can only approximate it
        arch = ctx.space.references().get(ref, arch)
    sampled = time.perf_counter() - t0
    res = None if ctx.data is None else \
        train_resolution(arch.resolution, ctx.cfg.dataset.proxy_scale, ctx.cfg.dataset.min_resolution)
    trial.set_user_attr(names.ARCH, arch.to_dict())
    trial.set_user_attr(names.ARCH_HASH, arch.hash)
    if res is not None:
        trial.set_user_attr(names.TRAIN_RESOLUTION, res)
    if (same := duplicate_of(trial, arch.hash)) is not None:
        raise Duplicate(same)
    t0 = time.perf_counter()
    run_id = ctx.tracker.trial_run(ctx.parent_id, ctx.study, trial.number,
                                   {**arch_params(arch, ref), **({names.TRAIN_RESOLUTION: res} if res else {})})
    ctx.tracker.log_text(run_id, arch.to_json(), "arch.json")
    trial.set_user_attr(names.RUN_ID, run_id)
    return Candidate(trial, arch, ref, run_id, res, None if ctx.data is None or res is None else ctx.data.at(res),
                     times={"sample": sampled, "log": time.perf_counter() - t0})


def duplicate_of(trial: optuna.Trial, arch_hash: str) -> int | None:
    """The number of a trial of this study (any worker's) with the same arch, done or running now."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    for t in trial.study.get_trials(deepcopy=False, states=states):
        if t.number != trial.number and t.user_attrs.get(names.ARCH_HASH) == arch_hash \
                and names.DUPLICATE_OF not in t.user_attrs:
            return t.number
    return None


def predict(cand: Candidate, ctx: TrialContext) -> Prediction | None:
    """The latency predictor's view; raises ``Skip`` when the candidate is surely over budget (never a reference)."""
    pred = ctx.gate.predict(cand.arch, protect=cand.reference is not None)
    if pred is None:
        return None
    cand.trial.set_user_attr(names.PREDICTED_MS, pred.mean_ms)
    cand.trial.set_user_attr(names.PREDICTED_STD_MS, pred.std_ms)
    if pred.skip:
        raise Skip("predicted_latency_ms", pred.mean_ms, pred.std_ms)
    return pred


def measure(cand: Candidate, ctx: TrialContext, pred: Prediction | None) -> ArchLatency:
    """The candidate's latency on the target (from the cache when known), and its constraint for the sampler."""
    cfg = ctx.cfg
    lock = lambda: host_lock(True, cfg.study.host_lock and ctx.target.local)  # noqa: E731
    lat = measure_arch(cand.arch, ctx.target, ctx.cache, ctx.scratch, ctx.num_classes, cand.data, lock)
    cand.times.update(lat.timings)
    stat = str(cfg.target.statistic)
    latency_ms = lat.stats.value(stat)
    t = cand.trial
    t.set_user_attr(names.LATENCY, lat.stats.to_dict())
    t.set_user_attr(names.LATENCY_MS, latency_ms)
    t.set_constraint(names.CONSTRAINT, latency_ms - cfg.budget_ms)
    if lat.stats.source == "predicted":
        t.set_user_attr(names.PREDICTED_MS, latency_ms)
        t.set_user_attr(names.PREDICTED_STD_MS, lat.stats.std)
        if cfg.predictor.enabled and cand.reference is None and \
                latency_ms - cfg.predictor.z * lat.stats.std > cfg.budget_ms:
            # The latency model is the only figure there is: training a surely-too-slow candidate is waste.
            raise Skip(names.latency_metric(stat, predicted=True), latency_ms, lat.stats.std)
    else:
        ctx.gate.observe(pred, latency_ms, lat.cached)
    t.set_user_attr(names.PARAMS, lat.graph.params)
    t.set_user_attr(names.MACS, lat.graph.macs)
    return lat


@dataclass(frozen=True)
class Fidelity:
    """What training a candidate found. ``top1`` is the objective Optuna, the Pareto front and best-under-budget
    compare: with training, the figure every trained candidate has (the first rung), so no two fidelities are ever
    compared as one number; ``epochs`` is the highest rung reached, and ``rung_top1`` the figure at each rung."""

    top1: float
    epochs: int  # the rung reached
    rung_top1: dict[int, float]
    train_seconds: float
    top1_fp32: float | None = None  # int8 targets: the float model's top-1 (``top1`` is the deployed one's)


def latency_class(latency_ms: float, budget_ms: float, edges: list[float]) -> int:
    """The candidate's class by latency / budget; ``len(edges)`` and above are over the budget."""
    ratio = latency_ms / budget_ms
    return len(edges) if ratio > 1.0 else sum(ratio > e for e in edges)


def promoted(top1: float, peers: list[float], fraction: float) -> bool:
    """Successive halving's rule: in the best ``fraction`` of this rung's results (the candidate's and its peers')."""
    ranked = sorted([*peers, top1], reverse=True)
    return top1 >= ranked[max(1, math.ceil(len(ranked) * fraction)) - 1]


def rung_peers(trial: optuna.Trial, epochs: int, klass: int, ctx: TrialContext) -> list[float]:
    """Top-1 at this rung of the study's other trials of the same latency class (from the storage: every worker's)."""
    cfg = ctx.cfg
    peers = []
    for t in trial.study.get_trials(deepcopy=False):
        acc = (t.user_attrs.get(names.RUNG_TOP1) or {}).get(str(epochs))
        lat = t.user_attrs.get(names.LATENCY_MS)
        if t.number != trial.number and acc is not None and lat is not None and \
                latency_class(lat, cfg.budget_ms, cfg.study.latency_classes) == klass:
            peers.append(acc)
    return peers


def predicted_top1(cand: Candidate, model: ImageNetAccuracy) -> Fidelity:
    """accuracy=imagenet: the model's predicted ImageNet top-1, its uncertainty and domain (fidelity 0: no
    training)."""
    p = model.score([cand.arch])[0]
    cand.trial.set_user_attr(names.ACCURACY_STD, p.std)
    cand.trial.set_user_attr(names.ACCURACY_DOMAIN, p.domain)
    cand.trial.set_user_attr(names.FIDELITY, 0)
    cand.times["train"] = 0.0
    return Fidelity(p.top1, 0, {}, 0.0)


def train(cand: Candidate, ctx: TrialContext, latency_ms: float) -> Fidelity:
    """Rung by rung, one training continued (its schedule spans the top rung): promoted to the next rung while
    among the best of its latency class at this rung (``promoted_at``). The objective is the first rung's figure
    (the deployed model's on int8 targets), which every trained candidate has."""
    cfg = ctx.cfg
    klass = latency_class(latency_ms, cfg.budget_ms, cfg.study.latency_classes)
    rung_top1: dict[int, float] = {}
    objective, fp32 = None, None
    if ctx.prior is not None:  # rung 0: what the ImageNet accuracy model predicts for it (no training)
        p = ctx.prior.score([cand.arch])[0]
        cand.trial.set_user_attr(names.PRIOR_TOP1, p.top1)
        cand.trial.set_user_attr(names.PRIOR_DOMAIN, p.domain)

    def on_epoch(epochs: int, acc: float) -> None:
        ctx.tracker.log(cand.run_id, {names.val_top1_metric(cfg.study.rungs[-1]): acc}, step=epochs)

    t0 = time.perf_counter()
    with host_lock(False, cfg.study.host_lock and ctx.target.local):  # training may overlap training only
        cand.times["wait_train"] = cand.times.get("wait_train", 0.0) + time.perf_counter() - t0
        run = Training(cand.arch, cand.data, cfg.study.rungs[-1], cfg.study.seed, ctx.recipe, on_epoch)
        for i, epochs in enumerate(cfg.study.rungs):
            rung_top1[epochs] = run.advance_to(epochs)
            cand.trial.set_user_attr(names.RUNG_TOP1, {str(k): v for k, v in rung_top1.items()})
            ctx.tracker.log(cand.run_id, {names.rung_metric(epochs): rung_top1[epochs]})
            if i == 0:
                objective = rung_top1[epochs]
                deployed = ctx.target.deployed_top1(cfg.target, run.snapshot(), cand.data, cfg.study.batch_size)
                if deployed is not None:
                    objective, fp32 = deployed, rung_top1[epochs]
            last = i == len(cfg.study.rungs) - 1
            if last or klass == len(cfg.study.latency_classes) or not promoted_at(cand, ctx, epochs, klass):
                break
    result = run.result()
    cand.times["train"] = result.train_seconds
    cand.trial.set_user_attr(names.FIDELITY, result.epochs)
    cand.trial.set_user_attr(names.REPORT_TOP1, result.top1_report)
    assert objective is not None
    return Fidelity(objective, result.epochs, rung_top1, result.train_seconds, fp32)


MIN_PEERS = 2  # peers of equal fidelity and class below which successive halving asks the prior instead


def promoted_at(cand: Candidate, ctx: TrialContext, epochs: int, klass: int) -> bool:
    """Successive halving against the peers of equal fidelity and latency class. With fewer than
    ``MIN_PEERS`` of them (the first candidates of a study), arrival order must not decide: the ImageNet accuracy
    model's prediction (rung 0) ranks the candidate among every candidate of its class measured so far."""
    cfg = ctx.cfg
    peers = rung_peers(cand.trial, epochs, klass, ctx)
    if len(peers) >= MIN_PEERS:
        return promoted(cand.trial.user_attrs[names.RUNG_TOP1][str(epochs)], peers, cfg.study.promote)
    prior = cand.trial.user_attrs.get(names.PRIOR_TOP1)
    others = class_priors(cand.trial, klass, ctx)
    if prior is None or not others:
        return True  # nothing to compare with yet
    return promoted(prior, others, cfg.study.promote)


def class_priors(trial: optuna.Trial, klass: int, ctx: TrialContext) -> list[float]:
    """The predicted ImageNet top-1 (rung 0) of the study's other candidates of this latency class."""
    cfg = ctx.cfg
    out = []
    for t in trial.study.get_trials(deepcopy=False):
        p, lat = t.user_attrs.get(names.PRIOR_TOP1), t.user_attrs.get(names.LATENCY_MS)
        if t.number != trial.number and p is not None and lat is not None and \
                latency_class(lat, cfg.budget_ms, cfg.study.latency_classes) == klass:
            out.append(p)
    return out


def record(cand: Candidate, ctx: TrialContext, lat: ArchLatency, acc: Fidelity) -> tuple[float, float]:
    """The trial's metrics and tags in MLflow; its objectives for Optuna (top-1 at the fidelity reached)."""
    cfg = ctx.cfg
    t0 = time.perf_counter()
    stat = str(cfg.target.statistic)
    latency_ms = lat.stats.value(stat)
    predicted = lat.stats.source == "predicted"
    metrics = {names.ACCURACY: acc.top1, names.PARAMS: lat.graph.params, names.MACS: lat.graph.macs,
               names.TRAIN_SECONDS: acc.train_seconds, names.MEASURE_SECONDS: lat.timings.get("measure", 0.0),
               names.FIDELITY: acc.epochs,
               **{names.latency_metric(k, predicted): lat.stats.value(k)
                  for k in ("p50", "p90", "p95", "p99", "mean", "std", "min")},
               **({} if predicted else {names.LATENCY_CV: lat.stats.cv, **uncertainty_metrics(lat.stats, stat)}),
               **detail_metrics(lat.details)}
    if (std := cand.trial.user_attrs.get(names.ACCURACY_STD)) is not None:
        metrics[names.ACCURACY_STD] = std
    if acc.top1_fp32 is not None:
        metrics[names.ACCURACY_FP32] = acc.top1_fp32
        cand.trial.set_user_attr(names.ACCURACY_FP32, acc.top1_fp32)
    ctx.tracker.log(cand.run_id, metrics, tags={
        names.FEASIBLE: str(latency_ms <= cfg.budget_ms).lower(), names.PARETO: "false",
        names.LATENCY_SOURCE: lat.stats.source, names.LATENCY_CACHED: str(lat.cached).lower(),
        names.FIDELITY_TAG: str(acc.epochs), names.STATE: "complete",
        **({names.ACCURACY_DOMAIN: d} if (d := cand.trial.user_attrs.get(names.ACCURACY_DOMAIN)) else {}),
        **({names.REFERENCE: cand.reference} if cand.reference else {})})
    cand.times["log"] += time.perf_counter() - t0
    cand.trial.set_user_attr(names.TIMES, cand.times)
    return acc.top1, latency_ms


def _record_skip(cand: Candidate, ctx: TrialContext, s: Skip) -> None:
    ctx.gate.stats.skipped += 1
    cand.trial.set_constraint(names.CONSTRAINT, s.mean_ms - ctx.cfg.budget_ms)  # the samplers steer away from it
    cand.trial.set_user_attr(names.SKIPPED, f"{s}: budget {ctx.cfg.budget_ms:g} ms")
    ctx.tracker.log(cand.run_id, {s.metric: s.mean_ms, names.PREDICTED_STD_METRIC: s.std_ms},
                    tags={names.STATE: "skipped", names.LATENCY_SOURCE: "predicted", names.FEASIBLE: "false",
                          names.PARETO: "false"})


def _record_failure(cand: Candidate, ctx: TrialContext, reason: str) -> None:
    cand.trial.set_user_attr(names.FAIL_REASON, reason)
    ctx.tracker.log(cand.run_id, tags={names.STATE: "failed", names.FAIL_REASON: reason, names.FEASIBLE: "false",
                                       names.PARETO: "false"})


def arch_params(arch: Arch, ref: str | None) -> dict[str, Any]:
    """The arch's choices as MLflow params (filterable in the UI)."""
    p: dict[str, Any] = {"arch_hash": arch.hash, "family": arch.family, "act": arch.act, "width": arch.width,
                         "resolution": arch.resolution, "stem_size": arch.stem_size,
                         "num_features": arch.num_features, "depth": arch.depth}
    for i, stage in enumerate(arch.stages):
        b = stage[0]
        p.update({f"s{i}_kind": b.kind, f"s{i}_depth": sum(x.repeats for x in stage), f"s{i}_kernel": b.kernel,
                  f"s{i}_expansion": b.expansion, f"s{i}_channels": b.channels, f"s{i}_se": b.se,
                  f"s{i}_act": b.act or arch.act})
    if ref:
        p[names.REFERENCE] = ref
    return p


def uncertainty_metrics(stats: Any, statistic: str) -> dict[str, float]:
    """How sure a measurement is: its interval for the budget statistic, rounds, their spread, settled or not."""
    out = {names.LATENCY_ROUNDS: float(stats.rounds), names.LATENCY_ROUND_SPREAD: stats.round_spread,
           names.LATENCY_SETTLED: float(stats.settled)}
    if statistic in stats.ci:
        out[names.LATENCY_CI_LOW], out[names.LATENCY_CI_HIGH] = stats.ci[statistic]
    return out


def detail_metrics(details: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics from how a latency was obtained: the TFLite check, the Edge TPU estimate or compile report."""
    out: dict[str, float] = {}
    conv = details.get("conversion") or {}
    for k in ("top1_agreement", "rel_error", "seconds"):
        if k in conv:
            out[f"tflite_{k}"] = float(conv[k])
    est = details.get("estimate") or {}
    for k in ("overhead_ms", "compute_ms", "streaming_ms", "io_ms", "cpu_ms"):
        if k in est:
            out[f"predicted_{k}"] = float(est[k])
    for k in ("tpu_ops", "cpu_ops", "param_bytes", "streamed_bytes"):
        if k in est:
            out[f"edgetpu_{k}"] = float(est[k])
    for k, v in (details.get("drift") or {}).items():
        out[f"drift_{k}"] = float(v)
    comp = details.get("compile") or {}
    for k in ("tpu_ops", "cpu_ops", "on_chip_mib", "off_chip_mib"):
        if comp.get(k) is not None:
            out[f"edgetpu_compiled_{k}"] = float(comp[k])
    return out


# Failures a candidate causes, which the study survives (Optuna's ``catch``).
CANDIDATE_FAILURES = (CandidateFailed,)
