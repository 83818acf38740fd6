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

from nas.build import build_model
from nas.config import SearchConfig
from nas.errors import NoFeasibleTrial
from nas.latency import deploy_shape
from nas.onnx_export import export_onnx
from nas.records import TrialRecord, best_under_budget, fastest


@dataclass(frozen=True)
class ExportResult:
    path: Path
    trial: TrialRecord
    card: dict[str, Any]


def bundle_name(target: str, budget_ms: float) -> str:
    return f"{target}-{budget_ms:g}ms"


def choose(records: list[TrialRecord], budget_ms: float, statistic: str) -> TrialRecord:
    best = best_under_budget(records, budget_ms)
    if best is not None:
        return best
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


def timm_snippet(record: TrialRecord, num_classes: int) -> str:
    arch = record.arch
    cls = ("mobilenetv3 import MobileNetV3 as Net" if arch.family == "mobilenetv3"
           else "efficientnet import EfficientNet as Net")
    return "\n".join([
        "from nas.arch import Arch",
        "from nas.build import build_model",
        "arch = Arch.from_json(open('arch.json').read())",
        f"model = build_model(arch, num_classes={num_classes})  # timm {arch.family} class, block strings below",
        "# or with timm alone:",
        "from functools import partial",
        "from timm.models._efficientnet_builder import decode_arch_def, round_channels",
        f"from timm.models.{cls}",
        f"model = Net(block_args=decode_arch_def({arch.block_strings()!r}), num_classes={num_classes},",
        f"            stem_size={arch.stem_size}, num_features={arch.num_features}, act_layer='{arch.act}',",
        f"            round_chs_fn=partial(round_channels, multiplier={arch.width:g}))"
        + ("  # + hard-sigmoid SE, see nas/build.py" if arch.family == "mobilenetv3" else ""),
    ])


