"""The export bundle for a budget: model.onnx, arch.json, model_card.json and model_card.md, written atomically."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.accuracy.imagenet import ImageNetAccuracy, predicted_text
from nas.accuracy.reeval import Reevaluation, at_fidelity, pick, ranked
from nas.config import Precision, SearchConfig, workdir_path
from nas.core import names
from nas.core.errors import NoFeasibleTrial
from nas.core.records import TrialRecord, fastest
from nas.export.model import register_export
from nas.latency.measure import deploy_shape
from nas.latency.onnx_export import export_onnx
from nas.latency.runtimes import card_runtimes, card_runtimes_md
from nas.latency.targets.base import targets
from nas.search_spaces.build import build_model
from nas.search_spaces.timm_module import module_source, preprocessing, timm_name
from nas.tracking.client import Tracker


@dataclass(frozen=True)
class ExportResult:
    path: Path
    trial: TrialRecord
    card: dict[str, Any]


def bundle_name(target: str, budget_ms: float) -> str:
    return f"{target}-{budget_ms:g}ms"


def choose(records: list[TrialRecord], budget_ms: float, statistic: str) -> TrialRecord:
    """Without re-evaluations: the best feasible trial at the highest fidelity reached; else why there is none."""
    best = ranked(records, budget_ms)
    if best:
        return best[0]
    quick = fastest(records)
    skipped = [r for r in records if r.state == "skipped" and "predicted_ms" in r.attrs]
    if quick is None and skipped:  # a search ran, but every candidate was predicted surely over the budget
        low = min(skipped, key=lambda r: r.attrs["predicted_ms"])
        raise NoFeasibleTrial(
            f"no trial meets budget_ms={budget_ms:g} ({statistic}): all {len(skipped)} trial(s) were predicted surely "
            f"over it, the lowest trial {low.number} ({low.label}) at {low.attrs['predicted_ms']:.2f} ms: raise the "
            "budget or narrow the space to smaller models")
    if quick is None:
        raise NoFeasibleTrial(f"no completed trial to export yet for budget {budget_ms:g} ms: run `nas search` first")
    over = sorted(r.latency_ms - budget_ms for r in records if r.state == "complete")
    suggest = math.ceil(quick.latency_ms * 1.05 * 10) / 10  # 5% above the front's start: noise headroom
    raise NoFeasibleTrial(
        f"no trial meets budget_ms={budget_ms:g} ({statistic}): all {len(over)} completed trial(s) were over it by "
        f"{over[0]:.2f}-{over[-1]:.2f} ms (median {statistics.median(over):.2f})"
        + (f", {len(skipped)} more predicted over it" if skipped else "")
        + f"; the fastest is trial {quick.number} ({quick.label}) at {quick.latency_ms:.2f} ms, where this study's "
        f"Pareto front starts: try budget_ms={suggest:g}, or a space of smaller models")


def timm_snippet(record: TrialRecord, num_classes: int, timm: str) -> str:
    """The card's build lines. The timm build code itself is written once, in the bundle's timm_register.py
    (search_spaces/timm_module.py); this only points at it, or at nas."""
    return "\n".join([
        f"# by its timm name, beside the bundle's {names.TIMM_MODULE} (needs timm only, not nas):",
        "import timm, timm_register",
        f"model = timm.create_model('{timm}', num_classes={num_classes})",
        "# or with nas:",
        "import json",
        "from nas.core.arch import Arch",
        "from nas.search_spaces.build import build_model",
        "arch = Arch.from_dict(json.load(open('arch.json'))['arch'])",
        f"model = build_model(arch, num_classes={num_classes})  # timm {record.arch.family} class, block strings below",
    ])


def swap_in(new: Path, out_dir: Path) -> None:
    """Put the complete folder ``new`` at ``out_dir``, replacing the bundle there. Two exports to one budget take
    turns (a lock beside the folder), and each moves the old bundle aside under a name of its own."""
    from filelock import FileLock

    with FileLock(out_dir.with_name(f".{out_dir.name}.lock")):
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{out_dir.name}-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            os.replace(new, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(new, out_dir)


def write_bundle(cfg: SearchConfig, record: TrialRecord, fingerprint: dict[str, Any], num_classes: int,
                 out_dir: Path, command: list[str], accuracy: dict[str, Any]) -> ExportResult:
    """Write the bundle for ``record`` into ``out_dir``, replacing an older one only once complete. ``command``:
    the overrides of the search that made the trial's study (the card's reproduce line)."""
    arch = record.arch
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the bundle is for the training team
    try:
        model = build_model(arch, num_classes=num_classes, seed=0)
        shape = deploy_shape(cfg.target, arch)
        export_onnx(model, shape, tmp / "model.onnx", str(cfg.target.exporter), cfg.target.opset,
                    fp16=cfg.target.precision == Precision.fp16)
        backend = targets.get(cfg.target.backend).factory  # its class: no device is needed to write a bundle
        deployables = backend.bundle_files(cfg.target, model, shape, tmp)
        arch_doc = {"arch": arch.to_dict(), "hash": arch.hash, "timm_block_strings": arch.block_strings(),
                    "family": arch.family}
        (tmp / "arch.json").write_text(json.dumps(arch_doc, indent=2))
        timm = timm_name(cfg.target.name, cfg.budget_ms)
        (tmp / names.TIMM_MODULE).write_text(module_source(arch, num_classes, timm, (
            f"nas export {bundle_name(cfg.target.name, cfg.budget_ms)}: trial {record.number} of study "
            f"{record.study}, within {cfg.budget_ms:g} ms {cfg.target.statistic} on target {cfg.target.name}.")))
        card = {**_card(cfg, record, fingerprint, num_classes, command, backend.deploy_note(cfg.target)),
                "accuracy": accuracy, names.TIMM_NAME: timm, **deployables}
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2))
        (tmp / "model_card.md").write_text(_card_md(card))
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out_dir, record, card)


def predicted_note(fingerprint: dict[str, Any], r: TrialRecord) -> str:
    band = r.latency.std / r.latency.mean if r.latency and r.latency.mean else float("nan")
    return (f"PREDICTED, not measured: no Edge TPU was reachable, so this latency comes from the analytic Edge TPU "
            f"model (predictors/edgetpu_model.py) calibrated on published Coral timings, for host "
            f"{fingerprint.get('host', '?')} at the {fingerprint.get('clock', '?')} clock; its error band is about "
            f"±{band:.0%} (the median leave-one-architecture-out error of such models); measure it on the device "
            "before relying on it (nas measure target=edge_tpu target.edgetpu.mode=measure)")


def _card(cfg: SearchConfig, r: TrialRecord, fingerprint: dict[str, Any], num_classes: int, command: list[str],
          deploy_note: str) -> dict[str, Any]:
    stat = str(cfg.target.statistic)
    epochs = r.attrs.get(names.FIDELITY, "?")
    source = r.latency.source if r.latency else "measured"
    return {
        "name": bundle_name(cfg.target.name, cfg.budget_ms),
        "target": cfg.target.name,
        "fingerprint": fingerprint,
        "budget_ms": cfg.budget_ms,
        "budget_statistic": stat,
        "latency_source": source,
        **({"latency_note": predicted_note(fingerprint, r)} if source == "predicted" else {}),
        "precision": str(cfg.target.precision),
        "scope": str(cfg.target.scope),
        "latency_ms": r.latency.to_dict() if r.latency else {stat: r.latency_ms},
        "meets_budget": r.latency_ms <= cfg.budget_ms,
        "accuracy_top1": r.accuracy,  # the search's objective (trained: the first rung's figure); see "accuracy"
        "train_resolution": r.attrs.get(names.TRAIN_RESOLUTION),
        "accuracy_dataset": "ImageNet-1k top-1 predicted by the accuracy model (no training)" if not cfg.trains
                            else f"{cfg.dataset.name}"
                            + (f" (a subset of {cfg.dataset.max_images} images)" if cfg.dataset.max_images else "")
                            + f" at {r.attrs.get(names.TRAIN_RESOLUTION, '?')}px, "
                            f"{epochs}-epoch proxy training (not a final accuracy; how well such short trainings rank "
                            "architectures: docs/accuracy.md, Spearman 0.01 on digits and -0.17 on elpv)"
                            + ("; top-1 of the int8 model as deployed" if cfg.target.precision == Precision.int8
                               else ""),
        "params": r.params,
        "macs": r.macs,
        "deploy_input_shape": list(deploy_shape(cfg.target, r.arch)),
        "num_classes": num_classes,
        "study": r.study,
        "trial": r.number,
        "reference": r.attrs.get(names.REFERENCE),
        "arch_hash": r.arch.hash,
        "timm_block_strings": r.arch.block_strings(),
        "build": timm_snippet(r, num_classes, timm_name(cfg.target.name, cfg.budget_ms)),
        "preprocessing": preprocessing(r.arch),
        "reproduce": reproduce_command(command),
        "weights": "model.onnx carries seeded random weights: it is the architecture at the deployment shape, "
                   "to be trained by the training team" + deploy_note,
        "runtimes": card_runtimes(cfg, r.arch, num_classes),
    }


def reproduce_command(overrides: list[str]) -> str:
    """The search as it was run: exactly the overrides Hydra received (quoted for a POSIX shell)."""
    import shlex

    return " ".join(["nas search", *(shlex.quote(o) for o in overrides)])


def _interval_md(lat: dict[str, Any], stat: str) -> str:
    """The measurement's uncertainty, as the card states it: interval, rounds, settled or not."""
    lo_hi = (lat.get("ci") or {}).get(stat)
    if not lo_hi:
        return ""
    settled = "settled" if lat.get("settled", True) else "NOT settled within the time limit: treat with care"
    basis = (f"the {stat} of all {lat.get('n')} runs pooled" if stat in ("p95", "p99")
             else f"the median of each round's {stat}")
    return (f"; {basis}; 95% interval {lo_hi[0]:.3f}-{lo_hi[1]:.3f} ms over {lat.get('rounds')} rounds, rounds spread "
            f"{lat.get('round_spread', 0.0):.1%}, {settled}")


