"""A study's identity and opening it: its name, its set-up, its storage, its MLflow parent run, its references.

A study's identity covers everything that changes what a latency means. The name carries what a user chooses
(target, precision, batch, scope, statistic, space, dataset or ``imagenet``, budget:
``cpu-int8-mbconv-imagenet-10ms``), so another set-up opens its own study; the target's fingerprint (device,
runtime versions, protocol) is stored on the study when it is made, and resuming on a different one is refused in
one line rather than mixing figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from nas.config import SearchConfig
from nas.core import names
from nas.core.errors import NasError, StoreError
from nas.core.stores import probe, redact, setup_lock, study_storage_url
from nas.core.workers import WORKER_DIED, is_dead, reap_dead_trials, remove_dead_scratch, this_worker
from nas.latency.targets.base import Target
from nas.search.samplers import make_sampler
from nas.tracking.client import Tracker


class StudyMismatch(NasError):
    """A stored study was measured on another set-up than the one asked for."""


def study_prefix(cfg: SearchConfig) -> str:
    """Target and its set-up, space and dataset: trials of studies sharing it are comparable whatever the budget."""
    tag = cfg.target.setup_tag()
    return f"{cfg.target.name}{'-' + tag if tag else ''}-{cfg.search_space.name}-{cfg.accuracy_domain}"


def study_name(cfg: SearchConfig) -> str:
    return cfg.study.name or f"{study_prefix(cfg)}-{cfg.budget_ms:g}ms"


def open_storage(url: str, workdir: Path, on_stale: Any = None) -> optuna.storages.RDBStorage:
    """The study's Optuna storage (SQLite in the workdir, or a shared database). The heartbeat fails trials of
    workers that stopped beating (a dead machine, another host's kill -9); ``on_stale(study, trial)`` then retries
    the trial once and closes its MLflow run."""
    probe(url, "the study storage")
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with setup_lock(url, workdir):  # schema creation must not race another process's
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=30, grace_period=90,
                                          heartbeat_stale_trial_callback=on_stale)


def check_setup(study: optuna.Study, fingerprint: dict[str, Any]) -> None:
    """Refuse, in one line, to add trials measured on another set-up than the study's."""
    stored = study.user_attrs.get(names.STUDY_FINGERPRINT)
    if not stored or stored == fingerprint:
        return
    diff = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
    shown = "; ".join(f"{k}: {stored.get(k)!r} -> {fingerprint.get(k)!r}" for k in diff[:3])
    raise StudyMismatch(f"study {study.study_name} was measured on another set-up ({shown}): its latencies and this "
                        "run's would not be comparable; start another study (study.name=NEW, or another workdir)")


@dataclass
class OpenedStudy:
    study: optuna.Study
    parent_id: str
    stored: int  # trials before this run
    enqueued: list[str]  # references queued by this run
    reaped: list[int]  # trials of dead workers marked failed by this run
    worker_index: int = 0
    reap: Any = None  # the same, at any later moment (each trial start)


def open_study(cfg: SearchConfig, workdir: Path, target: Target, space: Any, tracker: Tracker,
               num_classes: int) -> OpenedStudy:
    """Create or join the study and its parent run, under the study's setup lock: several workers may start at
    once, on one machine or many; each gets its own sampler seed, the references are enqueued once, and every
    worker's trials nest under one parent run."""
    name = study_name(cfg)
    url = study_storage_url(cfg.study.storage, workdir)
    fingerprint = target.fingerprint()
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)

    def stale(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str = f"{WORKER_DIED} (no heartbeat)"
              ) -> None:
        """A trial whose worker died: closed in MLflow, and run again once by whichever worker comes next."""
        if run_id := trial.user_attrs.get(names.RUN_ID):
            tracker.fail_run(run_id, reason)
        # A reference too: its waiting copy keeps its reference attribute, so enqueue_references will not add
        # another; a survivor that never restarts would otherwise never run it.
        retry(study, trial)

    storage = open_storage(url, workdir, stale)
    with setup_lock(url, workdir):
        study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"],
                                    load_if_exists=True)
        check_setup(study, fingerprint)
        check_tracking(study, tracker, name)  # before anything is written: a refusal leaves the study as it was
        index = register_worker(study)
        # Offset by worker and by what the study holds: concurrent workers, and a resumed run, would otherwise
        # propose the candidates already tried (each then pruned as a duplicate).
        seed = cfg.study.seed + 7919 * index + len(study.trials)
        study.sampler = make_sampler(replace(cfg.study, seed=seed))
        study.set_metric_names([names.ACCURACY, names.latency_metric(str(cfg.target.statistic), target.predicted)])
        # What `nas export` needs later without loading the dataset or the target again.
        study.set_user_attr(names.STUDY_NUM_CLASSES, num_classes)
        study.set_user_attr(names.STUDY_FINGERPRINT, fingerprint)
        study.set_user_attr(names.STUDY_COMMAND, list(cfg.overrides))
        stored = len(study.trials)
        reaped = reap_dead_trials(study, lambda t: stale(study, t, WORKER_DIED))
        remove_dead_scratch(workdir)
        enqueued = enqueue_references(study, space) if cfg.search_space.enqueue_references else []
        parent_id = tracker.study_run(name, {
            "target": cfg.target.name, "search_space": cfg.search_space.name, "accuracy": str(cfg.accuracy.name),
            "dataset": cfg.accuracy_domain,
            "budget_ms": f"{cfg.budget_ms:g}", "statistic": str(cfg.target.statistic)})
        if names.STUDY_TRACKING not in study.user_attrs:
            study.set_user_attr(names.STUDY_TRACKING, {"uri": redact(tracker.uri), "parent_run": parent_id})
    tracker.log(parent_id, tags={names.FINGERPRINT_TAG: json.dumps(fingerprint, sort_keys=True),
                                 names.LATENCY_SOURCE: target.latency_source})
    return OpenedStudy(study, parent_id, stored, enqueued, reaped, index,
                       lambda: reap_dead_trials(study, lambda t: stale(study, t, WORKER_DIED)))


