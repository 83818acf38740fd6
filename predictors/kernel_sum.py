"""A learned regressor over block-level features, in the nn-Meter spirit of summing per-kernel costs.

latency = sum_k w_k * feature_k + b with non-negative weights (each kernel category can only add time), fitted by
non-negative least squares on relative error; a bagged ensemble gives the uncertainty (spread of the members
plus the residual noise seen out of bag).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nas.core.arch import Arch
from nas.predictors.features import FEATURE_NAMES, features_matrix

# With few measurements (an online fit early in a search) the per-kernel split cannot be identified; a compact
# set (work, memory traffic, layer count) can.
COMPACT = ("macs", "pw_bytes", "dw_bytes", "n_blocks")


class KernelSumPredictor:
    kind = "kernel_sum"

    def __init__(self, n_members: int = 32, seed: int = 0, num_classes: int = 1000, min_full: int = 40) -> None:
        self.n_members = n_members
        self.seed = seed
        self.num_classes = num_classes
        self.min_full = min_full  # measurements needed before all per-kernel features are used

    # -- fitting --------------------------------------------------------------------------------------------
    def fit(self, archs: list[Arch], latencies_ms: np.ndarray,
            uncertainty: np.ndarray | None = None) -> KernelSumPredictor:
        """``uncertainty``: each measurement's relative half-width (its interval); a looser figure weighs less."""
        y = np.asarray(latencies_ms, dtype=np.float64)
        if len(archs) != len(y) or len(y) < 3:
            raise ValueError(f"fit needs at least 3 archs with one latency each, got {len(archs)} and {len(y)}")
        u = np.zeros(len(y)) if uncertainty is None else np.asarray(uncertainty, dtype=np.float64)
        # Weight 1 for a figure as tight as the 3% tolerance or tighter, less as its interval widens.
        self.weights_ = 1.0 / np.maximum(u / 0.03, 1.0)
        names = FEATURE_NAMES if len(y) >= self.min_full else COMPACT
        self.columns_ = np.array([FEATURE_NAMES.index(n) for n in names])
        x = features_matrix(archs, self.num_classes)[:, self.columns_]
        self.scale_ = np.maximum(np.abs(x).max(axis=0), 1e-12)
        rng = np.random.default_rng(self.seed)
        coefs, oob_rel = [], []
        for _ in range(self.n_members):
            idx = rng.integers(0, len(y), len(y))
            coefs.append(self._solve(x[idx], y[idx], self.weights_[idx]))
            out = np.setdiff1d(np.arange(len(y)), idx)
            if len(out):
                oob_rel.extend((self._apply(x[out], coefs[-1]) - y[out]) / y[out])
        self.coefs_ = np.array(coefs)
        self.full_coef_ = self._solve(x, y, self.weights_)
        self.noise_rel_ = float(np.std(oob_rel)) if oob_rel else 0.05
        return self

    def _solve(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
        # Weight rows by 1/y: minimise relative error, as the budget decision is relative; and by how sure each
        # measurement is.
        xs = np.hstack([x / self.scale_, np.ones((len(x), 1))]) / y[:, None] * weights[:, None]
        w, _ = _nnls(xs, weights, maxiter=50 * xs.shape[1])
        return w

    def _apply(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return (x / self.scale_) @ w[:-1] + w[-1]

    # -- prediction -----------------------------------------------------------------------------------------
    def predict(self, archs: list[Arch]) -> tuple[np.ndarray, np.ndarray]:
        x = features_matrix(archs, self.num_classes)[:, self.columns_]
        mean = self._apply(x, self.full_coef_)
        members = np.stack([self._apply(x, w) for w in self.coefs_])
        std = np.sqrt(members.std(axis=0) ** 2 + (self.noise_rel_ * mean) ** 2)
        return mean, std

    # -- persistence ----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"params": {"n_members": self.n_members, "seed": self.seed, "num_classes": self.num_classes,
                           "min_full": self.min_full},
                "feature_names": [FEATURE_NAMES[i] for i in self.columns_], "scale": self.scale_.tolist(),
                "coef": self.full_coef_.tolist(), "members": self.coefs_.tolist(), "noise_rel": self.noise_rel_}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KernelSumPredictor:
        unknown = [n for n in state["feature_names"] if n not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"predictor file uses unknown features {unknown}: refit it with `nas predictor fit`")
        p = cls(**state["params"])
        p.columns_ = np.array([FEATURE_NAMES.index(n) for n in state["feature_names"]])
        p.scale_ = np.array(state["scale"])
        p.full_coef_ = np.array(state["coef"])
        p.coefs_ = np.array(state["members"])
        p.noise_rel_ = float(state["noise_rel"])
        return p


def _nnls(a: np.ndarray, b: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, float]:
    from scipy.optimize import nnls  # on first fit: scipy is not needed to read a configuration

    return nnls(a, b, **kwargs)