def _accuracy_md(a: dict[str, Any]) -> str:
    if a.get("figure") == "predicted":
        return predicted_text(a)
    where = f"{a['dataset']}, {a['epochs']} epochs at {a['train_resolution']} px"
    report = (f"{a['report_mean']:.4f} on the half of the validation images never used to choose; "
              if a.get("report_mean") is not None else "")
    if a.get("std") is None:
        return f"{report}{a['mean']:.4f} on the selection half (one run, {where}; not re-evaluated)"
    tied = [t["label"] for t in a.get("tied", []) if t["mean"] != a["mean"]]
    return (f"{report}{a['mean']:.4f} ± {a['std']:.4f} on the selection half (mean ± std over seeds {a['seeds']}, "
            f"{where})"
            + (f"; tied within one standard error with {', '.join(tied)}: the faster was chosen" if tied else ""))


def _preprocessing_md(c: dict[str, Any]) -> str:
    p = c.get("preprocessing")
    if not p:
        return "not recorded (an older bundle)"
    return (f"Input {p['input_size'][1]}x{p['input_size'][2]} RGB; resize with {p['interpolation']} interpolation to "
            f"{p['input_size'][1]} / {p['crop_pct']} and centre-crop (evaluation); normalise with mean "
            f"{tuple(p['mean'])} and std {tuple(p['std'])} (ImageNet's). `timm_register.py` declares the same in the "
            "model's timm config, so timm's `train.py` and `validate.py` use it.")