def register_worker(study: optuna.Study) -> int:
    """This process's index among the study's live workers (0 for the first), kept on the study: it offsets the
    sampler's seed, so that two workers never propose the same sequence of candidates."""
    live = [w for w in study.user_attrs.get(names.STUDY_WORKERS, []) if not is_dead(w)]
    me = this_worker()
    used = {w.get("index") for w in live}
    index = next(i for i in range(len(live) + 1) if i not in used)
    study.set_user_attr(names.STUDY_WORKERS, [*live, {**me, "index": index}])
    return index


def active_workers(study: optuna.Study) -> int:
    """Other live workers with a trial running now (the last worker to finish tags the front and exports)."""
    me = this_worker()
    return sum(1 for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
               if (w := t.user_attrs.get(names.WORKER)) and w.get("pid") != me["pid"] and not is_dead(w))


def enqueue_references(study: optuna.Study, space: Any) -> list[str]:
    """Enqueue each of the space's references, unless the study has it done, queued, running, or failed for a
    reason of its own; a reference whose run was interrupted or whose worker died is run again. A reference the
    space cannot express is enqueued with the space's nearest parameters (what the sampler learns from) and
    measured as itself (``trial.start`` builds the reference). Not ``enqueue_trial(skip_if_exists=True)``: that
    matches parameters, and two references can share their nearest parameters; it would also skip a reference
    whose worker died."""
    queued = []
    for ref_name, arch in space.references().items():
        params = space.nearest_params(arch)
        if any(t.user_attrs.get(names.REFERENCE) == ref_name and not _retry(t) for t in study.trials):
            continue
        study.enqueue_trial(params, user_attrs={names.REFERENCE: ref_name})
        queued.append(ref_name)
    return queued


def _retry(t: optuna.trial.FrozenTrial) -> bool:
    """A failed trial that says nothing about its candidate: it was interrupted or its worker died."""
    reason = t.user_attrs.get(names.FAIL_REASON)
    return t.state == optuna.trial.TrialState.FAIL and (reason is None or reason == "interrupted"
                                                        or reason.startswith(WORKER_DIED))


def check_tracking(study: optuna.Study, tracker: Tracker, name: str) -> None:
    """A study whose runs live in another MLflow store (a second worker or machine with its own default
    ``workdir/mlflow.db``) is refused in one line: its trial runs and parent run must share one store."""
    recorded = study.user_attrs.get(names.STUDY_TRACKING) or {}
    has_runs = recorded or any(names.RUN_ID in t.user_attrs for t in study.trials)
    if not has_runs or tracker.find_study_run(name) is not None:
        return
    here = redact(tracker.uri)
    if recorded.get("uri") == here:  # the same store, without the study's runs: replaced or deleted
        raise StoreError(f"study {name}'s MLflow runs (parent run {recorded.get('parent_run')}) are no longer in "
                         f"{here}: restore that store, or start another study (study.name=NEW)")
    where = f"in {recorded['uri']}" if recorded.get("uri") else "in another MLflow store"
    raise StoreError(f"study {name} keeps its MLflow runs {where}, not in this run's {here}: pass that store as "
                     "tracking.uri (workers on several machines share one `mlflow server`)")
