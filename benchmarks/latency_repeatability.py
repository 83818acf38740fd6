"""Latency repeatability: one model measured N times, each in a fresh ONNX Runtime session as a trial does.

Goal (issue 2): the p50 of the runs within +-3% of their median. Prints one row per run and the spread.

    python benchmarks/latency_repeatability.py [--arch mobilenetv2_100] [--runs 5] [--warmup 10] [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from nas.build import build_model
from nas.config import TargetConfig
from nas.onnx_export import export_onnx
from nas.search_spaces.references import reference_archs
from nas.targets.factory import make_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mobilenetv2_100")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=TargetConfig.warmup)
    ap.add_argument("--repeats", type=int, default=TargetConfig.repeats)
    ap.add_argument("--threads", type=int, default=TargetConfig.threads)
    args = ap.parse_args()
    cfg = TargetConfig(warmup=args.warmup, repeats=args.repeats, threads=args.threads)
    target = make_target(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(build_model(reference_archs()[args.arch], num_classes=10), tuple(cfg.input_shape),
                           Path(tmp) / "model.onnx")
        rows = [target.measure(path) for _ in range(args.runs)]
    for i, s in enumerate(rows):
        print(f"run {i + 1}: p50 {s.p50:.3f} ms  p90 {s.p90:.3f}  p99 {s.p99:.3f}  cv {s.cv:.1%}")
    p50s = [s.p50 for s in rows]
    med = statistics.median(p50s)
    spread = max(abs(p - med) for p in p50s) / med
    p90s = [s.p90 for s in rows]
    spread90 = max(abs(p - statistics.median(p90s)) for p in p90s) / statistics.median(p90s)
    print(f"{args.arch}: median p50 {med:.3f} ms, p50 spread +-{spread:.1%} (goal +-3%), p90 spread +-{spread90:.1%}")
    print(json.dumps({"arch": args.arch, "median_p50_ms": med, "p50_spread": spread, "p90_spread": spread90,
                      "warmup": args.warmup, "repeats": args.repeats}))


if __name__ == "__main__":
    main()
