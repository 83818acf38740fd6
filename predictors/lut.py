"""A per-block lookup table in the FBNet/ProxylessNAS manner.

Each distinct block configuration (and the stem and head) is measured in isolation on the target, once; an arch's
latency is the sum of its entries times a fitted scale plus a fitted overhead. A block missing from the table is
estimated from its MACs and memory traffic by a small non-negative model fitted on the table, and its share of the
prediction widens the uncertainty.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from nas.core.arch import Arch
from nas.predictors.features import BlockFeatures, block_features

# (arch, the table keys it needs) -> {key: latency ms}, measured in isolation on the target.
EntryMeasure = Callable[[Arch, list[str]], dict[str, float]]


def entry_keys(arch: Arch, num_classes: int) -> list[tuple[str, dict[str, float]]]:
    """The table keys of an arch's parts (stem, each block, head) with the figures the fallback model uses."""
    blocks, fixed = block_features(arch)
    stem_ch = blocks[0].in_ch
    r = arch.resolution
    parts = [(json.dumps(["stem", arch.family, arch.act, stem_ch, r]),
              {"macs": fixed["stem_macs"], "bytes": 4 * (3 * r * r + stem_ch * blocks[0].h_in ** 2), "ops": 2})]
    for b in blocks:
        act = b.act
        parts.append((json.dumps(["block", arch.family, *_block_key(b, act)]), _block_figures(b)))
    parts.append((json.dumps(["head", arch.family, arch.act, fixed["last_ch"], fixed["last_h"], arch.num_features,
                              num_classes]),
                  {"macs": fixed["head_macs"] + arch.num_features * num_classes,
                   "bytes": 4 * fixed["last_ch"] * fixed["last_h"] ** 2, "ops": 4}))
    return parts


def _block_key(b: BlockFeatures, act: str) -> list:
    return [b.kind, b.kernel, b.expansion, b.in_ch, b.out_ch, b.stride, b.se_ch, act, b.h_in, b.residual]


def _block_figures(b: BlockFeatures) -> dict[str, float]:
    traffic = b.h_in ** 2 * (b.in_ch + b.mid_ch) + b.h_out ** 2 * (2 * b.mid_ch + b.out_ch)
    return {"macs": b.macs, "bytes": 4 * traffic, "ops": 3 + (b.se_ch > 0) * 4 + b.residual}


def _fallback_row(fig: dict[str, float]) -> np.ndarray:
    return np.array([fig["macs"] * 1e-6, fig["bytes"] * 1e-6, fig["ops"]])


class LookupTablePredictor:
    kind = "lut"

    def __init__(self, num_classes: int = 1000, seed: int = 0) -> None:
        self.num_classes = num_classes
        self.seed = seed
        self.table_: dict[str, float] = {}

    def fit(self, archs: list[Arch], latencies_ms: np.ndarray, measure_entries: EntryMeasure | None = None,
            progress: Callable[[int, int], None] | None = None) -> LookupTablePredictor:
        """Measure every table entry the archs need (with ``measure_entries``), then fit scale and overhead."""
        y = np.asarray(latencies_ms, dtype=np.float64)
        parts = [entry_keys(a, self.num_classes) for a in archs]
        todo: list[tuple[Arch, list[str]]] = []
        seen = set(self.table_)
        for arch, ps in zip(archs, parts, strict=True):
            keys = [k for k, _ in ps if k not in seen]
            if keys:
                seen.update(keys)
                todo.append((arch, list(dict.fromkeys(keys))))
        if todo and measure_entries is None:
            raise ValueError("the lookup table lacks entries and no way to measure them was given")
        for i, (arch, keys) in enumerate(todo):
            self.table_.update({k: float(v) for k, v in measure_entries(arch, keys).items()})
            if progress:
                progress(i + 1, len(todo))
        figs = {k: f for ps in parts for k, f in ps}
        keys = list(self.table_)
        rows = np.stack([_fallback_row(figs[k]) for k in keys if k in figs])
        vals = np.array([self.table_[k] for k in keys if k in figs])
        self.fallback_, _ = _nnls(rows / vals[:, None], np.ones(len(vals)))
        fb = rows @ self.fallback_
        self.fallback_rel_ = float(np.std((fb - vals) / vals))
        sums = np.array([sum(self.table_[k] for k, _ in ps) for ps in parts])
        a = np.vstack([sums, np.ones_like(sums)]).T / y[:, None]
        (self.scale_, self.overhead_), *_ = np.linalg.lstsq(a, np.ones(len(y)), rcond=None)
        pred = self.scale_ * sums + self.overhead_
        self.noise_rel_ = float(np.std((pred - y) / y))
        return self

    def predict(self, archs: list[Arch]) -> tuple[np.ndarray, np.ndarray]:
        means, stds = [], []
        for arch in archs:
            known, missing = 0.0, 0.0
            for key, fig in entry_keys(arch, self.num_classes):
                if key in self.table_:
                    known += self.table_[key]
                else:
                    missing += float(_fallback_row(fig) @ self.fallback_)
            mean = self.scale_ * (known + missing) + self.overhead_
            means.append(mean)
            stds.append(np.hypot(self.noise_rel_ * mean, self.fallback_rel_ * self.scale_ * missing))
        return np.array(means), np.array(stds)

    def state(self) -> dict[str, Any]:
        return {"params": {"num_classes": self.num_classes, "seed": self.seed}, "table": self.table_,
                "scale": self.scale_, "overhead": self.overhead_, "noise_rel": self.noise_rel_,
                "fallback": self.fallback_.tolist(), "fallback_rel": self.fallback_rel_}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LookupTablePredictor:
        p = cls(**state["params"])
        p.table_ = dict(state["table"])
        p.scale_, p.overhead_ = float(state["scale"]), float(state["overhead"])
        p.noise_rel_ = float(state["noise_rel"])
        p.fallback_ = np.array(state["fallback"])
        p.fallback_rel_ = float(state["fallback_rel"])
        return p


def _nnls(a: np.ndarray, b: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, float]:
    from scipy.optimize import nnls  # on first fit: scipy is not needed to read a configuration

    return nnls(a, b, **kwargs)
