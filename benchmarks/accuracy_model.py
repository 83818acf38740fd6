"""How well the ImageNet accuracy model ranks architectures it never saw, against the obvious baselines.

Run: ``.venv/bin/python benchmarks/accuracy_model.py`` (about 10 minutes on 2 cores); writes
``benchmarks/results/accuracy_model.json``.

(a) 5-fold CV over Accel-NASBench archs: the block model vs the Accel-NASBench authors' XGBoost recipe on the raw
    28 block columns (one seed, and a 5-seed ensemble), same folds; Kendall tau, Spearman, MAE.
(b) fitted on the authors' ``train`` split, scored on their ``val`` split.
(c) the noise ceiling: one seed against another in accel_nasbench_seeds.csv (Kendall).
(d) leave-one-family-out on timm's ImageNet-1k-only rows: the scaling model vs a line in log MACs and log params.
(e) the cost of ``predict`` per arch for 5,000 archs.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from nas.predictors import imagenet_accuracy as ia

RESULTS = Path(__file__).parent / "results" / "accuracy_model.json"
XGB_PARAMS = {"booster": "gbtree", "max_depth": 3, "min_child_weight": 63, "colsample_bytree": 1.0,
              "colsample_bylevel": 0.916, "reg_lambda": 5.42, "reg_alpha": 0.23, "learning_rate": 0.094}


def raw_columns(rows: list[dict[str, str]]) -> np.ndarray:
    """The 28 block columns as the authors fed them to XGBoost (se as 0/1)."""
    cols = [f"block{i}_{p}" for i in range(7) for p in ("e", "k", "l", "se")]
    return np.array([[float(r[c] == "true") if c.endswith("_se") else float(r[c]) for c in cols] for r in rows])


def xgb_fit_predict(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, seed: int) -> np.ndarray:
    """The authors' recipe: early stopping after 100 rounds on a 10% validation part of the training fold."""
    import xgboost as xgb

    perm = np.random.default_rng(seed).permutation(len(y_tr))
    va, tr = perm[: len(perm) // 10], perm[len(perm) // 10:]
    m = xgb.XGBRegressor(**XGB_PARAMS, n_estimators=5000, early_stopping_rounds=100, random_state=seed, n_jobs=2)
    m.fit(x_tr[tr], y_tr[tr], eval_set=[(x_tr[va], y_tr[va])], verbose=False)
    return m.predict(x_te)


def xgb_oof(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray], seeds: int) -> list[np.ndarray]:
    """Out-of-fold predictions of each seed's XGBoost."""
    out = []
    for s in range(seeds):
        pred = np.zeros(len(y))
        for te in folds:
            tr = np.setdiff1d(np.arange(len(y)), te)
            pred[te] = xgb_fit_predict(x[tr], y[tr], x[te], s)
        out.append(pred)
    return out


