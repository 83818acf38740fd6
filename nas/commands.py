"""The bodies of ``nas search``, ``nas export`` and ``nas measure``: typed config in, printed result out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import optuna

from nas.arch import Arch
from nas.config import AgentConfig, MeasureConfig, PredictorCmdConfig, SearchConfig
from nas.errors import ConfigError, NasError, StudyNotFound, TargetError, first_line
from nas.latency import measure_arch, scratch_dir
from nas.measure_cache import MeasurementCache
from nas.onnx_export import graph_stats
from nas.records import TrialRecord, pareto_front, record_of
from nas.search import export_best, open_storage, run_search, study_prefix
from nas.search_spaces.references import reference_archs
from nas.stores import check_stores
from nas.targets.factory import make_target
from nas.tracking import Tracker, tracking_uri


def search(cfg: SearchConfig) -> int:
    say = _printer(cfg.format)
    summary = run_search(cfg, log=say)
    say(_table(summary.records, cfg))
    code = 130 if summary.interrupted else 0
    result: dict[str, Any] = {"study": summary.study, "trials": len(summary.records),
                              "complete": sum(r.state == "complete" for r in summary.records),
                              "failed": sum(r.state == "failed" for r in summary.records),
                              "skipped": sum(r.state == "skipped" for r in summary.records),
                              "mlflow_run_id": summary.parent_run_id, "tracking_uri": tracking_uri(_wd(cfg))}
    if summary.export is not None:
        say(f"exported trial {summary.export.trial.number} ({summary.export.trial.label}) to {summary.export.path}")
        result["export"] = _export_json(summary.export)
    else:
        say(f"nas search: error: {summary.export_error}", err=True)
        result["error"] = summary.export_error
        code = code or 1
    say(f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri(_wd(cfg))}")
    if cfg.format == "json":
        print(json.dumps(result))
    return code


def export(cfg: SearchConfig) -> int:
    say = _printer(cfg.format)
    workdir = _wd(cfg)
    if not (workdir / "optuna.db").exists():
        raise StudyNotFound(f"no study in workdir={workdir}: run `nas search` there first")
    check_stores(workdir)
    storage = open_storage(workdir)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    wanted = [cfg.study.name] if cfg.study.name else [n for n in names if n.startswith(study_prefix(cfg) + "-")]
    wanted = [n for n in wanted if n in names]
    if not wanted:
        raise StudyNotFound(f"no study for {study_prefix(cfg)} in {workdir} (studies there: {names or 'none'})")
    records: list[TrialRecord] = []
    facts: dict[str, Any] = {}
    for n in wanted:
        study = optuna.load_study(study_name=n, storage=storage)
        facts = facts or study.user_attrs
        records += [record_of(n, t) for t in study.trials]
    tracker = Tracker(workdir, cfg.study.experiment)
    best_study = max(wanted, key=lambda n: sum(r.study == n for r in records))
    run_id = tracker.study_run(best_study, {})
    try:
        result = export_best(cfg, records, facts.get("fingerprint", {}), int(facts.get("num_classes", 10)),
                             tracker, run_id)
    finally:
        tracker.end(run_id)
    say(f"budget {cfg.budget_ms:g} ms ({cfg.target.statistic}): trial {result.trial.number} of {result.trial.study} "
        f"({result.trial.label}), {result.trial.latency_ms:.2f} ms, top-1 {result.trial.accuracy:.3f} "
        f"-> {result.path}")
    if cfg.format == "json":
        print(json.dumps(_export_json(result)))
    return 0


def measure(cfg: MeasureConfig) -> int:
    say = _printer(cfg.format)
    target = make_target(cfg.target)
    if (warning := getattr(target, "warning", lambda: None)()) is not None:
        say(warning, err=True)
    out: dict[str, Any] = {"target": cfg.target.name, "fingerprint": target.fingerprint()}
    details: dict[str, Any] = {}
    if cfg.model is not None:
        path = Path(cfg.model).expanduser()
        if path.is_dir():
            raise TargetError(f"model={cfg.model} is a directory: give the model file (.onnx or .tflite) inside it")
        if not path.is_file():
            raise TargetError(f"model={cfg.model}: no such file")
        if path.suffix == ".tflite":
            if cfg.target.deploy_format != "tflite":
                raise TargetError(f"model={cfg.model}: target {cfg.target.name} runs ONNX models, not TFLite")
            out.update(model=str(path), params=None, macs=None)
        else:
            try:
                graph = graph_stats(onnx.load(str(path)))
            except Exception as e:
                raise TargetError(f"model={cfg.model} is not a readable ONNX model: "
                                  f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
            if getattr(target, "artifact", "onnx") == "tflite" and cfg.target.runtime == "litert":
                raise TargetError(f"target {cfg.target.name} runs TFLite files: give model=x.tflite, or "
                                  "arch=NAME to convert one of our candidates")
            out.update(model=str(path), params=graph.params, macs=graph.macs)
        stats = target.measure(path)
        if callable(getattr(target, "estimate_dict", None)) and stats.source == "predicted":
            details["estimate"] = target.estimate_dict()
        label = path.name
    else:
        arch = _load_arch(cfg.arch)
        workdir = Path(cfg.workdir).expanduser().resolve()
        check_stores(workdir, ("measurements.db",))
        with scratch_dir(workdir) as scratch:
            lat = measure_arch(arch, target, cfg.target, MeasurementCache(workdir / "measurements.db"),
                               scratch / "model.onnx", cfg.num_classes)
        stats, details = lat.stats, lat.details
        out.update(arch=arch.name or arch.hash, arch_hash=arch.hash, params=lat.graph.params, macs=lat.graph.macs,
                   cached=lat.cached)
        label = arch.name or arch.hash
    out["latency_ms"] = stats.to_dict()
    out["latency_source"] = stats.source
    out.update(details)
    size = (f"  params {out['params']:,}  MACs {out['macs']:,}" if out.get("params") is not None else "")
    if stats.source == "predicted":
        est = details.get("estimate") or {}
        parts = "  ".join(f"{k.removesuffix('_ms')} {est[k]:.2f}" for k in
                          ("overhead_ms", "compute_ms", "streaming_ms", "cpu_ms") if k in est)
        ops = (f"  ops on the Edge TPU {est['tpu_ops']}, on the CPU {est['cpu_ops']}" if "tpu_ops" in est else "")
        say(f"{label} on {cfg.target.name}: PREDICTED {stats.p50:.3f} ms ± {stats.std:.3f} ({parts}){ops}{size}")
    else:
        say(f"{label} on {cfg.target.name}: p50 {stats.p50:.3f} ms  p90 {stats.p90:.3f}  p99 {stats.p99:.3f}  "
            f"mean {stats.mean:.3f} ± {stats.std:.3f} (cv {stats.cv:.1%}, n={stats.n}){size}")
        if stats.split_ms:  # pipeline scope: where the time goes (medians of each part)
            say("  split (median ms): " + "  ".join(f"{k} {v:.3f}" for k, v in stats.split_ms.items()))
        if "conversion" in details:
            c = details["conversion"]
            say(f"  TFLite {c['precision']} vs float model: top-1 agreement {c['top1_agreement']:.0%}, "
                f"max relative error {c['rel_error']:.3f} (conversion {c['seconds']:.1f} s)")
        if "compile" in details:
            c = details["compile"]
            say(f"  edgetpu_compiler: {c.get('tpu_ops')} op(s) on the Edge TPU, {c.get('cpu_ops')} on the CPU")
    if cfg.format == "json":
        print(json.dumps(out))
    return 0


def predictor_fit(cfg: PredictorCmdConfig) -> int:
    from nas import predictor_commands

    result = predictor_commands.fit(cfg, _printer(cfg.format))
    if cfg.format == "json":
        print(json.dumps(result))
    return 0


def predictor_eval(cfg: PredictorCmdConfig) -> int:
    from nas import predictor_commands

    result = predictor_commands.evaluate(cfg, _printer(cfg.format))
    if cfg.format == "json":
        print(json.dumps(result))
    return 0


def agent(cfg: AgentConfig) -> int:
    from nas.agent.server import serve

    serve(cfg)
    return 0


def _load_arch(spec: str) -> Arch:
    refs = reference_archs()
    if spec in refs:
        return refs[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"arch={spec} is neither a reference ({', '.join(refs)}) nor an arch.json file")
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object (an Arch, or a bundle's arch.json), found a {type(doc).__name__}")
        return Arch.from_dict(doc.get("arch", doc))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"arch={spec} is not a valid arch.json: {first_line(e)}") from None


def _wd(cfg: SearchConfig) -> Path:
    return Path(cfg.workdir).expanduser().resolve()


def _export_json(result: Any) -> dict[str, Any]:
    t = result.trial
    return {"path": str(result.path), "trial": t.number, "study": t.study, "label": t.label,
            "accuracy": t.accuracy, "latency_ms": t.latency_ms, "budget_ms": result.card["budget_ms"]}


def _table(records: list[TrialRecord], cfg: SearchConfig) -> str:
    front = {r.number for r in pareto_front(records)}
    done = sorted((r for r in records if r.state == "complete"), key=lambda r: r.latency_ms)
    counts = {s: sum(r.state == s for r in records) for s in ("failed", "skipped")}
    lines = [f"\n{len(records)} trials: {len(done)} complete, {counts['failed']} failed, {counts['skipped']} skipped "
             "by the latency predictor",
             f"{'trial':>5}  {'arch':<22} {cfg.target.statistic + ' ms':>8} {'top-1':>6} {'params':>10} "
             f"{'MMACs':>7}  budget  pareto"]
    if any(r.latency is not None and r.latency.source == "predicted" for r in done):
        lines[0] += "\nlatencies are PREDICTED by the analytic Edge TPU model, not measured"
    for r in done:
        lines.append(f"{r.number:>5}  {r.label[:22]:<22} {r.latency_ms:>8.2f} {r.accuracy:>6.3f} "
                     f"{r.params or 0:>10,} {(r.macs or 0) / 1e6:>7.0f}  "
                     f"{'ok' if r.latency_ms <= cfg.budget_ms else 'over':<6}  {'*' if r.number in front else ''}")
    return "\n".join(lines)


def _printer(fmt: str) -> Any:
    import sys

    def say(msg: str, err: bool = False) -> None:
        # With format=json, human lines go to stderr so stdout ends in exactly one JSON object.
        print(msg, file=sys.stderr if err or fmt == "json" else sys.stdout, flush=True)

    return say


__all__ = ["NasError", "agent", "export", "measure", "predictor_eval", "predictor_fit", "search"]
