"""Predictor kinds by name (the `kind` field of a predictor file)."""

from nas.predictors.kernel_sum import KernelSumPredictor
from nas.predictors.lut import LookupTablePredictor

PREDICTORS: dict[str, type] = {p.kind: p for p in (KernelSumPredictor, LookupTablePredictor)}