def main() -> None:
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    res: dict = {"command": "python benchmarks/accuracy_model.py", "unit_benchmark": ia.BENCHMARK_UNIT,
                 "unit": ia.UNIT}
    rows = ia.read_rows(ia.ANB_CSV)
    codes = np.stack([ia._codes_of_row(r) for r in rows])
    y = np.array([float(r["val_top1"]) for r in rows])
    x_raw = raw_columns(rows)
    folds = ia.cv_folds(len(y), 5, seed=0)

    print(f"(a) 5-fold CV over {len(y)} Accel-NASBench archs", flush=True)
    ours = ia.cross_validate_blocks(codes, y, {"seed": 0}, folds)
    print("  XGBoost (authors' recipe), 5 seeds ...", flush=True)
    xg = xgb_oof(x_raw, y, folds, 5)
    res["a_cv5"] = {"model": ia._scores(ours, y), "xgboost_1seed": ia._scores(xg[0], y),
                    "xgboost_5seed_ensemble": ia._scores(np.mean(xg, 0), y),
                    "model_plus_xgb5_mean": ia._scores(0.5 * (ours + np.mean(xg, 0)), y)}
    for k, v in res["a_cv5"].items():
        print(f"  {k}: Kendall {v['kendall_tau']} Spearman {v['spearman']} MAE {v['mae']}", flush=True)

    print("(b) fitted on the authors' train split, scored on val", flush=True)
    split = np.array([r["split"] for r in rows])
    tr, va = np.where(split == "train")[0], np.where(split == "val")[0]
    m = ia.ImageNetAccuracyModel(seed=0).fit_blocks(codes[tr], y[tr])
    p_model = m._block(codes[va])[0]
    p_xgb = [xgb_fit_predict(x_raw[tr], y[tr], x_raw[va], s) for s in range(5)]
    res["b_train_to_val"] = {"model": ia._scores(p_model, y[va]), "xgboost_1seed": ia._scores(p_xgb[0], y[va]),
                             "xgboost_5seed_ensemble": ia._scores(np.mean(p_xgb, 0), y[va])}
    for k, v in res["b_train_to_val"].items():
        print(f"  {k}: Kendall {v['kendall_tau']} Spearman {v['spearman']} MAE {v['mae']}", flush=True)

    print("(c) noise ceiling: one seed against another (proxified scheme)", flush=True)
    seeds = ia.read_rows(ia.SEEDS_CSV)
    by: dict[str, dict[int, float]] = {}
    for r in seeds:
        if r["scheme"] == "proxified":
            by.setdefault(r["seed"], {})[int(r["arch"])] = float(r["val_top1"])
    names = sorted(by)
    common = sorted(set.intersection(*(set(by[s]) for s in names)))
    pairs = {f"{a}-{b}": round(float(kendalltau([by[a][i] for i in common], [by[b][i] for i in common])[0]), 4)
             for j, a in enumerate(names) for b in names[j + 1:]}
    seed_rows = [r for r in seeds if r["scheme"] == "proxified"]
    p_seed = load_or_fit_block_model().predict_benchmark([ia.anb_arch(r) for r in seed_rows])[0]
    res["c_noise_ceiling"] = {"seed_vs_seed_kendall": pairs, "n_archs": len(common),
                              "note": "the shipped model scored against each seed's top-1 of these archs "
                                      "(some may be in its training data)",
                              "shipped_model_vs_seed_kendall": {
                                  s: round(float(kendalltau([p for p, r in zip(p_seed, seed_rows, strict=True)
                                                             if r["seed"] == s],
                                                            [float(r["val_top1"]) for r in seed_rows
                                                             if r["seed"] == s])[0]), 4) for s in names}}
    print(f"  {pairs}", flush=True)

    print("(d) leave-one-family-out on timm's ImageNet-1k rows", flush=True)
    model = load_or_fit_block_model()
    archs, yt, fam, skipped = ia.timm_table(ia.read_rows(ia.TIMM_CSV), ia.load_timm_archs())
    sc = model.scaling_  # the same fixed effects as the fit (resolution, the benchmark score's slope)
    lofo = model.leave_one_family_out(archs, yt, fam, sc["res_coef"], sc["benchmark_slope"])
    res["d_lofo_timm"] = {**lofo, "rows_skipped_no_arch": skipped, "n_rows": len(yt)}
    print(f"  model Kendall {lofo['model']['kendall_tau']} vs log MACs/params line "
          f"{lofo['baseline_log_macs_params']['kendall_tau']} over {len(yt)} rows ({skipped} rows skipped)")
    for f, v in lofo["per_family"].items():
        print(f"    {f}: n={v['n']} model {v['model_kendall']} baseline {v['baseline_kendall']}", flush=True)

    print("(e) cost of predict for 5,000 archs", flush=True)
    rng = np.random.default_rng(1)
    sample = [ia.anb_arch(rows[i]) for i in rng.integers(0, len(rows), 5000)]
    model.predict(sample[:10])
    t = time.perf_counter()
    model.predict(sample)
    in_dom = (time.perf_counter() - t) / len(sample) * 1e6
    from dataclasses import replace

    scaled = [replace(a, width=1.2, resolution=256) for a in sample]
    t = time.perf_counter()
    model.predict(scaled)
    us_scaled = (time.perf_counter() - t) / len(sample) * 1e6
    res["e_cost_us_per_arch"] = {"accel_nasbench": round(in_dom, 1), "scaled_first_call": round(us_scaled, 1)}
    print(f"  {in_dom:.1f} us/arch in the benchmark's space, {us_scaled:.1f} us/arch scaled (first call, uncached "
          "MACs)")
    res["seconds"] = round(time.perf_counter() - t0, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=1))
    print(f"wrote {RESULTS} ({res['seconds']} s)")


_MODEL: list[ia.ImageNetAccuracyModel] = []


def load_or_fit_block_model() -> ia.ImageNetAccuracyModel:
    """The shipped model (the scaling part is refitted per held-out family in (d))."""
    if not _MODEL:
        _MODEL.append(ia.load_default())
    return _MODEL[0]


if __name__ == "__main__":
    main()
