"""The ImageNet accuracy model: predicted ImageNet-1k top-1 of an ``Arch`` in microseconds, learned from shipped data.

Unit of ``predict``: ImageNet-1k top-1 (%) as with a full training recipe (timm's published checkpoints), block
effects from Accel-NASBench's 16-epoch proxy. ``predict_benchmark`` answers in the benchmark's own unit (top-1 after
its 16-epoch proxy recipe, ReLU, 224 px), which is what its ``val_top1`` column holds.

Two parts:

- the block model, fitted on Accel-NASBench (4,612 archs of the EfficientNet-B0 block space): the mean of a Gaussian
  process (Matern-5/2 kernel with one length scale per feature, fitted by marginal likelihood on a subset) and an
  ensemble of small MLPs, both on the 28 block choices plus log MACs and log params;
- the scaling model, fitted on timm's published top-1 (no extra-data rows): a ridge regression in logit space from
  the block model's score of the arch projected onto the benchmark space (nearest e/k/l/se per stage) plus how the
  arch differs from that projection (log MACs, log params, log resolution, smooth activation).

Everything fitted is stored as plain numbers in one JSON file (no pickles): the file keeps loading across library
upgrades, and prediction is a few numpy matrix products (no torch, no timm model building).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nas.core.arch import Arch, Block
from nas.predictors.features import block_features

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_PATH = DATA_DIR / "imagenet_accuracy.json"
ANB_CSV = DATA_DIR / "accel_nasbench.csv"
SEEDS_CSV = DATA_DIR / "accel_nasbench_seeds.csv"
TIMM_CSV = DATA_DIR / "timm_imagenet_mbconv.csv"
TIMM_ARCHS_JSON = DATA_DIR / "timm_archs.json"
FORMAT = "nas-imagenet-accuracy"
FORMAT_VERSION = 1
UNIT = ("ImageNet-1k top-1 (%) as with a full training recipe (timm's published checkpoints); block effects "
        "learned from Accel-NASBench's 16-epoch proxy")
BENCHMARK_UNIT = "ImageNet-1k top-1 (%) after Accel-NASBench's 16-epoch proxy recipe (ReLU, 224 px), one seed"

# The Accel-NASBench skeleton (EfficientNet-B0's strides and channels).
ANB_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
ANB_STRIDES = (1, 2, 2, 2, 1, 2, 1)
ANB_EXPANSIONS = (1, 4, 6)
ANB_KERNELS = (3, 5)
ANB_MAX_LAYERS = (3, 3, 3, 3, 3, 4, 3)
ANB_LEVELS = (2, 4, 8, 16, 16, 32, 32)  # each stage's downsampling factor
_E = np.array(ANB_EXPANSIONS)
_SMOOTH_ACTS = ("swish", "hard_swish")


# -- the benchmark's space ------------------------------------------------------------------------------------------
def anb_arch(row: dict[str, Any]) -> Arch:
    """An Accel-NASBench row (``block{i}_{e,k,l,se}``) as an ``Arch`` on timm's EfficientNet-B0 skeleton.

    Expansion 1 is a ``ds`` block: EfficientNet's MBConv with expand ratio 1 has no expansion conv, as timm's
    DepthwiseSeparableConv.
    """
    stages = []
    for i in range(7):
        e, k, n = int(row[f"block{i}_e"]), int(row[f"block{i}_k"]), int(row[f"block{i}_l"])
        se = row[f"block{i}_se"]
        se = se.strip().lower() == "true" if isinstance(se, str) else bool(se)
        stages.append((Block("ds" if e == 1 else "ir", n, k, ANB_STRIDES[i], float(e), ANB_CHANNELS[i],
                             0.25 if se else 0.0),))
    return Arch(family="efficientnet", stages=tuple(stages), stem_size=32, num_features=1280, act="relu")


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV in accel_nasbench.csv's format (lines starting with '#' are comments)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def read_header(path: str | Path) -> list[str]:
    """The '#' comment lines of a shipped CSV: its provenance."""
    with open(path) as f:
        return [line[1:].strip() for line in f if line.startswith("#")]


def _codes_of_row(row: dict[str, Any]) -> np.ndarray:
    return _codes_of_anb(anb_arch(row))


def _codes_of_anb(arch: Arch) -> np.ndarray:
    """(7, 4) ints: expansion index, kernel is 5, layers, squeeze-excite, for an arch in the benchmark's blocks."""
    out = np.empty((7, 4), dtype=np.int64)
    for i, (b,) in enumerate(arch.stages):
        out[i] = (ANB_EXPANSIONS.index(int(b.expansion)), b.kernel == 5, b.repeats, b.se > 0)
    return out


