"""The bodies of ``nas search``, ``nas export`` and ``nas measure``: typed config in, printed result out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import onnx
import optuna

from nas.accuracy.imagenet import ImageNetAccuracy
from nas.accuracy.reeval import at_fidelity, ranked, reevaluate
from nas.config import (
    AccuracyCmdConfig,
    AgentConfig,
    MeasureConfig,
    PredictorCmdConfig,
    RuntimesConfig,
    SearchConfig,
    workdir_path,
)
from nas.core import names
from nas.core.errors import NasError, StudyNotFound, TargetError, first_line
from nas.core.records import TrialRecord, pareto_front, record_of, state_counts
from nas.core.stores import check_stores, setup_lock, study_storage_url
from nas.data.datasets import load_dataset, train_resolution
from nas.export.bundle import export_best
from nas.export.review import FILTER_FRONT, runs_link
from nas.latency import runtimes as rt
from nas.latency.cache import MeasurementCache
from nas.latency.measure import measure_arch, scratch_dir
from nas.latency.onnx_export import graph_stats
from nas.latency.targets import make_target
from nas.latency.targets.base import targets
from nas.search.loop import make_recipe, run_search
from nas.search.study import open_storage, study_prefix
from nas.search_spaces.arch_spec import load_arch
from nas.tracking.client import Tracker, tracking_uri

MLFLOW_PORT = 5000  # the port the printed `mlflow ui` command and its link share


def search(cfg: SearchConfig) -> int:
    say = _printer(cfg.format)
    if cfg.study.workers > 1:
        from nas.search.launch import run_workers

        return run_workers(cfg, say)
    summary = run_search(cfg, log=say)
    say(_table(summary.records, cfg))
    code = 130 if summary.interrupted else 0
    result: dict[str, Any] = {"study": summary.study, "trials": len(summary.records),
                              "complete": sum(r.state == "complete" for r in summary.records),
                              "failed": sum(r.state == "failed" for r in summary.records),
                              "skipped": sum(r.state == "skipped" for r in summary.records),
                              "duplicates": sum(r.state == "duplicate" for r in summary.records),
                              "mlflow_run_id": summary.parent_run_id,
                              "tracking_uri": tracking_uri(_wd(cfg), cfg.tracking.uri)}
    if summary.deferred:
        result["export"] = None
    elif summary.export is not None:
        say(f"exported trial {summary.export.trial.number} ({summary.export.trial.label}), top-1 "
            f"{_top1(summary.export)}, to {summary.export.path}")
        result["export"] = _export_json(summary.export)
    else:
        say(f"nas search: error: {summary.export_error}", err=True)
        result["error"] = summary.export_error
        code = code or 1
    uri = tracking_uri(_wd(cfg), cfg.tracking.uri)
    # The link names the model-training view: MLflow 3.17 opens a fresh browser on its GenAI overview otherwise.
    # Filtered to this study: an experiment holds every study (budget) of the workdir.
    front = runs_link(summary.experiment_id, f'tags.`{names.STUDY_TAG}` = "{summary.study}" AND {FILTER_FRONT}')
    mlflow = Path(sys.executable).with_name("mlflow")  # the venv's, which a fresh shell may not have on its PATH
    say(f"MLflow UI, this study's Pareto front: {uri.rstrip('/')}/{front}" if uri.startswith("http") else
        f"MLflow UI: {mlflow if mlflow.exists() else 'mlflow'} ui --port {MLFLOW_PORT} --backend-store-uri {uri}"
        f", then this study's Pareto front: http://127.0.0.1:{MLFLOW_PORT}/{front}")
    if cfg.format == "json":
        print(json.dumps(result))
    return code


def export(cfg: SearchConfig) -> int:
    say = _printer(cfg.format)
    workdir = _wd(cfg)
    if cfg.study.storage is None and not (workdir / "optuna.db").exists():
        raise StudyNotFound(f"no study in workdir={workdir}: run `nas search` there first")
    check_stores(workdir)
    storage = open_storage(study_storage_url(cfg.study.storage, workdir), workdir)
    stored = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    wanted = [cfg.study.name] if cfg.study.name else [n for n in stored if n.startswith(study_prefix(cfg) + "-")]
    wanted = [n for n in wanted if n in stored]
    if not wanted:
        raise StudyNotFound(f"no study for {study_prefix(cfg)} in {workdir} (studies there: {stored or 'none'})")
    studies = {n: optuna.load_study(study_name=n, storage=storage) for n in wanted}
    facts = _one_setup(studies)
    records: list[TrialRecord] = [record_of(n, t) for n, study in studies.items() for t in study.trials]
    tracker = Tracker(workdir, cfg.study.experiment, cfg.tracking.uri)
    best_study = max(wanted, key=lambda n: sum(r.study == n for r in records))
    run_id = tracker.find_study_run(best_study) or tracker.study_run(best_study, {})
    cfg.check_accuracy_keys()
    reevals = []
    # The set-up lock `nas search` holds while it re-evaluates and exports: a search finishing beside this export
    # would otherwise write the same per-seed study attributes, and the last writer would drop the other's seeds.
    with setup_lock(study_storage_url(cfg.study.storage, workdir), workdir):
        # Stored re-evaluations are reused, missing ones run.
        if cfg.trains and cfg.study.reeval_top_k and ranked(records, cfg.budget_ms):
            largest = max(train_resolution(r, cfg.dataset.proxy_scale, cfg.dataset.min_resolution)
                          for r in cfg.search_space.resolution)
            reevals = reevaluate(cfg, studies, records, load_dataset(cfg.dataset, largest),
                                 targets.get(cfg.target.backend).factory, make_recipe(cfg), tracker, say)
        result = export_best(cfg, records, facts[names.STUDY_FINGERPRINT], int(facts[names.STUDY_NUM_CLASSES]),
                             tracker, run_id, list(facts.get(names.STUDY_COMMAND, [])), reevals,
                             None if cfg.trains else ImageNetAccuracy(cfg.accuracy.model))
    say(f"budget {cfg.budget_ms:g} ms ({cfg.target.statistic}): trial {result.trial.number} of {result.trial.study} "
        f"({result.trial.label}), {result.trial.latency_ms:.2f} ms, top-1 {_top1(result)} -> {result.path}")
    if cfg.format == "json":
        print(json.dumps(_export_json(result)))
    return 0


def measure(cfg: MeasureConfig) -> int:
    say = _printer(cfg.format)
    target = make_target(cfg.target)
    if (warning := target.warning()) is not None:
        say(warning, err=True)
    out: dict[str, Any] = {"target": cfg.target.name, "fingerprint": target.fingerprint()}
    if cfg.model is not None:
        path = Path(cfg.model).expanduser()
        if path.is_dir():
            raise TargetError(f"model={cfg.model} is a directory: give the model file (.onnx or .tflite) inside it")
        if not path.is_file():
            raise TargetError(f"model={cfg.model}: no such file")
        target.accepts(path)
        size: dict[str, Any] = {"params": None, "macs": None}
        if path.suffix == ".onnx":
            try:
                graph = graph_stats(onnx.load(str(path)))
            except Exception as e:  # protobuf and shape inference raise many types on a corrupt file
                raise TargetError(f"model={cfg.model} is not a readable ONNX model: {first_line(e)}") from None
            size = {"params": graph.params, "macs": graph.macs}
        m = target.measure(path)
        stats, details = m.stats, m.details
        out.update(model=str(path), **size)
        label = path.name
    else:
        arch = load_arch(cfg.arch, cfg.resolution)
        workdir = workdir_path(cfg.workdir)
        check_stores(workdir, ("measurements.db",))
        with scratch_dir(workdir) as scratch:
            lat = measure_arch(arch, target, MeasurementCache(workdir / "measurements.db"), scratch,
                               cfg.num_classes)
        stats, details = lat.stats, lat.details
        out.update(arch=arch.name or arch.hash, arch_hash=arch.hash, params=lat.graph.params, macs=lat.graph.macs,
                   cached=lat.cached)
        label = arch.name or arch.hash
    out["latency_ms"] = stats.to_dict()
    out["latency_source"] = stats.source
    out.update(details)
    say(_measure_line(label, cfg.target.name, stats, details, out))
    if cfg.format == "json":
        print(json.dumps(out))
    return 0


def _measure_line(label: str, target: str, stats: Any, details: dict[str, Any], out: dict[str, Any]) -> str:
    size = f"  params {out['params']:,}  MACs {out['macs']:,}" if out.get("params") is not None else ""
    if stats.source == "predicted":
        est = details.get("estimate") or {}
        parts = "  ".join(f"{k.removesuffix('_ms')} {est[k]:.2f}" for k in
                          ("overhead_ms", "compute_ms", "streaming_ms", "io_ms", "cpu_ms") if k in est)
        ops = f"  ops on the Edge TPU {est['tpu_ops']}, on the CPU {est['cpu_ops']}" if "tpu_ops" in est else ""
        return f"{label} on {target}: PREDICTED {stats.p50:.3f} ms ± {stats.std:.3f} ({parts}){ops}{size}"
    lines = [f"{label} on {target}: p50 {stats.p50:.3f} ms  p90 {stats.p90:.3f}  p99 {stats.p99:.3f}  "
             f"mean {stats.mean:.3f} ± {stats.std:.3f} (cv {stats.cv:.1%}, n={stats.n}){size}"]
    if stats.split_ms:  # pipeline scope: where the time goes (medians of each part)
        lines.append("  split (median ms): " + "  ".join(f"{k} {v:.3f}" for k, v in stats.split_ms.items()))
    if "conversion" in details:
        c = details["conversion"]
        lines.append(f"  TFLite {c['precision']} vs float model: top-1 agreement {c['top1_agreement']:.0%}, "
                     f"max relative error {c['rel_error']:.3f} (conversion {c['seconds']:.1f} s)")
    if "compile" in details:
        c = details["compile"]
        lines.append(f"  edgetpu_compiler: {c.get('tpu_ops')} op(s) on the Edge TPU, {c.get('cpu_ops')} on the CPU")
    return "\n".join(lines)


def predictor_fit(cfg: PredictorCmdConfig) -> int:
    from nas.cli import predictor as predictor_commands

    result = predictor_commands.fit(cfg, _printer(cfg.format))
    if cfg.format == "json":
        print(json.dumps(result))
    return 0


def predictor_eval(cfg: PredictorCmdConfig) -> int:
    from nas.cli import predictor as predictor_commands

    result = predictor_commands.evaluate(cfg, _printer(cfg.format))
    if cfg.format == "json":
        print(json.dumps(result))
    return 0


def agent(cfg: AgentConfig) -> int:
    from nas.agent.server import serve

    serve(cfg)
    return 0


def _one_setup(studies: dict[str, optuna.Study]) -> dict[str, Any]:
    """The stored set-up (fingerprint, classes) the studies share: studies measured on different set-ups, or one
    that never recorded its set-up, are not merged into one front (their latencies are not comparable)."""
    setups: dict[str, list[str]] = {}
    for n, study in studies.items():
        a = study.user_attrs
        if names.STUDY_FINGERPRINT not in a or names.STUDY_NUM_CLASSES not in a:
            raise StudyNotFound(f"study {n} does not record its set-up (target fingerprint and number of classes): "
                                "run `nas search` on it once more, or name another with study.name=")
        key = json.dumps([a[names.STUDY_FINGERPRINT], a[names.STUDY_NUM_CLASSES]], sort_keys=True)
        setups.setdefault(key, []).append(n)
    if len(setups) > 1:
        groups = "; ".join(", ".join(ns) for ns in setups.values())
        raise StudyNotFound(f"these studies were measured on different set-ups and cannot share one front ({groups}):"
                            " choose one with study.name=NAME")
    return next(iter(studies.values())).user_attrs


def _top1(result: Any) -> str:
    a = result.card["accuracy"]
    if a.get("figure") == "predicted":
        ref = a.get("reference")
        return (f"{a['top1']:.2f} ± {a['std']:.2f} % (predicted ImageNet top-1, {a['domain']})"
                + (f", {a['margin']:+.2f} over {ref['name']} ({ref['top1']:.2f} %, {ref['latency_ms']:.2f} ms)"
                   if ref else ", no reference meets the budget"))
    return (f"{a['mean']:.3f} ± {a['std']:.3f} over {len(a['seeds'])} seeds" if a.get("std") is not None
            else f"{a['mean']:.3f} (one run)") + f" at {a['epochs']} epochs"


def _wd(cfg: SearchConfig) -> Path:
    return workdir_path(cfg.workdir)


def _export_json(result: Any) -> dict[str, Any]:
    t = result.trial
    a = result.card["accuracy"]
    return {"path": str(result.path), "trial": t.number, "study": t.study, "label": t.label,
            "accuracy": a["mean"], "accuracy_std": a["std"], "accuracy_seeds": a["seeds"],
            "accuracy_epochs": a["epochs"], "search_accuracy": t.accuracy, "latency_ms": t.latency_ms,
            "budget_ms": result.card["budget_ms"]}


def _table(records: list[TrialRecord], cfg: SearchConfig) -> str:
    front = {r.number for r in pareto_front(records)}
    done = sorted((r for r in records if r.state == "complete"), key=lambda r: r.latency_ms)
    lines = [f"\n{state_counts(records)}",
             f"{'trial':>5}  {'arch':<22} {str(cfg.target.statistic) + ' ms':>8} {'top-1':>6} {'epochs':>6} "
             f"{'at top':>6} {'px':>4} {'params':>10} {'MMACs':>7}  budget  pareto"]
    if any(r.latency is not None and r.latency.source == "predicted" for r in done):
        lines[0] += "\nlatencies are PREDICTED by the analytic Edge TPU model, not measured"
    for r in done:
        fid = r.attrs.get(names.FIDELITY, 0)
        top = f"{at_fidelity(r):>6.3f}" if cfg.trains and fid > cfg.study.rungs[0] else f"{'':>6}"
        res = r.attrs.get(names.TRAIN_RESOLUTION) or r.arch.resolution if r.arch else "?"
        lines.append(f"{r.number:>5}  {r.label[:22]:<22} {r.latency_ms:>8.2f} {r.accuracy:>6.3f} "
                     f"{fid:>6} {top} {res:>4} "
                     f"{r.params or 0:>10,} {(r.macs or 0) / 1e6:>7.0f}  "
                     f"{'ok' if r.latency_ms <= cfg.budget_ms else 'over':<6}  {'*' if r.number in front else ''}")
    lines.append("top-1: predicted ImageNet-1k top-1 (%) from the accuracy model (epochs 0: nothing trained)"
                 if not cfg.trains else
                 f"top-1: every trial's figure after the first rung ({cfg.study.rungs[0]} epoch(s)), the one the front "
                 "compares; 'at top': the figure at the highest rung it reached (epochs), which ranks the "
                 "re-evaluation")
    return "\n".join(lines)


def _printer(fmt: str) -> Any:
    import sys

    def say(msg: str, err: bool = False) -> None:
        # With format=json, human lines go to stderr so stdout ends in exactly one JSON object.
        print(msg, file=sys.stderr if err or fmt == "json" else sys.stdout, flush=True)

    return say


def accuracy_fit(cfg: AccuracyCmdConfig) -> int:
    from nas.cli.accuracy import fit

    return fit(cfg, _printer(cfg.format))


def accuracy_eval(cfg: AccuracyCmdConfig) -> int:
    from nas.cli.accuracy import evaluate

    return evaluate(cfg, _printer(cfg.format))


def accuracy_predict(cfg: AccuracyCmdConfig) -> int:
    from nas.cli.accuracy import predict

    return predict(cfg, _printer(cfg.format))


__all__ = ["NasError", "accuracy_eval", "accuracy_fit", "accuracy_predict", "agent",
           "export", "measure", "predictor_eval", "predictor_fit", "runtimes", "search"]


def runtimes(cfg: RuntimesConfig) -> int:
    """The body of `nas runtimes`: the table (or JSON) for one architecture."""
    say = _printer(cfg.format)
    arch = load_arch(cfg.arch)
    workdir = workdir_path(cfg.workdir)
    check_stores(workdir, ("measurements.db",))
    rows = rt.measure_runtimes(arch, cfg.target, list(cfg.runtimes), workdir, cfg.num_classes)
    stat = str(cfg.target.statistic)
    best = rt.fastest(rows, stat)
    say(f"{arch.name or arch.hash} at {arch.resolution} px, {cfg.target.threads} thread(s), {cfg.target.precision}, "
        f"batch {cfg.target.input_shape[0]}:")
    say(rt.table(rows, stat))
    say(f"fastest ({stat}): {best.name} ({best.runtime})" if best else "no runtime could measure it")
    if cfg.format == "json":
        print(json.dumps({"arch": arch.name or arch.hash, "arch_hash": arch.hash, "statistic": stat,
                          "runtimes": [r.to_dict() for r in rows], "fastest": best.name if best else None}))
    return 0 if best else 1
