"""``accuracy=imagenet``: a candidate's accuracy is the ImageNet accuracy model's prediction, not a training run.

The model (nas/predictors/imagenet_accuracy.py) answers in microseconds with an uncertainty and a domain (inside
Accel-NASBench's block space, scaled by width/resolution, or extrapolated); this wraps it for the search and says,
in one line, what its figures are and how well they rank architectures it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.core.arch import Arch
from nas.core.errors import ConfigError, first_line

IMAGENET_CLASSES = 1000  # accuracy=imagenet: candidates are measured and exported as ImageNet classifiers


@dataclass(frozen=True)
class PredictedTop1:
    top1: float  # ImageNet-1k top-1, %
    std: float
    domain: str  # accel_nasbench | scaled | extrapolated


class ImageNetAccuracy:
    """The search's accuracy source for ``accuracy=imagenet``: the shipped model, or ``accuracy.model=FILE``."""

    def __init__(self, path: str | None = None) -> None:
        from nas.predictors.imagenet_accuracy import ImageNetAccuracyModel, load_default

        try:
            self.model = load_default() if path is None else ImageNetAccuracyModel.load(Path(path).expanduser())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path}: not a fitted accuracy model ({first_line(e)}); fit one with "
                              "`nas accuracy fit out=FILE`, or name none to use the shipped one") from None
        self.path = path

    def score(self, archs: list[Arch]) -> list[PredictedTop1]:
        mean, std = self.model.predict(archs)
        return [PredictedTop1(float(m), float(s), self.model.domain(a))
                for m, s, a in zip(mean, std, archs, strict=True)]

    def top1(self, archs: list[Arch]) -> np.ndarray:
        """Predicted top-1 only: what screening ranks thousands of candidates by."""
        return self.model.predict(archs)[0]

    @property
    def unit(self) -> str:
        from nas.predictors.imagenet_accuracy import UNIT

        return UNIT

    @property
    def figures(self) -> dict[str, Any]:
        """The fit's own held-out figures, as stored in the model file (what the card's ``fit`` carries)."""
        return {"accel_nasbench_5fold": getattr(self.model, "cv_", None) or {},
                "timm_leave_one_family_out": getattr(self.model, "lofo_", None) or {}}

    def describe(self) -> str:
        """What the figure is and how far to trust it: the line the search prints and the card carries."""
        anb = self.figures["accel_nasbench_5fold"].get("block_5fold", {})
        fam = self.figures["timm_leave_one_family_out"].get("model", {})
        parts = ["predicted ImageNet-1k top-1 from the accuracy model fitted on Accel-NASBench (4,612 ImageNet "
                 "trainings) and timm's published results"]
        if anb.get("kendall_tau") is not None:
            parts.append(f"ranks unseen Accel-NASBench archs at Kendall {anb['kendall_tau']:.3f}")
        if fam.get("kendall_tau") is not None:
            parts.append(f"held-out timm families at Kendall {fam['kendall_tau']:.3f} (MAE {fam['mae']:.1f} points)")
        return "; ".join(parts)


def predicted_text(a: dict[str, Any]) -> str:
    """A predicted top-1 in one phrase: value ± uncertainty, unit, domain, and the margin over the best reference."""
    text = (f"{a['top1']:.2f} ± {a['std']:.2f} % predicted ({a['unit']}; domain: {a['domain']}; "
            f"{a['source']})")
    ref = a.get("reference")
    if ref is None:
        return text + "; no reference meets this budget"
    return (text + f"; {a['margin']:+.2f} points over `{ref['name']}` ({ref['top1']:.2f} % predicted, "
            f"{ref['latency_ms']:.2f} ms measured), the most accurate reference within the budget")
