"""The study loop: open the study, let Optuna run the trial pipeline, tag the Pareto front, export for the budget."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from nas.accuracy.imagenet import IMAGENET_CLASSES, ImageNetAccuracy
from nas.accuracy.reeval import reevaluate
from nas.accuracy.train import Recipe, resolve_device
from nas.config import SearchConfig, workdir_path
from nas.core import names
from nas.core.errors import NasError
from nas.core.records import TrialRecord, best_under_budget, pareto_front, record_of
from nas.core.stores import cache_url, check_stores, setup_lock, study_storage_url
from nas.core.workers import WORKER_DIED
from nas.data.datasets import load_dataset, train_resolution
from nas.export import review as mlflow_review
from nas.export.bundle import ExportResult, bundle_name, export_best
from nas.export.plots import front_json, plot_pareto
from nas.latency.cache import MeasurementCache
from nas.latency.gate import PredictorGate
from nas.latency.measure import measured_archs, scratch_dir
from nas.latency.targets import make_target
from nas.predictors.base import predictor_path
from nas.search.progress import Progress
from nas.search.screen import evolve, latency_model
from nas.search.study import active_workers, open_study
from nas.search.trial import CANDIDATE_FAILURES, TrialContext, objective
from nas.search_spaces.factorized import make_space
from nas.tracking.client import Tracker


@dataclass
class SearchSummary:
    study: str
    records: list[TrialRecord]
    export: ExportResult | None
    export_error: str | None
    parent_run_id: str
    interrupted: bool = False
    deferred: bool = False  # another worker was still running: it exports
    experiment_id: str = ""  # MLflow's, for the link to the front in the UI


# What counts toward study.max_trials, the budget many workers share: finished, skipped and running trials.
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


def study_full(study: optuna.Study, n: int | None) -> bool:
    """Whether the study already holds ``n`` counted trials (the check Optuna's MaxTrialsCallback makes)."""
    return n is not None and len(study.get_trials(deepcopy=False, states=COUNTED)) >= n


def run_search(cfg: SearchConfig, log: Any = print) -> SearchSummary:
    started = time.time()
    workdir = workdir_path(cfg.workdir)
    # Everything that can fail on bad input fails before anything is written.
    cfg.check_accuracy_keys()
    data, imagenet, prior = None, None, None
    if cfg.trains:
        largest = max(train_resolution(r, cfg.dataset.proxy_scale, cfg.dataset.min_resolution)
                      for r in cfg.search_space.resolution)
        data = load_dataset(cfg.dataset, largest)
        prior = ImageNetAccuracy(cfg.accuracy.model)  # rung 0: ranks the first candidates before they have peers
    else:
        imagenet = ImageNetAccuracy(cfg.accuracy.model)
    num_classes = data.num_classes if data is not None else IMAGENET_CLASSES
    recipe = make_recipe(cfg)
    target = make_target(cfg.target)
    space = make_space(cfg.search_space)
    check_stores(workdir)  # a damaged store is one line, before anything is written

    tracker = Tracker(workdir, cfg.study.experiment, cfg.tracking.uri)
    opened = open_study(cfg, workdir, target, space, tracker, num_classes)
    study, name = opened.study, opened.study.study_name
    if opened.reaped:
        log(f"trial(s) {', '.join(map(str, opened.reaped))} of a process that died were marked failed "
            f"({WORKER_DIED})")
    if (warning := target.warning()) is not None:
        log(warning)
    cache = MeasurementCache(cache_url(study_storage_url(cfg.study.storage, workdir), workdir))
    gate = PredictorGate(cfg.predictor, str(cfg.target.statistic), cfg.budget_ms, target, cache, num_classes,
                         predictor_path(workdir, cfg.target.name, target.fingerprint(), cfg.predictor.kind))
    if gate.note:
        log(gate.note)
    if cfg.predictor.enabled and not target.predicted:
        log(f"latency predictor: {gate.source}" + ("" if gate.predictor or gate.prior else
            f" (fitted online after {cfg.predictor.min_fit} measurements on this set-up)"))
    log(f"study {name}: {opened.stored} trial(s) stored, adding {cfg.study.n_trials}"
        + (f" (first: {', '.join(opened.enqueued)})" if opened.enqueued else "")
        + f"; budget {cfg.budget_ms:g} ms {cfg.target.statistic} on {cfg.target.name}; workdir {workdir}")
    if imagenet is not None:
        log(f"accuracy: {imagenet.describe()}")
    interrupted = False
    with scratch_dir(workdir) as scratch:
        ctx = TrialContext(cfg, target, data, space, tracker, opened.parent_id, name, cache, gate, scratch, recipe,
                           opened.reap, imagenet, prior)
        callbacks: list[Any] = [Progress(cfg, log, cfg.study.n_trials)]
        if cfg.study.max_trials is not None:
            callbacks.append(optuna.study.MaxTrialsCallback(cfg.study.max_trials, states=COUNTED))

        def optimize(n: int, timeout: float | None) -> None:
            """``n`` trials that are not duplicates: a proposal the study already has is recorded as such (not
            measured) and replaced by another, up to a bound in case the space is nearly exhausted."""
            deadline = None if timeout is None else time.monotonic() + timeout
            spare = max(8, 2 * n)  # replacements allowed for duplicates
            while n > 0:
                before = len(study.trials)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                study.optimize(lambda trial: objective(trial, ctx), n_trials=n, timeout=left,
                               catch=CANDIDATE_FAILURES, callbacks=callbacks, gc_after_trial=False)
                n = sum(1 for t in study.get_trials(deepcopy=False)[before:] if names.DUPLICATE_OF in t.user_attrs
                        and (t.user_attrs.get(names.WORKER) or {}).get("pid") == os.getpid())
                if n > spare:
                    log(f"the sampler keeps proposing archs the study already has ({n} more): the space looks "
                        "nearly exhausted; stopping this run")
                    return
                spare -= n
                if study_full(study, cfg.study.max_trials):
                    return

        try:
            if study_full(study, cfg.study.max_trials):
                log(f"the study already holds study.max_trials={cfg.study.max_trials} trials: nothing to add")
            elif imagenet is None:
                optimize(cfg.study.n_trials, cfg.study.timeout_s)
            else:
                screen_and_measure(cfg, study, space, imagenet, gate, cache, target, num_classes, optimize, log)
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: finished trials are kept; run the same command again to resume")

    records = [record_of(name, t) for t in study.trials]
    if not interrupted and (others := active_workers(study)):
        log(f"{others} other worker(s) still running trials on this study: the last to finish tags the Pareto "
            "front, re-evaluates and exports")
        return SearchSummary(name, records, None, None, opened.parent_id, interrupted, deferred=True,
                             experiment_id=tracker.experiment_id)
    if cfg.predictor.enabled and not target.predicted:
        log(gate.summary())
    elif target.predicted:
        log(f"{gate.stats.skipped} candidate(s) not trained: predicted surely over budget")
    export, export_error = None, None
    url = study_storage_url(cfg.study.storage, workdir)
    with setup_lock(url, workdir):  # workers that finish together: one tags, re-evaluates and exports
        done = sum(r.state == "complete" for r in records)
        mark = study.user_attrs.get(names.STUDY_EXPORTED) or {}
        if mark.get("complete") == done and mark.get("at", 0) > started and not interrupted:
            log(f"worker {mark.get('worker')} exported this study's {done} trial(s) a moment ago")
            return SearchSummary(name, records, None, None, opened.parent_id, interrupted, deferred=True,
                                 experiment_id=tracker.experiment_id)
        finish_tracking(cfg, workdir, tracker, opened.parent_id, name, records)
        try:
            reevals = [] if interrupted or data is None else \
                reevaluate(cfg, {name: study}, records, data, type(target), recipe, tracker, log)
            export = export_best(cfg, records, target.fingerprint(), num_classes, tracker, opened.parent_id,
                                 list(cfg.overrides), reevals, imagenet)
        except NasError as e:
            export_error = str(e)
        except KeyboardInterrupt:
            interrupted = True
            export_error = "interrupted during the re-evaluation: run the same command to finish it"
        study.set_user_attr(names.STUDY_EXPORTED, {"complete": done, "at": time.time(),
                                                   "worker": f"{socket.gethostname()}:{os.getpid()}"})
    tracker.end(opened.parent_id, "KILLED" if interrupted else "FINISHED")
    return SearchSummary(name, records, export, export_error, opened.parent_id, interrupted,
                         experiment_id=tracker.experiment_id)


def screen_and_measure(cfg: SearchConfig, study: optuna.Study, space: Any, imagenet: ImageNetAccuracy,
                       gate: PredictorGate, cache: MeasurementCache, target: Any, num_classes: int,
                       optimize: Any, log: Any) -> None:
    """accuracy=imagenet: rounds of screening on the predictors, each followed by measuring its picks (queued
    trials, such as the references, run first). The sampler proposes only when screening has nothing to offer."""
    deadline = None if cfg.study.timeout_s is None else time.monotonic() + cfg.study.timeout_s
    rng = np.random.default_rng(cfg.study.seed + len(study.trials))
    remaining, screened, rounds, measured = cfg.study.n_trials, 0, 0, 0
    while remaining > 0 and not study_full(study, cfg.study.max_trials):
        waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
        n = min(remaining, waiting)
        if not n:
            latency, how = screening_latency(gate, cache, target, num_classes, str(cfg.target.statistic))
            picks = []
            if latency is not None:
                known = {t.user_attrs.get(names.ARCH_HASH) for t in study.trials}
                result = evolve(space, imagenet.top1, latency, cfg.budget_ms, min(cfg.accuracy.batch, remaining),
                                known, rng, cfg.accuracy.population, cfg.accuracy.generations)
                picks, screened, rounds = result.picks, screened + result.screened, rounds + 1
                for p in picks:
                    study.enqueue_trial(p.params, user_attrs={names.SCREENED: {
                        "round_candidates": result.screened, "predicted_top1": p.top1,
                        "predicted_latency_ms": p.latency_ms, "predicted_latency_std_ms": p.latency_std_ms,
                        "z": p.z}})
                log(f"screened {result.screened} candidates on the predictors (top-1: accuracy model; latency: "
                    f"{how}); measuring {len(picks)}: " + ", ".join(
                        f"{p.arch.hash[:8]} {p.top1:.1f}% ~{p.latency_ms:.1f}±{p.latency_std_ms:.1f} ms"
                        for p in picks))
            n = min(remaining, max(len(picks), 1))  # nothing picked: the sampler proposes one
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        optimize(n, left)
        remaining -= n
        measured += n
    study.set_user_attr(names.STUDY_SCREENED, study.user_attrs.get(names.STUDY_SCREENED, 0) + screened)
    log(f"screening: {screened} candidates scored on the predictors in {rounds} round(s); {measured} trial(s) run "
        "on the target (the references and the picks)")


def screening_latency(gate: PredictorGate, cache: MeasurementCache, target: Any, num_classes: int,
                      statistic: str) -> tuple[Any, str]:
    """The latency predictor screening uses, and what it is: a fitted predictor file, else ``latency_model`` fitted
    now on every latency of this set-up (measured, or the target's own predictions); None before three latencies
    exist (the references come first)."""
    if gate.predictor is not None and gate.source.startswith("fitted"):
        return gate.predictor.predict, f"predictor {gate.source}"
    archs, stats = measured_archs(cache, target, num_classes)
    if len(archs) < 3:
        return None, "none yet"
    y = np.array([s.value(statistic) for s in stats])
    return (latency_model(archs, y, num_classes),
            f"kernel-sum fit on {len(archs)} {target.latency_source} latencies")


def make_recipe(cfg: SearchConfig) -> Recipe:
    """How candidates are trained: the study's settings on the resolved device (a missing GPU is one line)."""
    return Recipe(batch_size=cfg.study.batch_size, lr=cfg.study.lr, ema_decay=cfg.study.ema_decay,
                  threads=cfg.study.train_threads or os.cpu_count() or 1, device=resolve_device(cfg.study.device))


def finish_tracking(cfg: SearchConfig, workdir: Path, tracker: Tracker, parent_id: str, name: str,
                    records: list[TrialRecord]) -> None:
    """Tag the Pareto trials, log the front plot and table to the parent run, describe both for the MLflow UI."""
    front = {r.number for r in pareto_front(records)}
    for r in records:
        if r.state == "complete" and r.run_id:
            tracker.log(r.run_id, tags={names.PARETO: str(r.number in front).lower()})
    done = [r for r in records if r.state == "complete"]
    best = best_under_budget(records, cfg.budget_ms)
    tracker.log(parent_id, {
        "trials_complete": len(done), "trials_failed": sum(r.state == "failed" for r in records),
        "pareto_size": len(front), **({"best_accuracy_under_budget": best.accuracy} if best else {})})
    stat = str(cfg.target.statistic)
    tracker.describe_experiment(mlflow_review.experiment_note(cfg.study.experiment, tracker.experiment_id))
    tracker.describe(parent_id, mlflow_review.study_note(name, tracker.experiment_id, records, cfg.budget_ms, stat,
                                                         cfg.target.name, bundle_name(cfg.target.name, cfg.budget_ms)))
    if not done:
        return
    plots = workdir / "plots"
    png, html = plots / f"{name}-pareto.png", plots / f"{name}-pareto.html"
    title = f"{name}: {len(done)} trials, budget {cfg.budget_ms:g} ms ({cfg.target.statistic})"
    plot_pareto(records, cfg.budget_ms, str(cfg.target.statistic), title, png, html)
    tracker.log_artifact(parent_id, png, "pareto")
    tracker.log_artifact(parent_id, html, "pareto")
    tracker.log_text(parent_id, front_json(records), "pareto/front.json")
    tracker.log_table(parent_id, mlflow_review.front_table(records, stat), names.FRONT_TABLE)