def _card_md(c: dict[str, Any]) -> str:
    lat = c["latency_ms"]
    rows = "\n".join(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in lat.items()
                     if k != "ci")
    fp = "\n".join(f"- {k}: {v}" for k, v in c["fingerprint"].items())
    budget_stat = lat.get(c["budget_statistic"], float("nan"))
    interval = _interval_md(lat, c["budget_statistic"])
    return f"""# {c['name']}: the most accurate searched model within {c['budget_ms']:g} ms ({c['budget_statistic']})

Study `{c['study']}`, trial {c['trial']}{f" (timm's `{c['reference']}`)" if c['reference'] else ''}.
Latency is **{c['latency_source']}** on target `{c['target']}`; accuracy: {c['accuracy_dataset']}.
{f"{chr(10)}> **{c['latency_note']}**{chr(10)}" if c.get('latency_note') else ''}
| | |
|---|---|
| top-1 | {_accuracy_md(c['accuracy'])} |
| latency {c['budget_statistic']} | {budget_stat:.3f} ms (budget {c['budget_ms']:g} ms){interval} |
| parameters | {c['params']:,} |
| MACs | {c['macs']:,} |
| deployment input | {c['deploy_input_shape']} |

{card_runtimes_md(c.get('runtimes', {}))}

## Latency statistics (ms)

| statistic | value |
|---|---|
{rows}

## Target fingerprint

{fp}

## timm block strings

```
{json.dumps(c['timm_block_strings'], indent=1)}
```

## Build it

```python
{c['build']}
```

## Preprocessing

{_preprocessing_md(c)}

## Reproduce the search

```
{c['reproduce']}
```

{c['weights']}.
Python {sys.version.split()[0]}.
"""


