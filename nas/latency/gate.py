"""The search's latency gate: predict first, skip what is surely over budget, learn from every measurement."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nas.config import PredictorSearchConfig
from nas.core.arch import Arch
from nas.latency.cache import MeasurementCache
from nas.latency.measure import measured_archs, setup_fingerprint
from nas.latency.targets.base import Target
from nas.predictors.base import PredictorError, load_predictor
from nas.predictors.kernel_sum import KernelSumPredictor


@dataclass(frozen=True)
class Prediction:
    mean_ms: float
    std_ms: float
    skip: bool


class PriorCorrection:
    """An analytic latency model's prediction, scaled by what the device measured (the HELP idea, simplest form).

    The correction is the median of measured / predicted over this set-up's measurements; its spread (median
    absolute deviation of that ratio) becomes the prediction's relative uncertainty. Before ``min_pairs``
    measurements the analytic model is used as it is, with its own calibration error.
    """

    def __init__(self, rel_error: float, min_pairs: int = 3) -> None:
        self.rel_error, self.min_pairs = rel_error, min_pairs
        self.factor, self.spread, self.n = 1.0, rel_error, 0

    def fit(self, pairs: list[tuple[float, float]]) -> PriorCorrection:
        """``pairs``: (predicted ms, measured ms)."""
        ratios = np.array([m / p for p, m in pairs if p > 0 and m > 0])
        self.n = len(ratios)
        if self.n >= self.min_pairs:
            self.factor = float(np.median(ratios))
            self.spread = max(float(np.median(np.abs(ratios / self.factor - 1.0))), 0.02)
        return self

    def apply(self, prior_ms: float) -> tuple[float, float]:
        mean = prior_ms * self.factor
        return mean, mean * self.spread


@dataclass
class GateStats:
    skipped: int = 0
    abs_rel_errors: list[float] = field(default_factory=list)  # of predictions later measured
    distrusted: int = 0  # times the predictor disagreed with the measurements and stopped skipping


class PredictorGate:
    """Holds the current predictor; ``None`` until one is loaded or enough measurements exist to fit one."""

    def __init__(self, cfg: PredictorSearchConfig, statistic: str, budget_ms: float, target: Target,
                 cache: MeasurementCache, num_classes: int, predictor_file: Path | None) -> None:
        self.cfg, self.statistic, self.budget_ms = cfg, statistic, budget_ms
        self.target, self.cache, self.num_classes = target, cache, num_classes
        self.predictor = None
        self.source = "none"
        self.n_fit = 0
        self.new_measurements = 0
        self.stats = GateStats()
        self.note = ""  # said once by the search: why a fitted predictor file was not used
        self.since_fit: list[float] = []  # |relative error| of the current predictor's predictions, measured since
        self.distrust = ""  # set while those errors are beyond predictor.max_error: no skipping until they recover
        # A target that predicts its own latencies needs no gate; one with an analytic prior (an Edge TPU
        # attached) gates with the prior, corrected by what the device measures.
        self.active = cfg.enabled and not target.predicted
        self.prior = PriorCorrection(target.prior_error) if self.active and target.has_prior else None
        if self.prior is not None:
            self.source = "analytic model x device correction"
            self._fit_prior()
            return
        if predictor_file is not None and predictor_file.exists():
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    predictor, doc = load_predictor(predictor_file, target.fingerprint())
                if caught:
                    self.note = f"latency predictor {predictor_file.name} not used: {caught[0].message}"
                elif doc.get("num_classes") != num_classes:
                    self.note = (f"latency predictor {predictor_file.name} not used: it was fitted for "
                                 f"{doc.get('num_classes')} classes, this search has {num_classes}")
                else:
                    self.predictor, self.source = predictor, f"fitted ({predictor_file.name})"
                    self.n_fit = int(doc.get("n_fit", 0))
            except PredictorError as e:
                self.note = f"latency predictor not used: {e}; fitting one online instead"
        if self.predictor is None:
            self.refit()

    def _fit_prior(self) -> None:
        pairs = [(extra["details"]["estimate"]["ms"], s.value(self.statistic))
                 for extra, s in self.cache.rows(setup_fingerprint(self.target, self.num_classes))
                 if (extra.get("details") or {}).get("estimate")]
        self.prior.fit(pairs)

    def refit(self) -> None:
        """Fit a kernel-sum predictor on every measurement of this set-up (never fewer points than it had)."""
        archs, stats = measured_archs(self.cache, self.target, self.num_classes)
        if len(archs) < max(self.cfg.min_fit, self.n_fit + 1):
            return
        y = np.array([s.value(self.statistic) for s in stats])
        u = np.array([s.rel_halfwidth(self.statistic) for s in stats])
        self.predictor = KernelSumPredictor(num_classes=self.num_classes).fit(archs, y, u)
        self.source, self.n_fit = f"online ({len(archs)} measurements)", len(archs)
        self.since_fit = []

    def predict(self, arch: Arch, protect: bool = False) -> Prediction | None:
        if not self.active:
            return None
        if self.prior is not None:
            m, s = self.prior.apply(self.target.prior_ms(arch, self.num_classes) or 0.0)
            return Prediction(m, s, skip=not protect and m - self.cfg.z * s > self.budget_ms)
        if self.predictor is None:
            return None
        mean, std = self.predictor.predict([arch])
        m, s = float(mean[0]), float(std[0])
        return Prediction(m, s, skip=not protect and not self.distrust and m - self.cfg.z * s > self.budget_ms)

    def observe(self, prediction: Prediction | None, measured_ms: float, cached: bool) -> None:
        if prediction is not None:
            err = abs(prediction.mean_ms - measured_ms) / measured_ms
            self.stats.abs_rel_errors.append(err)
            self.since_fit.append(err)
            self._check_trust()
        if not cached and self.active:
            self.new_measurements += 1
            if self.prior is not None:
                self._fit_prior()
            elif self.new_measurements % self.cfg.refit_every == 0 or self.predictor is None:
                self.refit()

    def _check_trust(self) -> None:
        """A predictor whose predictions disagree with what this machine measures now (fitted on another day, or
        beside other work that inflated its data) is not used to skip: only measuring can tell a candidate is over
        budget then. Judged on the last three predictions of the current fit."""
        recent = self.since_fit[-3:]
        bad = len(recent) == 3 and float(np.median(recent)) > self.cfg.max_error
        if bad and not self.distrust:
            self.distrust = (f"predictor {self.source} disagrees with this machine's measurements (median |error| "
                             f"{np.median(recent):.0%} over the last 3, limit predictor.max_error="
                             f"{self.cfg.max_error:.0%}): not used to skip until it agrees again")
            self.stats.distrusted += 1
        elif not bad:
            self.distrust = ""

    def summary(self) -> str:
        s = self.stats
        parts = [f"predictor: {self.source}; skipped {s.skipped} candidate(s) as surely over budget "
                 f"(saved {s.skipped} measurement(s) and training run(s))"]
        if self.distrust:
            parts.append(self.distrust)
        elif s.distrusted:
            parts.append(f"it disagreed with the measurements {s.distrusted} time(s) and was not used to skip then")
        if s.abs_rel_errors:
            e = np.array(s.abs_rel_errors)
            parts.append(f"on the {len(e)} it predicted and then measured: median |error| {np.median(e):.1%}, "
                         f"within ±10% {np.mean(e <= 0.10):.0%}")
        return "; ".join(parts)