def _in_block_space(arch: Arch) -> bool:
    """Blocks, channels, act, stem and head exactly the benchmark's (width and resolution free)."""
    if (arch.family != "efficientnet" or arch.act != "relu" or arch.stem_size != 32 or arch.num_features != 1280
            or len(arch.stages) != 7):
        return False
    for i, stage in enumerate(arch.stages):
        if len(stage) != 1:
            return False
        b = stage[0]
        e = 1.0 if b.kind == "ds" else b.expansion
        if (b.kind != ("ds" if e == 1 else "ir") or e not in ANB_EXPANSIONS or b.kernel not in ANB_KERNELS
                or not 1 <= b.repeats <= ANB_MAX_LAYERS[i] or b.se not in (0.0, 0.25)
                or b.channels != ANB_CHANNELS[i] or b.stride != ANB_STRIDES[i] or b.act not in (None, "relu")
                or b.skip is False):
            return False
    return True


def _nearest(values: tuple[int, ...], x: float) -> int:
    return min(range(len(values)), key=lambda j: (abs(values[j] - x), j))


def _project(arch: Arch) -> np.ndarray:
    """The nearest benchmark-space choice (codes) for any arch: its blocks grouped by downsampling level.

    Levels /16 and /32 hold two benchmark stages each: the first channel group goes to the first, the rest to the
    second (a single group is split by layers). A stage with no layers gets the smallest choice.
    """
    if _in_block_space(arch):
        return _codes_of_anb(arch)
    level, groups = 2, {}  # level -> list of (channels, [(expansion, kernel, se, repeats)])
    for stage in arch.stages:
        for b in stage:
            if b.kind == "cn":
                continue
            level *= b.stride
            e = 1.0 if b.kind == "ds" else float(b.expansion)
            gl = groups.setdefault(min(level, 32), [])
            if gl and gl[-1][0] == b.channels:
                gl[-1][1].append((e, b.kernel, b.se > 0, b.repeats))
            else:
                gl.append((b.channels, [(e, b.kernel, b.se > 0, b.repeats)]))
    per_stage: list[list[tuple]] = [[] for _ in range(7)]
    for lv, gl in groups.items():
        stages = [i for i, x in enumerate(ANB_LEVELS) if x == lv]
        if len(stages) == 1:
            for _, layers in gl:
                per_stage[stages[0]].extend(layers)
        elif len(gl) >= 2:
            first, rest = (gl[:1], gl[1:]) if lv == 16 else (gl[:-1], gl[-1:])
            for s, part in zip(stages, (first, rest), strict=True):
                for _, layers in part:
                    per_stage[s].extend(layers)
        else:
            layers = gl[0][1]
            total = sum(x[3] for x in layers)
            a = max(1, (total + 1) // 2) if lv == 16 else max(1, total - 1)
            per_stage[stages[0]].append((*layers[0][:3], a))  # the first entry's choice, then the last's
            per_stage[stages[1]].append((*layers[-1][:3], max(1, total - a)))
    codes = np.zeros((7, 4), dtype=np.int64)
    for i, layers in enumerate(per_stage):
        if not layers:
            codes[i] = (0, 0, 1, 0)
            continue
        w = np.array([x[3] for x in layers], dtype=float)
        e = float(np.average([x[0] for x in layers], weights=w))
        k = float(np.average([x[1] for x in layers], weights=w))
        se = float(np.average([x[2] for x in layers], weights=w))
        codes[i] = (_nearest(ANB_EXPANSIONS, e), k > 4, min(max(int(w.sum()), 1), ANB_MAX_LAYERS[i]), se >= 0.5)
    return codes


def _codes_arch(codes: np.ndarray) -> Arch:
    return anb_arch({**{f"block{i}_e": ANB_EXPANSIONS[c[0]] for i, c in enumerate(codes)},
                     **{f"block{i}_k": 5 if c[1] else 3 for i, c in enumerate(codes)},
                     **{f"block{i}_l": int(c[2]) for i, c in enumerate(codes)},
                     **{f"block{i}_se": bool(c[3]) for i, c in enumerate(codes)}})


# -- MACs and params (analytic, from block_features) --------------------------------------------------------------
def macs_params(arch: Arch, num_classes: int = 1000) -> tuple[float, float]:
    """Multiply-accumulates and weights (both in millions) of ``arch`` at its resolution; BN and biases left out."""
    blocks, fixed = block_features(arch)
    from timm.models._efficientnet_builder import round_channels

    stem = round_channels(arch.stem_size, arch.width)
    macs = fixed["stem_macs"] + fixed["head_macs"] + arch.num_features * num_classes
    params = 27 * stem + fixed["last_ch"] * arch.num_features + arch.num_features * num_classes
    for b in blocks:
        macs += b.macs
        params += _block_params(b)
    return macs / 1e6, params / 1e6


def _block_params(b: Any) -> int:
    se = 2 * b.se_ch * (b.mid_ch if b.kind in ("ir", "er") else b.in_ch)
    if b.kind == "ir":
        return b.in_ch * b.mid_ch + b.mid_ch * b.kernel ** 2 + b.mid_ch * b.out_ch + se
    if b.kind == "er":
        return b.in_ch * b.mid_ch * b.kernel ** 2 + b.mid_ch * b.out_ch + se
    if b.kind == "ds":
        return b.in_ch * b.kernel ** 2 + b.in_ch * b.out_ch + se
    return b.in_ch * b.out_ch * b.kernel ** 2


@functools.cache
def _anb_tables() -> tuple[np.ndarray, np.ndarray, float, float]:
    """Per stage and (e, k, se): MACs and params of the first layer and of each further layer; fixed parts.

    Exact for the benchmark's skeleton: every layer's input channels and size are fixed by its stage.
    """
    first = np.zeros((2, 7, 3, 2, 2))  # [macs|params, stage, e, k, se]
    rep = np.zeros((2, 7, 3, 2, 2))
    fixed = (0.0, 0.0)
    for ei, ki, si in np.ndindex(3, 2, 2):
        codes = np.array([(ei, ki, 2, si)] * 7)
        arch = _codes_arch(codes)
        blocks, _ = block_features(arch)
        for i in range(7):
            for j, target in ((0, first), (1, rep)):
                b = blocks[2 * i + j]
                target[0, i, ei, ki, si] = b.macs / 1e6
                target[1, i, ei, ki, si] = _block_params(b) / 1e6
        m, p = macs_params(arch)
        fixed = (m - (first[0] + rep[0])[np.arange(7), ei, ki, si].sum(),
                 p - (first[1] + rep[1])[np.arange(7), ei, ki, si].sum())
    return first, rep, fixed[0], fixed[1]


def _codes_macs_params(codes: np.ndarray) -> np.ndarray:
    """(n, 2) log MACs and log params (millions) of benchmark-space archs given as (n, 7, 4) codes, vectorised."""
    first, rep, fm, fp = _anb_tables()
    st = np.arange(7)[None, :]
    e, k, n, s = codes[..., 0], codes[..., 1], codes[..., 2], codes[..., 3]
    macs = fm + (first[0][st, e, k, s] + (n - 1) * rep[0][st, e, k, s]).sum(1)
    params = fp + (first[1][st, e, k, s] + (n - 1) * rep[1][st, e, k, s]).sum(1)
    return np.log(np.stack([macs, params], axis=1))


def _gp_features(codes: np.ndarray) -> np.ndarray:
    """log e, kernel 5, layers, se per stage, then log MACs and log params: the GP's inputs."""
    e = np.log(_E[codes[..., 0]])
    return np.hstack([e, codes[..., 1], codes[..., 2], codes[..., 3], _codes_macs_params(codes)]).astype(float)


def _mlp_features(codes: np.ndarray) -> np.ndarray:
    """One-hot block choices, then log MACs and log params: the MLPs' inputs."""
    cols = []
    for i in range(7):
        e, k, n, s = codes[:, i].T
        cols += [e == 0, e == 1, e == 2, k == 1, s == 1] + [n == j for j in range(1, ANB_MAX_LAYERS[i] + 1)]
    return np.hstack([np.stack(cols, 1).astype(float), _codes_macs_params(codes)])


# -- the two block learners, in numpy --------------------------------------------------------------------------------
def _matern52(a: np.ndarray, b: np.ndarray, length: np.ndarray) -> np.ndarray:
    a, b = a / length, b / length
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    r = np.sqrt(5.0 * np.maximum(d2, 0.0))
    return (1.0 + r + r * r / 3.0) * np.exp(-r)


def _lbfgs_capped(obj_func: Callable, initial_theta: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, float]:
    """L-BFGS-B on the GP's log marginal likelihood, capped at 60 iterations: bounds the fit time."""
    from scipy.optimize import minimize

    r = minimize(obj_func, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds, options={"maxiter": 60})
    return r.x, float(r.fun)


def _fit_gp(x: np.ndarray, y: np.ndarray, subset: int, seed: int) -> dict[str, Any]:
    """Matern-5/2 ARD GP: hyper-parameters by marginal likelihood on a random subset, then exact on all rows."""
    from scipy.linalg import cho_factor, cho_solve
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    mu, sd = x.mean(0), x.std(0) + 1e-12
    xs = (x - mu) / sd
    ym, ysd = float(y.mean()), float(y.std())
    yn = (y - ym) / ysd
    rng = np.random.default_rng(seed)
    sub = rng.choice(len(y), min(subset, len(y)), replace=False)
    kernel = ConstantKernel(4.0) * Matern(np.full(x.shape[1], 5.0), nu=2.5) + WhiteKernel(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gp = GaussianProcessRegressor(kernel, normalize_y=False, optimizer=_lbfgs_capped,
                                      random_state=seed).fit(xs[sub], yn[sub])
    k = gp.kernel_
    amp, length, noise = float(k.k1.k1.constant_value), np.asarray(k.k1.k2.length_scale, float), float(
        k.k2.noise_level)
    kmat = amp * _matern52(xs, xs, length)
    kmat[np.diag_indices_from(kmat)] += noise
    alpha = cho_solve(cho_factor(kmat, lower=True), yn)
    return {"x_mean": mu, "x_std": sd, "y_mean": ym, "y_std": ysd, "amplitude": amp, "length_scale": length,
            "noise": noise, "train_x": xs, "alpha": alpha}


def _gp_predict(gp: dict[str, Any], x: np.ndarray) -> np.ndarray:
    xs = (x - gp["x_mean"]) / gp["x_std"]
    out = np.empty(len(xs))
    for i in range(0, len(xs), 2048):  # bounded memory for many archs
        kx = gp["amplitude"] * _matern52(xs[i:i + 2048], gp["train_x"], gp["length_scale"])
        out[i:i + 2048] = kx @ gp["alpha"]
    return out * gp["y_std"] + gp["y_mean"]


def _fit_mlps(x: np.ndarray, y: np.ndarray, members: int, hidden: int, alpha: float, seed: int) -> dict[str, Any]:
    """An ensemble of one-hidden-layer ReLU MLPs (scikit-learn's trainer; the weights are kept as plain arrays)."""
    from sklearn.neural_network import MLPRegressor

    mu, sd = x.mean(0), x.std(0) + 1e-9
    ym, ysd = float(y.mean()), float(y.std())
    w1, b1, w2, b2 = [], [], [], []
    for m in range(members):
        net = MLPRegressor(hidden_layer_sizes=(hidden,), alpha=alpha, learning_rate_init=1e-3, max_iter=200,
                           batch_size=64, random_state=seed * 1000 + m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net.fit((x - mu) / sd, (y - ym) / ysd)
        w1.append(net.coefs_[0])
        b1.append(net.intercepts_[0])
        w2.append(net.coefs_[1][:, 0])
        b2.append(float(net.intercepts_[1][0]))
    return {"x_mean": mu, "x_std": sd, "y_mean": ym, "y_std": ysd, "w1": np.array(w1), "b1": np.array(b1),
            "w2": np.array(w2), "b2": np.array(b2)}


def _mlp_predict(mlp: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """(members, n) predictions."""
    xs = (x - mlp["x_mean"]) / mlp["x_std"]
    h = np.maximum(np.einsum("nf,mfh->mnh", xs, mlp["w1"]) + mlp["b1"][:, None, :], 0.0)
    return (np.einsum("mnh,mh->mn", h, mlp["w2"]) + mlp["b2"][:, None]) * mlp["y_std"] + mlp["y_mean"]


# -- the scaling part ---------------------------------------------------------------------------------------------
SCALING_FEATURES = ("benchmark_logit", "dlog_macs", "dlog_params", "log_res", "smooth_act")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p / 100.0, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _sigmoid100(z: np.ndarray) -> np.ndarray:
    return 100.0 / (1.0 + np.exp(-z))


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge on standardised columns; returns (mean, std, coefficients with the intercept last)."""
    mu, sd = x.mean(0), x.std(0) + 1e-9
    xs = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    reg = alpha * np.eye(xs.shape[1])
    reg[-1, -1] = 0.0
    return mu, sd, np.linalg.solve(xs.T @ xs + reg, xs.T @ y)


def _ridge_apply(mu: np.ndarray, sd: np.ndarray, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return ((x - mu) / sd) @ w[:-1] + w[-1]


_RES = SCALING_FEATURES.index("log_res")


def _ridge_fixed(x: np.ndarray, y: np.ndarray, res_coef: float, bench_slope: float, alpha: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scaling ridge on the remaining features, with the benchmark logit's slope and resolution's effect
    fixed (across timm's models both are confounded with width, depth and recipe: 70 rows cannot tell them
    apart, and a free fit gave resolution a negative effect and block differences a 2.5x amplification)."""
    return _ridge(_free(x), _logit(y) - bench_slope * x[:, 0] - res_coef * x[:, _RES], alpha)


def _scaled_logit(mu: np.ndarray, sd: np.ndarray, w: np.ndarray, res_coef: float, bench_slope: float,
                  x: np.ndarray) -> np.ndarray:
    return bench_slope * x[:, 0] + res_coef * x[:, _RES] + _ridge_apply(mu, sd, w, _free(x))


def _free(x: np.ndarray) -> np.ndarray:
    """The features the ridge fits (the fixed ones zeroed)."""
    xr = x.copy()
    xr[:, [0, _RES]] = 0.0
    return xr


def recipe_slope(path: Path | None = None) -> float:
    """How block differences carry from the benchmark's 16-epoch proxy to a longer recipe: the slope of the
    longer recipe's top-1 (logit, mean of 3 seeds) on the proxy's, over the 117 archs trained both ways
    (accel_nasbench_seeds.csv)."""
    by: dict[tuple[str, str], list[float]] = {}
    for r in read_rows(path or SEEDS_CSV):
        by.setdefault((r["arch"], r["scheme"]), []).append(float(r["val_top1"]))
    archs = sorted({a for a, _ in by if (a, "proxified") in by and (a, "fewproxy") in by})
    proxy = _logit(np.array([np.mean(by[a, "proxified"]) for a in archs]))
    longer = _logit(np.array([np.mean(by[a, "fewproxy"]) for a in archs]))
    return float(np.polyfit(proxy, longer, 1)[0])


def resolution_effect(timm_rows: Iterable[dict[str, Any]]) -> tuple[float, int]:
    """Slope of top-1 (logit) on log resolution within each checkpoint timm evaluated at two or more resolutions
    (same weights, so nothing but resolution changes), pooled over every ImageNet-1k-only row, expressible or not.
    It measures test-time resizing of weights trained at one size: a conservative (low) figure for a network
    trained and deployed at the new size."""
    by_model: dict[str, list[tuple[float, float]]] = {}
    for r in timm_rows:
        if r.get("extra_data", "no").strip().lower() != "yes":
            by_model.setdefault(r["model"], []).append((math.log(float(r["img_size"])), float(r["top1"])))
    dx, dy = [], []
    for pts in by_model.values():
        if len({p[0] for p in pts}) < 2:
            continue
        xs = np.array([p[0] for p in pts])
        ys = _logit(np.array([p[1] for p in pts]))
        dx.extend(xs - xs.mean())
        dy.extend(ys - ys.mean())
    if not dx:
        return 0.0, 0
    dx_a, dy_a = np.array(dx), np.array(dy)
    return float(max(dx_a @ dy_a / (dx_a @ dx_a), 0.0)), len(dx_a)


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b)[0])


def _scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    return {"kendall_tau": round(_kendall(pred, y), 4), "spearman": round(float(spearmanr(pred, y)[0]), 4),
            "mae": round(float(np.abs(pred - y).mean()), 4), "rmse": round(float(np.sqrt(((pred - y) ** 2).mean())), 4),
            "n": len(y)}


# -- the model -------------------------------------------------------------------------------------------------------
class ImageNetAccuracyModel:
    """Predicted ImageNet-1k top-1 (mean, std) of archs; see the module docstring for the unit and the parts."""

    kind = "imagenet_accuracy"

    def __init__(self, n_mlp: int = 8, mlp_hidden: int = 128, mlp_alpha: float = 0.1, gp_subset: int = 500,
                 scaling_alpha: float = 1.0, seed: int = 0) -> None:
        self.n_mlp = n_mlp
        self.mlp_hidden = mlp_hidden
        self.mlp_alpha = mlp_alpha
        self.gp_subset = gp_subset
        self.scaling_alpha = scaling_alpha
        self.seed = seed

    # -- fitting ------------------------------------------------------------------------------------------------
    def fit(self, anb_rows: list[dict[str, Any]], timm_rows: list[dict[str, Any]] | None = None,
            timm_archs: dict[str, Arch] | None = None) -> ImageNetAccuracyModel:
        """Fit the block model on Accel-NASBench rows, then (when given) the scaling model on timm's rows."""
        if len(anb_rows) < 20:
            raise ValueError(f"anb_rows: fit needs at least 20 Accel-NASBench rows, got {len(anb_rows)}")
        self.fit_blocks(np.stack([_codes_of_row(r) for r in anb_rows]),
                        np.array([float(r["val_top1"]) for r in anb_rows]))
        if timm_rows is not None:
            self.fit_scaling(timm_rows, timm_archs or load_timm_archs())
        return self

    def fit_blocks(self, codes: np.ndarray, y: np.ndarray) -> ImageNetAccuracyModel:
        """The block model on (n, 7, 4) benchmark codes and their proxy top-1."""
        self.gp_ = _fit_gp(_gp_features(codes), y, self.gp_subset, self.seed)
        self.mlp_ = _fit_mlps(_mlp_features(codes), y, self.n_mlp, self.mlp_hidden, self.mlp_alpha, self.seed)
        resid = y - self._block(codes)[0]
        self.block_train_rmse_ = float(np.sqrt((resid ** 2).mean()))
        self.block_noise_ = getattr(self, "block_noise_", self.block_train_rmse_)
        self.scaling_ = getattr(self, "scaling_", None)
        return self

    def _block(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Benchmark-unit mean and ensemble spread: the mean of the GP and of the MLP ensemble's mean."""
        gp = _gp_predict(self.gp_, _gp_features(codes))
        mlps = _mlp_predict(self.mlp_, _mlp_features(codes))
        mean = 0.5 * (gp + mlps.mean(0))
        spread = np.sqrt(mlps.var(0) / len(mlps) + (0.5 * (gp - mlps.mean(0))) ** 2)
        return mean, spread

    def scaling_features(self, archs: list[Arch], bench: np.ndarray | None = None) -> np.ndarray:
        """``SCALING_FEATURES`` per arch: the projection's benchmark score (logit) and how the arch differs from it."""
        codes = np.stack([_project(a) for a in archs])
        if bench is None:
            bench = self._block(codes)[0]
        proj = _codes_macs_params(codes)
        # At 224 px: resolution enters through log_res alone (MACs at the arch's own resolution made the two
        # collinear, and the ridge then gave resolution a negative effect).
        own = np.array([_log_macs_params(replace(a, resolution=224)) for a in archs])
        res = np.log(np.array([a.resolution for a in archs]) / 224.0)
        smooth = np.array([_smooth_fraction(a) for a in archs])
        return np.column_stack([_logit(bench), own - proj, res, smooth])

    def fit_scaling(self, timm_rows: list[dict[str, Any]], timm_archs: dict[str, Arch],
                    log: Callable[[str], None] | None = None, bench_slope: float | None = None
                    ) -> ImageNetAccuracyModel:
        """The scaling model on timm's published top-1 (rows with extra_data=yes or no Arch are left out).

        Two effects are fixed from data that isolates them, not fitted on timm's 70 rows (where they are confounded
        with width, depth and recipe): the benchmark score's slope (``recipe_slope``: how block differences carry
        to a longer recipe) and resolution's (``resolution_effect``)."""
        archs, y, fam, skipped = timm_table(timm_rows, timm_archs)
        res_coef, n_pairs = resolution_effect(timm_rows)
        slope = recipe_slope() if bench_slope is None else bench_slope
        x = self.scaling_features(archs)
        mu, sd, w = _ridge_fixed(x, y, res_coef, slope, self.scaling_alpha)
        fit = _sigmoid100(_scaled_logit(mu, sd, w, res_coef, slope, x))
        self.scaling_ = {"x_mean": mu, "x_std": sd, "coef": w, "train_rmse": float(np.sqrt(((fit - y) ** 2).mean())),
                         "n_rows": len(y), "n_archs": len({a.hash for a in archs}), "skipped_rows": skipped,
                         "families": sorted(set(fam)), "res_coef": res_coef, "res_pairs": n_pairs,
                         "benchmark_slope": float(slope)}
        self.lofo_ = self.leave_one_family_out(archs, y, fam, res_coef, slope)
        self.scaling_["lofo_rmse"] = self.lofo_["model"]["rmse"]
        if log:
            log(f"scaling fit: {len(y)} timm rows ({len(set(fam))} families; {skipped} rows skipped), "
                f"slope on the benchmark logit {slope:.2f}, train RMSE {self.scaling_['train_rmse']:.2f}")
        return self

    def leave_one_family_out(self, archs: list[Arch], y: np.ndarray, fam: list[str], res_coef: float = 0.0,
                             bench_slope: float = 1.0) -> dict[str, Any]:
        """Each family held out of the scaling fit in turn; the model against a line in log MACs and log params."""
        x = self.scaling_features(archs)
        lmp = np.array([_log_macs_params(a) for a in archs])
        fam_a = np.array(fam)
        pred, base = np.full(len(y), np.nan), np.full(len(y), np.nan)
        for f in sorted(set(fam)):
            te, tr = fam_a == f, fam_a != f
            mu, sd, w = _ridge_fixed(x[tr], y[tr], res_coef, bench_slope, self.scaling_alpha)
            pred[te] = _sigmoid100(_scaled_logit(mu, sd, w, res_coef, bench_slope, x[te]))
            mu, sd, w = _ridge(lmp[tr], y[tr], 1e-6)
            base[te] = _ridge_apply(mu, sd, w, lmp[te])
        per = {}
        for f in sorted(set(fam)):
            m = fam_a == f
            per[f] = {"n": int(m.sum()), "model_kendall": round(_kendall(pred[m], y[m]), 4) if m.sum() > 1 else None,
                      "baseline_kendall": round(_kendall(base[m], y[m]), 4) if m.sum() > 1 else None,
                      "model_mae": round(float(np.abs(pred[m] - y[m]).mean()), 3)}
        return {"model": _scores(pred, y), "baseline_log_macs_params": _scores(base, y), "per_family": per}

    # -- prediction ---------------------------------------------------------------------------------------------
    def domain(self, arch: Arch) -> str:
        """'accel_nasbench' (the benchmark's archs exactly), 'scaled' (its blocks at another width or resolution),
        or 'extrapolated' (anything else: other act, kernel 7, expansion 3, other channels, mobilenetv3, ...)."""
        if not _in_block_space(arch):
            return "extrapolated"
        return "accel_nasbench" if arch.width == 1.0 and arch.resolution == 224 else "scaled"

    def predict_benchmark(self, archs: list[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """Benchmark-unit (16-epoch proxy top-1) mean and std; other archs are scored by their projection."""
        if not archs:
            return np.zeros(0), np.zeros(0)
        mean, spread = self._block(np.stack([_project(a) for a in archs]))
        return mean, np.sqrt(spread ** 2 + self.block_noise_ ** 2)

    def predict(self, archs: list[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 (%) in ``UNIT`` and its std: the block model's uncertainty, plus the scaling fit's error where
        the arch leaves the benchmark (its training error when scaled, its held-out-family error when extrapolated)."""
        if self.scaling_ is None:
            raise ValueError("predict needs the scaling model: fit with timm_rows, or use predict_benchmark")
        if not archs:
            return np.zeros(0), np.zeros(0)
        sc = self.scaling_
        codes = np.stack([_project(a) for a in archs])
        bench, spread = self._block(codes)
        domains = [self.domain(a) for a in archs]
        x = np.zeros((len(archs), len(SCALING_FEATURES)))
        x[:, 0] = _logit(bench)
        other = [i for i, d in enumerate(domains) if d != "accel_nasbench"]
        if other:
            x[other] = self.scaling_features([archs[i] for i in other], bench[other])
        mean = _sigmoid100(_scaled_logit(sc["x_mean"], sc["x_std"], sc["coef"], sc["res_coef"],
                                         sc["benchmark_slope"], x))
        # d top1 / d bench through the logit map: the block std carried into the output unit.
        p, q = mean / 100.0, np.clip(bench / 100.0, 1e-4, 1 - 1e-4)
        gain = sc["benchmark_slope"] * p * (1 - p) / (q * (1 - q))
        std2 = (gain * np.sqrt(spread ** 2 + self.block_noise_ ** 2)) ** 2
        extra = {"accel_nasbench": 0.0, "scaled": sc["train_rmse"], "extrapolated": sc["lofo_rmse"]}
        std2 = std2 + np.array([extra[d] for d in domains]) ** 2
        return mean, np.sqrt(std2)

    # -- persistence --------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything as plain JSON values."""
        def plain(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {"params": {"n_mlp": self.n_mlp, "mlp_hidden": self.mlp_hidden, "mlp_alpha": self.mlp_alpha,
                           "gp_subset": self.gp_subset, "scaling_alpha": self.scaling_alpha, "seed": self.seed},
                "gp": plain(self.gp_), "mlp": plain(self.mlp_), "block_noise": self.block_noise_,
                "block_train_rmse": self.block_train_rmse_, "scaling": plain(self.scaling_),
                "scaling_features": list(SCALING_FEATURES), "lofo": getattr(self, "lofo_", None),
                "cv": getattr(self, "cv_", None)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ImageNetAccuracyModel:
        if state.get("scaling_features", list(SCALING_FEATURES)) != list(SCALING_FEATURES):
            raise ValueError("accuracy model file uses other scaling features: refit it with `nas accuracy fit`")
        m = cls(**state["params"])

        def arrays(d: dict[str, Any]) -> dict[str, Any]:
            return {k: np.array(v, dtype=float) if isinstance(v, list) else v for k, v in d.items()}

        m.gp_ = arrays(state["gp"])
        m.mlp_ = arrays(state["mlp"])
        m.block_noise_ = float(state["block_noise"])
        m.block_train_rmse_ = float(state["block_train_rmse"])
        sc = state.get("scaling")
        m.scaling_ = None if sc is None else {
            k: (np.array(v, dtype=float) if k in ("x_mean", "x_std", "coef") else v) for k, v in sc.items()}
        if state.get("lofo") is not None:
            m.lofo_ = state["lofo"]
        if state.get("cv") is not None:
            m.cv_ = state["cv"]
        return m

    def save(self, path: str | Path, provenance: dict[str, Any] | None = None) -> Path:
        """One JSON file: format, unit, provenance of the data, the fit's cross-validated figures and the state."""
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind, "unit": UNIT,
               "benchmark_unit": BENCHMARK_UNIT, "provenance": provenance or getattr(self, "provenance_", {}),
               "cv": getattr(self, "cv_", None), "lofo": getattr(self, "lofo_", None), "state": self.state()}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ImageNetAccuracyModel:
        doc = json.loads(Path(path).read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"{path} is not a nas ImageNet accuracy model file")
        if doc.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path} has format version {doc['format_version']}; this nas reads up to "
                             f"{FORMAT_VERSION}: upgrade nas")
        m = cls.from_state(doc["state"])
        m.provenance_ = doc.get("provenance", {})
        return m


@functools.cache
def _log_macs_params_cached(arch: Arch) -> tuple[float, float]:
    m, p = macs_params(arch)
    return math.log(m), math.log(p)


def _log_macs_params(arch: Arch) -> tuple[float, float]:
    return _log_macs_params_cached(arch)


def _smooth_fraction(arch: Arch) -> float:
    """Share of layers with a smooth activation (swish, hard-swish), against ReLU/ReLU6."""
    n = s = 0
    for stage in arch.stages:
        for b in stage:
            n += b.repeats
            s += b.repeats * ((b.act or arch.act) in _SMOOTH_ACTS)
    return s / max(n, 1)


@functools.cache
def load_default() -> ImageNetAccuracyModel:
    """The shipped fitted model (predictors/data/imagenet_accuracy.json), loaded once."""
    return ImageNetAccuracyModel.load(DEFAULT_PATH)


# -- timm's published rows -----------------------------------------------------------------------------------------
def load_timm_archs(path: Path = TIMM_ARCHS_JSON, regenerate: bool = True) -> dict[str, Arch]:
    """timm arch name -> Arch, from the shipped cache (regenerated with ``build_timm_archs`` when missing)."""
    if not path.exists():
        if not regenerate:
            raise FileNotFoundError(path)
        build_timm_archs(path)
    doc = json.loads(path.read_text())
    return {name: Arch.from_dict(d) for name, d in doc["archs"].items()}


def build_timm_archs(path: Path = TIMM_ARCHS_JSON, timm_csv: Path = TIMM_CSV,
                     log: Callable[[str], None] = print) -> Path:
    """Read every timm arch named in timm_imagenet_mbconv.csv with ``arch_from_timm`` and cache the Archs as JSON
    (building 100 timm models is slow; fitting reads the cache). Archs that cannot be expressed are listed."""
    from nas.search_spaces.timm_arch import arch_from_timm

    names = sorted({r["arch"] for r in read_rows(timm_csv)})
    archs, skipped = {}, {}
    for name in names:
        try:
            archs[name] = arch_from_timm(name).to_dict()
        except Exception as e:  # any model the Arch cannot say is skipped and named
            skipped[name] = str(e).splitlines()[0][:200]
    log(f"timm archs: {len(archs)} read, {len(skipped)} cannot be expressed as an Arch")
    doc = {"note": "Archs of timm_imagenet_mbconv.csv's arch names, read by timm_arch.arch_from_timm at timm's "
                   "default resolution; regenerate with nas.predictors.imagenet_accuracy.build_timm_archs",
           "archs": archs, "skipped": skipped}
    path.write_text(json.dumps(doc, indent=1, sort_keys=True))
    return path


def timm_table(timm_rows: Iterable[dict[str, Any]], timm_archs: dict[str, Arch],
               ) -> tuple[list[Arch], np.ndarray, list[str], int]:
    """(archs at each row's eval resolution, top-1, family, rows skipped) for ImageNet-1k-only rows with an Arch."""
    archs, y, fam, skipped = [], [], [], 0
    for r in timm_rows:
        if r.get("extra_data", "no").strip().lower() == "yes":
            continue
        a = timm_archs.get(r["arch"])
        if a is None:
            skipped += 1
            continue
        archs.append(replace(a, resolution=int(r["img_size"])))
        y.append(float(r["top1"]))
        fam.append(r["family"])
    return archs, np.array(y), fam, skipped


# -- the fit used by `nas accuracy fit` ----------------------------------------------------------------------------
def cv_folds(n: int, folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Test indices of a shuffled k-fold split over architectures (rows)."""
    return np.array_split(np.random.default_rng(seed).permutation(n), folds)


def cross_validate_blocks(codes: np.ndarray, y: np.ndarray, params: dict[str, Any], folds: list[np.ndarray],
                          log: Callable[[str], None] = print) -> np.ndarray:
    """Out-of-fold benchmark-unit predictions of the block model (each fold fitted without it)."""
    pred = np.zeros(len(y))
    for i, te in enumerate(folds):
        tr = np.setdiff1d(np.arange(len(y)), te)
        t = time.perf_counter()
        m = ImageNetAccuracyModel(**params).fit_blocks(codes[tr], y[tr])
        pred[te] = m._block(codes[te])[0]
        log(f"  fold {i + 1}/{len(folds)}: Kendall {_kendall(pred[te], y[te]):.4f} ({time.perf_counter() - t:.0f} s)")
    return pred


def fit_default(anb_path: str | Path = ANB_CSV, timm_path: str | Path = TIMM_CSV, seed: int = 0,
                log: Callable[[str], None] = print) -> ImageNetAccuracyModel:
    """Fit the shipped model: 5-fold CV of the block model (its figures and noise), the final fit, the scaling fit."""
    t0 = time.perf_counter()
    rows = read_rows(anb_path)
    codes = np.stack([_codes_of_row(r) for r in rows])
    y = np.array([float(r["val_top1"]) for r in rows])
    params = {"seed": seed}
    log(f"Accel-NASBench: {len(y)} archs; 5-fold cross-validation of the block model (GP + {8} MLPs)")
    oof = cross_validate_blocks(codes, y, params, cv_folds(len(y), 5, seed), log)
    cv = _scores(oof, y)
    log(f"block model, 5-fold CV: Kendall {cv['kendall_tau']}, Spearman {cv['spearman']}, MAE {cv['mae']}")
    model = ImageNetAccuracyModel(**params)
    model.block_noise_ = cv["rmse"]  # the held-out error, as the std's floor
    model.fit_blocks(codes, y)
    log(f"block model fitted on all {len(y)} archs ({time.perf_counter() - t0:.0f} s)")
    timm_rows = read_rows(timm_path)
    model.fit_scaling(timm_rows, load_timm_archs(), log)
    lo = model.lofo_
    log(f"scaling, leave-one-family-out: Kendall {lo['model']['kendall_tau']} (log MACs/params line "
        f"{lo['baseline_log_macs_params']['kendall_tau']}), RMSE {lo['model']['rmse']}")
    model.cv_ = {"block_5fold": {**cv, "unit": BENCHMARK_UNIT, "folds": "shuffled 5-fold over archs, seed "
                                 f"{seed}"}, "fit_seconds": round(time.perf_counter() - t0, 1)}
    model.provenance_ = {p.name: read_header(p) for p in (Path(anb_path), Path(timm_path), SEEDS_CSV)}
    model.provenance_["timm_archs"] = "timm_archs.json: Archs read from timm by timm_arch.arch_from_timm"
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return model
