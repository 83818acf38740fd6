"""Predictor kinds by name (the `kind` field of a predictor file and of `nas predictor fit kind=...`).

A plugin adds one with ``predictors.register("mine")(MyPredictor)``: a class with the estimator shape of
``nas.predictors.base.LatencyPredictor`` and a ``from_state`` class method.
"""

from nas.predictors.kernel_sum import KernelSumPredictor
from nas.predictors.lut import LookupTablePredictor
from nas.registry import Registry

predictors: Registry[type] = Registry("predictor")
predictors.register(KernelSumPredictor.kind)(KernelSumPredictor)
predictors.register(LookupTablePredictor.kind)(LookupTablePredictor)
