"""The export as one MLflow Model with two flavours, registered per budget with the ``champion`` alias.

``mlflow.onnx.load_model`` gives the deployment graph (model.onnx at the deployment shape; it is also the pyfunc
flavour, so the signature is its input); ``mlflow.pytorch.load_model`` gives the timm ``nn.Module`` to train.
The bundle's files ride along as the model's extra files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

from nas.accuracy.imagenet import predicted_text
from nas.core import names
from nas.core.records import TrialRecord
from nas.tracking.client import Tracker

# The search keeps no trained weights (candidates are trained for a ranking signal only), so the module is the
# architecture at seed 0, the same as model.onnx.
WEIGHTS = "seeded"
WEIGHTS_NOTE = ("seeded initial weights (torch seed 0, as model.onnx): the search keeps no trained weights, so this "
                "is the architecture for the training team to train")


@dataclass(frozen=True)
class RegisteredExport:
    name: str
    version: str
    model_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def signature_of(model: onnx.ModelProto) -> tuple[Any, np.ndarray]:
    """The signature of the ONNX graph's input and output (name, dtype, deployment shape) and a zero input example
    (small as JSON even at 224 px)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(v: onnx.ValueInfoProto) -> TensorSpec:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return TensorSpec(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), dims, v.name)

    inputs = [spec(v) for v in model.graph.input]
    sig = ModelSignature(Schema(inputs), Schema([spec(v) for v in model.graph.output]))
    first = inputs[0]
    return sig, np.zeros([max(d, 1) for d in first.shape], dtype=first.type)


