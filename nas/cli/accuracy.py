"""`nas accuracy fit | eval | predict`: the ImageNet accuracy model from the command line.

The interfaces other tools call are kept exact: ``eval data=PATH format=json`` and ``predict arch=... format=json``
end stdout with one JSON object.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from nas.accuracy.imagenet import ImageNetAccuracy
from nas.config import AccuracyCmdConfig, workdir_path
from nas.core.errors import ConfigError, DatasetError, first_line
from nas.search_spaces.arch_spec import load_arch


def fit(cfg: AccuracyCmdConfig, say: Any) -> int:
    from nas.predictors.imagenet_accuracy import DATA_DIR, fit_default

    out = Path(cfg.out).expanduser() if cfg.out else workdir_path(cfg.workdir) / "imagenet_accuracy.json"
    t0 = time.perf_counter()
    model = fit_default(DATA_DIR / "accel_nasbench.csv", DATA_DIR / "timm_imagenet_mbconv.csv", seed=cfg.seed,
                        log=lambda msg: say(msg))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    cv = getattr(model, "cv_", None) or {}
    say(f"fitted in {time.perf_counter() - t0:.0f} s -> {out}; use it with accuracy.model={out}")
    if cfg.format == "json":
        print(json.dumps({"path": str(out), "cv": cv}))
    return 0


def evaluate(cfg: AccuracyCmdConfig, say: Any) -> int:
    from scipy.stats import kendalltau, spearmanr

    from nas.predictors.imagenet_accuracy import BENCHMARK_UNIT, anb_arch, read_rows

    if cfg.data is None:
        raise ConfigError("nas accuracy eval needs data=PATH: a CSV in accel_nasbench.csv's format")
    path = Path(cfg.data).expanduser()
    if not path.is_file():
        raise DatasetError(f"data={cfg.data}: no such file")
    try:
        rows = read_rows(path)
        archs = [anb_arch(r) for r in rows]
        truth = np.array([float(r["val_top1"]) for r in rows])
    except (KeyError, ValueError, TypeError) as e:
        raise DatasetError(f"data={cfg.data} is not in accel_nasbench.csv's format (block{{0..6}}_{{e,k,l,se}}, "
                           f"val_top1): {first_line(e)}") from None
    if len(rows) < 2:
        raise DatasetError(f"data={cfg.data} holds {len(rows)} row(s): at least 2 are needed to rank")
    model = ImageNetAccuracy(cfg.model).model
    mean, std = model.predict_benchmark(archs)
    for i, (r, m, s, t) in enumerate(zip(rows, mean, std, truth, strict=True)):
        say(f"{i:>5} {r.get('file', '') or archs[i].hash[:8]:<18} predicted {m:6.2f} ± {s:4.2f}  val_top1 {t:6.2f}")
    result = {"kendall_tau": float(kendalltau(mean, truth).statistic),
              "spearman": float(spearmanr(mean, truth).statistic),
              "mae": float(np.mean(np.abs(mean - truth))), "n": len(rows)}
    say(f"{len(rows)} archs: Kendall tau {result['kendall_tau']:.3f}, Spearman {result['spearman']:.3f}, "
        f"MAE {result['mae']:.2f} points (unit: {BENCHMARK_UNIT})")
    if cfg.format == "json":
        print(json.dumps(result))
    return 0


def predict(cfg: AccuracyCmdConfig, say: Any) -> int:
    if cfg.arch is None:
        raise ConfigError("nas accuracy predict needs arch=NAME (a timm model or reference), arch.json, or an Arch "
                          "as JSON")
    arch = load_arch(cfg.arch, cfg.resolution)
    source = ImageNetAccuracy(cfg.model)
    p = source.score([arch])[0]
    if not math.isfinite(p.top1):
        raise ConfigError(f"arch={cfg.arch}: the accuracy model gives no finite prediction for it")
    say(f"{arch.name or arch.hash[:8]} at {arch.resolution} px: {p.top1:.2f} ± {p.std:.2f} % predicted "
        f"({source.unit}); domain: {p.domain}")
    if cfg.format == "json":
        print(json.dumps({"top1": p.top1, "std": p.std, "domain": p.domain, "unit": source.unit,
                          "arch": arch.name or arch.hash, "arch_hash": arch.hash, "resolution": arch.resolution}))
    return 0
