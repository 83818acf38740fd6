"""The predictor interface and its portable file format.

A saved predictor is one JSON file: its kind, hyper-parameters, learned state as plain numbers, the target
fingerprint it was measured on, and the library versions that made it. Nothing is pickled, so a file keeps
loading across library upgrades; a version mismatch is reported, never fatal.
"""

from __future__ import annotations

import json
import platform
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nas.core.arch import Arch
from nas.core.errors import NasError
from nas.core.stats import fingerprint_hash

FORMAT_VERSION = 1


class PredictorError(NasError):
    pass


class LatencyPredictor(Protocol):
    kind: str

    def fit(self, archs: list[Arch], latencies_ms: np.ndarray) -> LatencyPredictor: ...

    def predict(self, archs: list[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """Predicted latency (ms) and its standard deviation, one per arch."""
        ...

    def state(self) -> dict[str, Any]: ...


def predictor_path(workdir: Path, target_name: str, fingerprint: dict[str, Any], kind: str) -> Path:
    """Where `nas predictor fit` saves, and `nas search` looks for, the predictor of a target set-up."""
    return workdir / "predictors" / f"{target_name}-{fingerprint_hash(fingerprint)}-{kind}.json"


def library_versions() -> dict[str, str]:
    import numpy
    import onnxruntime
    import sklearn
    import timm
    import torch

    return {"python": platform.python_version(), "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__.split("+")[0],
            "timm": timm.__version__}


def save_predictor(predictor: LatencyPredictor, path: Path, fingerprint: dict[str, Any], num_classes: int,
                   extra: dict[str, Any] | None = None) -> Path:
    doc = {
        "format": "nas-latency-predictor", "format_version": FORMAT_VERSION, "kind": predictor.kind,
        "fingerprint": fingerprint, "fingerprint_hash": fingerprint_hash(fingerprint), "num_classes": num_classes,
        "versions": library_versions(), "state": predictor.state(), **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return path


def load_predictor(path: Path, fingerprint: dict[str, Any] | None = None) -> tuple[LatencyPredictor, dict]:
    """Load a predictor file; warns when it was made for another target set-up or other library versions."""
    from nas.core.registry import predictors

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise PredictorError(f"cannot read predictor {path}: {e}") from None
    if doc.get("format") != "nas-latency-predictor" or doc.get("kind") not in predictors:
        raise PredictorError(f"{path} is not a nas latency predictor file")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise PredictorError(f"{path} has format version {doc['format_version']}; this nas reads up to "
                             f"{FORMAT_VERSION}: upgrade nas")
    if fingerprint is not None and doc.get("fingerprint_hash") != fingerprint_hash(fingerprint):
        diff = sorted(k for k in set(fingerprint) | set(doc.get("fingerprint", {}))
                      if fingerprint.get(k) != doc.get("fingerprint", {}).get(k))
        warnings.warn(f"predictor {path} was fitted on another target set-up (differs in: {', '.join(diff)}); "
                      "its predictions may be off", stacklevel=2)
    now = library_versions()
    changed = {k: (v, now.get(k)) for k, v in doc.get("versions", {}).items() if now.get(k) != v}
    if changed:
        doc["version_changes"] = changed  # informational: the file format does not depend on them
    return predictors.get(doc["kind"]).factory.from_state(doc["state"]), doc