def write_bundle(cfg: SearchConfig, record: TrialRecord, fingerprint: dict[str, Any], num_classes: int,
                 out_dir: Path) -> ExportResult:
    """Write the bundle for ``record`` into ``out_dir``, replacing an older one only once complete."""
    arch = record.arch
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the bundle is for the training team
    try:
        model = build_model(arch, num_classes=num_classes, seed=0)
        export_onnx(model, deploy_shape(cfg.target, arch), tmp / "model.onnx", cfg.target.exporter,
                    cfg.target.opset, fp16=cfg.target.precision == "fp16")
        deployables = _deployables(cfg, model, deploy_shape(cfg.target, arch), tmp)
        arch_doc = {"arch": arch.to_dict(), "hash": arch.hash, "timm_block_strings": arch.block_strings(),
                    "family": arch.family}
        (tmp / "arch.json").write_text(json.dumps(arch_doc, indent=2))
        card = {**_card(cfg, record, fingerprint, num_classes), **deployables}
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2))
        (tmp / "model_card.md").write_text(_card_md(card))
        if out_dir.exists():
            old = out_dir.with_name(f".old-{out_dir.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out_dir, record, card)


def _deployables(cfg: SearchConfig, model: Any, shape: tuple[int, int, int, int], out: Path) -> dict[str, Any]:
    """The TFLite file (and the Edge TPU compilation, where the compiler exists) for targets that run TFLite."""
    if cfg.target.deploy_format != "tflite":
        return {}
    from nas.tflite_convert import to_tflite

    name = f"model_{cfg.target.precision}.tflite"
    conv = to_tflite(model, shape, out / name, cfg.target.precision)
    doc: dict[str, Any] = {"tflite": {"file": name, **{k: v for k, v in conv.to_dict().items() if k != "path"},
                                      "calibration": "seeded noise (the weights are random too): re-quantize the "
                                                     "trained model with real images"}}
    if cfg.target.runtime == "edgetpu":
        from nas.targets.edgetpu_device import EdgeTpuUnavailable, compile_model, find_compiler

        try:
            report = compile_model(conv.path, out, find_compiler(cfg.target.edgetpu.compiler))
            doc["edgetpu_compile"] = {k: v for k, v in report.to_dict().items() if k != "log"}
            doc["edgetpu_compile"]["path"] = report.path.name
        except EdgeTpuUnavailable as e:
            doc["edgetpu_compile"] = f"not compiled here ({e}); on a machine with the compiler: edgetpu_compiler {name}"
    return doc


PREDICTED_NOTE = ("PREDICTED, not measured: no Edge TPU was reachable, so this latency comes from the analytic Edge "
                  "TPU model (predictors/edgetpu.py) calibrated on Coral's published benchmarks; measure it on the "
                  "device before relying on it (nas measure target=edge_tpu target.edgetpu.mode=measure)")


def _card(cfg: SearchConfig, r: TrialRecord, fingerprint: dict[str, Any], num_classes: int) -> dict[str, Any]:
    stat = cfg.target.statistic
    source = r.latency.source if r.latency else "measured"
    return {
        "name": bundle_name(cfg.target.name, cfg.budget_ms),
        "target": cfg.target.name,
        "fingerprint": fingerprint,
        "budget_ms": cfg.budget_ms,
        "budget_statistic": stat,
        "latency_source": source,
        **({"latency_note": PREDICTED_NOTE} if source == "predicted" else {}),
        "precision": cfg.target.precision,
        "scope": cfg.target.scope,
        "latency_ms": r.latency.to_dict() if r.latency else {stat: r.latency_ms},
        "meets_budget": r.latency_ms <= cfg.budget_ms,
        "accuracy_top1": r.accuracy,
        "train_resolution": r.attrs.get("train_resolution"),
        "accuracy_dataset": f"{cfg.dataset.name} at {r.attrs.get('train_resolution', '?')}px, "
                            f"{cfg.study.epochs}-epoch proxy training (rank signal, not a final accuracy)"
                            + ("; top-1 of the int8 model as deployed" if cfg.target.precision == "int8" else ""),
        "params": r.params,
        "macs": r.macs,
        "deploy_input_shape": list(deploy_shape(cfg.target, r.arch)),
        "num_classes": num_classes,
        "study": r.study,
        "trial": r.number,
        "reference": r.attrs.get("reference"),
        "arch_hash": r.arch.hash,
        "timm_block_strings": r.arch.block_strings(),
        "build": timm_snippet(r, num_classes),
        "reproduce": reproduce_command(cfg),
        "weights": "model.onnx carries seeded random weights: it is the architecture at the deployment shape, "
                   "to be trained by the training team"
                   + _quantization_note(cfg),
    }


def _quantization_note(cfg: SearchConfig) -> str:
    if cfg.target.deploy_format == "tflite":
        p = cfg.target.precision
        return (f"; the latency is that of its {p} TFLite form (model_{p}.tflite: litert-torch + "
                "ai-edge-quantizer), so convert the trained model the same way "
                "(nas.tflite_convert.to_tflite with real calibration images)")
    if cfg.target.precision == "int8":
        return ("; the latency was measured on its int8 QDQ form (ONNX Runtime static quantization), so quantize the "
                "trained model the same way")
    return ""


def reproduce_command(cfg: SearchConfig) -> str:
    args = [f"target={cfg.target.name}", f"search_space={cfg.search_space.name}", f"dataset={cfg.dataset.name}",
            f"budget_ms={cfg.budget_ms:g}", f"study.n_trials={cfg.study.n_trials}", f"study.seed={cfg.study.seed}",
            f"study.sampler={cfg.study.sampler}", f"study.epochs={cfg.study.epochs}"]
    if cfg.dataset.path:
        args.append(f"dataset.path={cfg.dataset.path}")
    return "nas search " + " ".join(args)


def _card_md(c: dict[str, Any]) -> str:
    lat = c["latency_ms"]
    rows = "\n".join(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in lat.items())
    fp = "\n".join(f"- {k}: {v}" for k, v in c["fingerprint"].items())
    budget_stat = lat.get(c["budget_statistic"], float("nan"))
    return f"""# {c['name']}: the most accurate searched model within {c['budget_ms']:g} ms ({c['budget_statistic']})

Study `{c['study']}`, trial {c['trial']}{f" (timm's `{c['reference']}`)" if c['reference'] else ''}.
Latency is **{c['latency_source']}** on target `{c['target']}`; accuracy is a proxy ({c['accuracy_dataset']}).
{f"{chr(10)}> **{c['latency_note']}**{chr(10)}" if c.get('latency_note') else ''}
| | |
|---|---|
| top-1 (proxy) | {c['accuracy_top1']:.4f} |
| latency {c['budget_statistic']} | {budget_stat:.3f} ms (budget {c['budget_ms']:g} ms) |
| parameters | {c['params']:,} |
| MACs | {c['macs']:,} |
| deployment input | {c['deploy_input_shape']} |

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

## Reproduce the search

```
{c['reproduce']}
```

{c['weights']}.
Python {sys.version.split()[0]}.
"""