def predicted_accuracy(record: TrialRecord, records: list[TrialRecord], budget_ms: float,
                       imagenet: ImageNetAccuracy) -> dict[str, Any]:
    """accuracy=imagenet: the export's predicted top-1, what it means, and its margin over the most accurate
    reference that meets the same measured budget (the claim a training team checks)."""
    refs = [r for r in records if r.attrs.get(names.REFERENCE) and r.feasible(budget_ms)]
    ref = max(refs, key=lambda r: (r.accuracy, -r.latency_ms)) if refs else None
    return {
        "figure": "predicted", "top1": record.accuracy, "mean": record.accuracy,
        "std": record.attrs.get(names.ACCURACY_STD), "unit": imagenet.unit, "source": imagenet.describe(),
        "domain": record.attrs.get(names.ACCURACY_DOMAIN), "model": imagenet.path or "shipped",
        "fit": imagenet.figures, "seeds": [], "epochs": None, "dataset": "imagenet (predicted)",
        "reference": None if ref is None else {
            "name": ref.attrs[names.REFERENCE], "top1": ref.accuracy, "std": ref.attrs.get(names.ACCURACY_STD),
            "latency_ms": ref.latency_ms},
        "margin": None if ref is None else record.accuracy - ref.accuracy,
    }


def export_best(cfg: SearchConfig, records: list[TrialRecord], fingerprint: dict[str, Any], num_classes: int,
                tracker: Tracker, run_id: str, command: list[str],
                reevals: list[Reevaluation] | None = None, imagenet: ImageNetAccuracy | None = None) -> ExportResult:
    """Write the budget's bundle and register it in MLflow as ``nas-<target>-<budget>ms``: the re-evaluated
    winner when there are re-evaluations, else the best trial at the highest fidelity reached (with
    accuracy=imagenet: the best predicted top-1 whose measured latency meets the budget)."""
    if imagenet is not None:
        record = choose(records, cfg.budget_ms, str(cfg.target.statistic))
        accuracy = predicted_accuracy(record, records, cfg.budget_ms, imagenet)
        tracker.log(run_id, {"export_top1_predicted": record.accuracy,
                             **({"reference_top1_predicted": accuracy["reference"]["top1"],
                                 "margin_over_reference": accuracy["margin"]} if accuracy["reference"] else {})})
    elif reevals:
        winner, tied = pick(reevals)
        record = winner.record
        accuracy = {"figure": "re-evaluated", "mean": winner.mean, "std": winner.std, "se": winner.se,
                    "seeds": sorted(winner.top1), "epochs": winner.epochs, "train_resolution": winner.resolution,
                    "dataset": cfg.dataset.name, "rule": "best mean top-1; among candidates within one standard "
                    "error of it, the fastest", "tied": [t.to_dict() for t in tied],
                    "candidates": [r.to_dict() for r in reevals],
                    "selected_on": "the selection half of the validation images",
                    "report_mean": winner.report_mean,  # the other half: never used to choose
                    **({"failed_seeds": {str(k): v for k, v in sorted(winner.failed.items())}}
                       if winner.failed else {})}
        tracker.log(run_id, {"export_top1_mean": winner.mean, "export_top1_std": winner.std})
    else:
        record = choose(records, cfg.budget_ms, str(cfg.target.statistic))
        accuracy = {"figure": "search", "mean": at_fidelity(record), "std": None, "seeds": [],
                    "epochs": record.attrs.get(names.FIDELITY), "dataset": cfg.dataset.name,
                    "train_resolution": record.attrs.get(names.TRAIN_RESOLUTION),
                    "report_mean": record.attrs.get(names.REPORT_TOP1),
                    "note": "one training run, not re-evaluated (study.reeval_top_k=0): no spread is known"}
    name = bundle_name(cfg.target.name, cfg.budget_ms)
    fingerprint = {**fingerprint, "shape": list(deploy_shape(cfg.target, record.arch))}
    result = write_bundle(cfg, record, fingerprint, num_classes, workdir_path(cfg.workdir) / "exports" / name,
                          command, accuracy)
    tracker.log_artifact(run_id, result.path, f"export/{name}")
    # The registered version is a real MLflow Model (ONNX + PyTorch flavours); the same seed as model.onnx.
    register_export(tracker, run_id, record, result.path, result.card,
                    build_model(record.arch, num_classes=num_classes, seed=0), f"nas-{name}")
    return result