def requirements() -> list[str]:
    """What loading either flavour needs, pinned to this environment (explicit: MLflow's inference of them runs
    a subprocess that loads the model)."""
    out = []
    for pkg in ("mlflow", "torch", "timm", "onnx", "onnxruntime"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue  # onnxruntime-gpu, say: the user's deployment picks its runtime
    return out


def save_flavors(path: Path, module: nn.Module, bundle: Path, graph: onnx.ModelProto, meta: dict[str, Any],
                 model_id: str, run_id: str, providers: list[str] | None = None) -> None:
    """Write an MLflow Model folder at ``path``: the ONNX flavour (and pyfunc) of ``graph`` (the bundle's
    model.onnx; ``providers``: ONNX Runtime's, MLflow's default where None), the PyTorch flavour of ``module``,
    the bundle's files as extra files."""
    import mlflow.onnx
    import mlflow.pytorch
    from mlflow.models import Model

    sig, example = signature_of(graph)
    reqs = requirements()
    # model.onnx is the flavour's own file already: not twice.
    extra = [str(p) for p in sorted(bundle.iterdir()) if p.is_file() and p.name != "model.onnx"]
    mlflow.onnx.save_model(graph, str(path), signature=sig, input_example=example, pip_requirements=reqs,
                           save_as_external_data=False, extra_files=extra, metadata=meta,
                           onnx_execution_providers=providers)
    torch_dir = path.with_name(path.name + "-pytorch")
    # Pickled, not MLflow's default torch.export graph: the training team gets timm's own class, trainable
    # (batch norm still switches between train and eval).
    mlflow.pytorch.save_model(module.float().eval(), str(torch_dir), signature=sig, pip_requirements=reqs,
                              serialization_format="pickle")
    # Both flavours in one MLmodel, so one registered version loads either way.
    shutil.copytree(torch_dir / "data", path / "data")
    merged = Model.load(str(path / "MLmodel"))
    merged.add_flavor("pytorch", **Model.load(str(torch_dir / "MLmodel")).flavors["pytorch"])
    merged.model_id, merged.run_id = model_id, run_id
    merged.model_size_bytes = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    merged.save(str(path / "MLmodel"))
    shutil.rmtree(torch_dir)


def accuracy_text(a: dict[str, Any]) -> str:
    """The card's ``accuracy`` block in one phrase: mean ± std over seeds, or the single run it is."""
    if a.get("figure") == "predicted":
        return predicted_text(a)
    where = f"{a.get('dataset')}, {a.get('epochs')} epoch(s) at {a.get('train_resolution')} px"
    if a.get("std") is None:
        return f"{a['mean']:.4f} (one training run, not re-evaluated; {where})"
    return f"{a['mean']:.4f} ± {a['std']:.4f} (mean ± std over seeds {a.get('seeds')}; {where})"


def version_tags(card: dict[str, Any]) -> dict[str, str]:
    acc = card["accuracy"]
    stat = card["budget_statistic"]
    latency = names.latency_metric(stat, card["latency_source"] == "predicted")
    return {
        names.STUDY_TAG: card["study"], names.TRIAL_TAG: str(card["trial"]), names.ARCH_HASH: card["arch_hash"],
        names.BUDGET_TAG: f"{card['budget_ms']:g}", names.STATISTIC_TAG: stat,
        names.LATENCY_SOURCE: card["latency_source"], latency: str(card["latency_ms"][stat]),
        names.FINGERPRINT_TAG: json.dumps(card["fingerprint"], sort_keys=True),
        names.ACCURACY: str(acc["mean"]), **({names.REEVAL_STD: str(acc["std"])} if acc.get("std") is not None
                                            and acc.get("figure") != "predicted" else {}),
        **({names.ACCURACY_STD: str(acc["std"]), names.ACCURACY_DOMAIN: str(acc["domain"]),
            "accuracy_reference": (acc["reference"] or {}).get("name", "none"),
            "margin_over_reference": "n/a" if acc["margin"] is None else f"{acc['margin']:.2f}"}
           if acc.get("figure") == "predicted" else {}),
        names.TIMM_NAME: card[names.TIMM_NAME], names.WEIGHTS_TAG: WEIGHTS,
    }


def version_description(card: dict[str, Any], name: str, timm: str, sig_text: str) -> str:
    stat = card["budget_statistic"]
    ref = f" (timm's `{card['reference']}`)" if card.get("reference") else ""
    fp = ", ".join(f"{k}={v}" for k, v in card["fingerprint"].items())
    return f"""**{card['name']}**: trial {card['trial']} of study `{card['study']}`{ref}, the most accurate searched
model within **{card['budget_ms']:g} ms {stat}** on target `{card['target']}`.

| | |
|---|---|
| latency {stat} | {card['latency_ms'][stat]:.3f} ms ({card['latency_source']}) |
| top-1 | {accuracy_text(card['accuracy'])} |
| input | {sig_text} |
| weights | {WEIGHTS_NOTE} |
| timm name | `{timm}`: import the bundle's `{names.TIMM_MODULE}` (extra_files/) |

Target fingerprint: {fp}.

Load it: `mlflow.pytorch.load_model("models:/{name}@{names.CHAMPION}")` (the timm `nn.Module`),
`mlflow.onnx.load_model("models:/{name}@{names.CHAMPION}")` (the deployment graph).
"""


def model_description(card: dict[str, Any], name: str) -> str:
    return (f"The most accurate architecture `nas search` found within {card['budget_ms']:g} ms "
            f"({card['budget_statistic']}) on target `{card['target']}`: one version per export; alias "
            f"`{names.CHAMPION}` is the current one (`models:/{name}@{names.CHAMPION}`).")


def register_export(tracker: Tracker, run_id: str, record: TrialRecord, bundle: Path, card: dict[str, Any],
                    module: nn.Module, name: str) -> RegisteredExport:
    """Log the export as an MLflow Model of the winning trial's run (the study run where the trial has none) and
    register it as a new version of ``name`` with alias ``champion``."""
    timm = card[names.TIMM_NAME]
    tags = version_tags(card)
    source_run = record.run_id if record.run_id and _in_experiment(tracker, record.run_id) else run_id
    graph = onnx.load(str(bundle / "model.onnx"))
    spec = signature_of(graph)[0].inputs.inputs[0]
    meta = {names.TIMM_NAME: timm, names.ARCH_HASH: card["arch_hash"], names.WEIGHTS_TAG: WEIGHTS}
    # The pyfunc flavour runs ONNX Runtime with the providers the latency was measured with, where known.
    providers = card["fingerprint"].get("providers")
    providers = providers if isinstance(providers, list) and providers else None
    # A logged model's name may not hold '.', which a registered model's may (nas-cpu-7.5ms).
    model_id = tracker.log_model(source_run, name.replace(".", "p"), tags, lambda path, mid: save_flavors(
        path, module, bundle, graph, meta, mid, source_run, providers))
    sig_text = f"`{spec.name}`: {spec.type} {list(spec.shape)}"
    ver = tracker.register(name, model_id, source_run, tags, version_description(card, name, timm, sig_text),
                           model_description(card, name), names.CHAMPION)
    return RegisteredExport(name, ver, model_id)


def _in_experiment(tracker: Tracker, run_id: str) -> bool:
    """A trial run of another experiment (``study.experiment`` changed since the search) cannot own the model."""
    try:
        return tracker.client.get_run(run_id).info.experiment_id == tracker.experiment_id
    except Exception:  # a run removed from the store: the study run owns the model instead
        return False
