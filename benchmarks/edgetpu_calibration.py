"""Calibrate the analytic Edge TPU model on published timings and print its honest error figures.

Fits the constants (predictors/data/edgetpu_constants.json) on the calibration rows (Coral's Table 1 subset and the
public rows: 5 hosts, 5 sources), then prints:

- the fitted constants (effective MAC rate, link bandwidths, host overheads, source offsets, the clock scaling);
- leave-one-out (LOO, one row out) and nested leave-one-architecture-out (LOAO: all rows of one architecture, every
  host and source, out at once; the on-chip memory chosen again inside each fold) median abs error and Spearman,
  per source and per host, against the goal (desktop_usb3 LOAO: <= 15%, >= 0.95);
- the held-out check on published timings of architectures outside the calibration rows
  (predictors/data/edgetpu_validation.csv; goal: median <= 25%, Spearman >= 0.9, large models not under-predicted);
- the streaming step per host, and the Edge TPU compiler's split on our own int8 TFLite candidates (ops that fall
  back to the CPU), checked against the ONNX analysis the search uses.

    python benchmarks/edgetpu_calibration.py [--extract] [--skip-tflite] [--constants PATH]

``--extract`` rebuilds the zoo's features from timm / torchvision models (random weights, about 4 minutes here);
without it the shipped features CSV is used and the fit takes a few seconds. The TFLite check converts four
reference architectures at 64 px (about a minute).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ ships with the repo, not the package
from nas.predictors.edgetpu_model import EdgeTpuModel, features_of
from tools import edgetpu_calibration as ec

LOAO_GOAL = (0.15, 0.95)  # desktop_usb3: median abs error, Spearman
VALIDATION_GOAL = (0.25, 0.90)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(x: float) -> str:
    return "   n/a" if not np.isfinite(x) else f"{100 * x:5.1f}%"


def rho(x: float) -> str:
    return "  n/a" if not np.isfinite(x) else f"{x:.3f}"


def print_summary(title: str, rows: list[ec.Row], pred: np.ndarray, by: str) -> dict:
    s = ec.summarize(rows, pred, by)
    print(f"  {title} by {by}:")
    print(f"    {by:24s} {'rows':>4s} {'median|err|':>11s} {'Spearman':>8s} {'median err':>10s}")
    for g, v in sorted(s.items(), key=lambda kv: (kv[0] != "all", kv[0])):
        print(f"    {g:24s} {v['rows']:4d} {pct(v['mdape']):>11s} {rho(v['spearman']):>8s} "
              f"{100 * v['median_signed']:+9.1f}%")
    return s


def print_rows(rows: list[ec.Row], pred: np.ndarray, feats: dict, label: str) -> None:
    print(f"    {'model':30s} {'host':13s} {'source':22s} {'MHz':>5s} {'int8 MB':>7s} {'measured':>8s} "
          f"{label:>8s} {'err':>7s}")
    for r, p in zip(rows, pred, strict=True):
        print(f"    {r.model[:30]:30s} {r.host:13s} {r.source:22s} {r.clock_mhz:5.0f} "
              f"{feats[r.key].param_bytes / 1e6:7.1f} {r.ms:8.2f} {p:8.2f} {100 * (p - r.ms) / r.ms:+6.1f}%")


def goal(label: str, err: float, sp: float, target: tuple[float, float]) -> None:
    met = err <= target[0] and sp >= target[1]
    print(f"  GOAL {label}: median |err| {pct(err).strip()} (<= {100 * target[0]:.0f}%), Spearman {rho(sp)} "
          f"(>= {target[1]}): {'met' if met else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extract", action="store_true", help="rebuild the zoo's features (exports every model)")
    ap.add_argument("--skip-tflite", action="store_true", help="skip the int8 TFLite fallback check")
    ap.add_argument("--constants", default=str(ec.CONSTANTS_JSON))
    args = ap.parse_args()

    rows, vrows = ec.calibration_rows(), ec.validation_rows()
    keys = {r.key for r in rows + vrows}
    if args.extract:
        feats, tile_macs = ec.extract_features(keys, log=log)
        ec.write_features_csv(feats)
        ec.write_tile_macs_csv(tile_macs)
        log(f"wrote {ec.FEATURES_CSV}, {ec.TILE_MACS_CSV}")
    feats, tile_macs = ec.read_features_csv(), ec.read_tile_macs_csv()
    missing = sorted(keys - feats.keys())
    if missing:
        raise SystemExit(f"no features for {missing}: rerun with --extract")

    run = ec.calibrate(rows, feats, tile_macs)
    consts, fs = run.constants, run.features
    Path(args.constants).write_text(json.dumps(consts, indent=2) + "\n")
    log(f"wrote {args.constants}")

    print(f"== data: {len(rows)} calibration rows, {consts['architectures']} architectures; {len(vrows)} held-out "
          f"rows of {len({r.arch for r in vrows})} other architectures")
    for by in ("host", "source"):
        counts = {}
        for r in rows:
            counts[getattr(r, by)] = counts.get(getattr(r, by), 0) + 1
        print(f"  rows per {by}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    print(f"\n== constants (tile {consts['array_tile']}, on-chip parameter memory "
          f"{consts['cache_bytes'] / ec.MIB:.1f} MiB chosen by LOAO over {len(ec.CACHE_CANDIDATES)} candidates)")
    c, b = consts["tpu"]["c"], consts["tpu"]["b"]
    print(f"  Edge TPU at {consts['reference_mhz']:.0f} MHz: {1 / c / 1e9:.2f} T array-MAC/s "
          f"(peak 2.05 T), {1e3 * b:.2f} us per layer")
    for k, v in consts["links"].items():
        bw = 1 / v["ms_per_byte"] / 1e3 if v["ms_per_byte"] else float("inf")
        print(f"  link {k:5s}: {bw:7.0f} MB/s, {1e3 * v['ms_per_layer']:6.1f} us per layer")
    for h, v in consts["hosts"].items():
        print(f"  host {h:12s}: overhead {v['overhead_ms']:.2f} ms, fallback CPU {v['cpu_macs_per_ms'] / 1e6:.2f} "
              f"GMAC/s ({v['cpu_source']})")
    print("  source offsets (ms, vs Coral's Table 1): " + ", ".join(
        f"{k} {v:+.2f}" for k, v in consts["source_offsets_ms"].items()))
    print(f"  CPU-throughput term: LOO median |err| {pct(consts['rel_error_cpu']).strip()} over Coral's two CPU "
          "columns")

    print("\n== clock: compute scales with 1/f; the rest does not. Published rows are at 500 MHz (max); "
          "libedgetpu1-std runs a USB Accelerator at 250 MHz")
    clock_rows = [i for i, r in enumerate(rows) if r.source == "hanchanghun2024_p95"]
    fitted = ec.predictions(run.fit, rows, fs)
    print_rows([rows[i] for i in clock_rows], fitted[clock_rows], fs, "fitted")
    m_std, m_max = EdgeTpuModel.load("desktop_usb3", "std"), EdgeTpuModel.load("desktop_usb3", "max")
    f2 = fs["mobilenetv2_100@224"]
    print(f"  mobilenetv2_100, desktop_usb3: std {m_std.predict(f2).ms:.2f} ms, max {m_max.predict(f2).ms:.2f} ms "
          f"(compute {m_std.predict(f2).compute_ms:.2f} vs {m_max.predict(f2).compute_ms:.2f})")

    y = np.array([r.ms for r in rows])
    print("\n== calibration rows: leave-one-out (one row out; settings as shipped)")
    for by in ("source", "host"):
        print_summary("LOO", rows, run.loo, by)
    print("\n== calibration rows: nested leave-one-architecture-out (all rows of one architecture out)")
    s_src = print_summary("LOAO", rows, run.loao, "source")
    s_host = print_summary("LOAO", rows, run.loao, "host")
    print("  memory chosen per fold: " + ", ".join(f"{a} {s.cache_bytes / ec.MIB:.1f}"
                                                  for a, s in run.loao_settings.items()))
    d = s_host["desktop_usb3"]
    goal("LOAO desktop_usb3", d["mdape"], d["spearman"], LOAO_GOAL)
    del s_src
    print("  per row (LOAO):")
    print_rows(rows, run.loao, fs, "LOAO")
    print(f"  overall LOAO median |err| {pct(ec.mdape(run.loao, y)).strip()}")

    print("\n== held-out architectures (not in the calibration data; each with its source's offset)")
    fit_ = ec.fit_from_constants(consts)
    vfeats = ec.with_tile(feats, tile_macs, consts["array_tile"])
    vpred = ec.predictions(fit_, vrows, vfeats)
    print_rows(vrows, vpred, vfeats, "pred")
    print_summary("held out", vrows, vpred, "source")
    s = print_summary("held out", vrows, vpred, "host")
    goal("held-out, all rows", s["all"]["mdape"], s["all"]["spearman"], VALIDATION_GOAL)
    keep = [i for i, r in enumerate(vrows) if r.arch != "efficientnet_b0"]
    kv = ec.summarize([vrows[i] for i in keep], vpred[keep], "host")["all"]
    print(f"  without Keras EfficientNetB0 (its input-normalisation layers are not part of our graphs): median "
          f"|err| {pct(kv['mdape']).strip()}, Spearman {rho(kv['spearman'])}")
    vy = np.array([r.ms for r in vrows])
    big = [i for i in keep if vfeats[vrows[i].key].tpu_param_bytes > consts["cache_bytes"]]
    err = (vpred[big] - vy[big]) / vy[big]
    print(f"  large models (parameters stream): {len(big)} rows, median signed error {100 * np.median(err):+.1f}%, "
          f"{int((err < 0).sum())} of {len(big)} under-predicted")
    for h in ec.HOSTS:
        ih = [i for i in big if vrows[i].host == h]
        if ih:
            e = (vpred[ih] - vy[ih]) / vy[ih]
            print(f"    {h:12s} {len(ih):2d} rows, median signed error {100 * np.median(e):+6.1f}%")

    print("\n== the streaming step: MobileNetV2's MACs and layers, int8 parameters swept (ms, clock std)")
    print("    host          " + "".join(f"{mb:>7d}" for mb in (2, 4, 6, 7, 8, 10, 16, 32)) + "  MB")
    for h in ec.HOSTS:
        m = EdgeTpuModel.load(h, "std")
        cells = [m.predict(dataclasses.replace(f2, param_bytes=mb * 10**6, tpu_param_bytes=mb * 10**6)).ms
                 for mb in (2, 4, 6, 7, 8, 10, 16, 32)]
        print(f"    {h:13s} " + "".join(f"{x:7.1f}" for x in cells))

    print("\n== per-host facts (what the target warns with)")
    for h in ec.HOSTS:
        facts = EdgeTpuModel.load(h).facts
        print(f"  {h:12s} rows {facts.rows:2d}, architectures {facts.architectures}, streaming rows "
              f"{facts.streaming_rows}, LOO {pct(facts.loo_error)}, LOAO {pct(facts.loao_error)} "
              f"(Spearman {rho(facts.loao_spearman)}), too_few_rows={facts.too_few_rows}")
        if facts.warning():
            print(f"    warning: {facts.warning()}")

    if not args.skip_tflite:
        tflite_check()


def tflite_check(resolution: int = 64) -> None:
    """Convert the space's references to int8 TFLite as the search does; the compiler's split vs the ONNX one."""
    from nas.core.arch import Arch, Block
    from nas.latency.onnx_export import export_onnx
    from nas.latency.tflite_convert import to_tflite
    from nas.search_spaces.build import build_model
    from nas.search_spaces.references import reference_archs

    # Beside the references: a candidate with a 7x7 depthwise conv, squeeze-excite, SiLU and a hard-swish stage last.
    late = Arch(family="efficientnet", stem_size=32, num_features=1280, act="swish", resolution=resolution,
                stages=((Block("ds", 1, 3, 1, 1, 16),), (Block("ir", 2, 7, 2, 6, 24, se=0.25),),
                        (Block("ir", 2, 5, 2, 6, 40, se=0.25),), (Block("ir", 1, 3, 2, 6, 80, act="hard_swish"),)))
    archs = {**reference_archs(), "k7_se_swish_late_hswish": late}

    print(f"\n== CPU fallback on our int8 TFLite candidates ({resolution} px, nas.latency.tflite_convert.to_tflite)")
    print(f"    {'reference':24s} {'TFLite ops':>10s} {'on TPU':>7s} {'first CPU op':>16s} | ONNX: on TPU, "
          "first CPU op")
    with tempfile.TemporaryDirectory() as tmp:
        for name, arch in archs.items():
            model = build_model(dataclasses.replace(arch, resolution=resolution), num_classes=10)
            shape = (1, 3, resolution, resolution)
            log(f"converting {name} ...")
            split = ec.tflite_split(to_tflite(model, shape, Path(tmp) / f"{name}.tflite").path)
            f = features_of(export_onnx(model, shape, Path(tmp) / f"{name}.onnx"))
            where = f"after {split.ops[split.tpu_ops - 1]} #{split.tpu_ops}" if split.first_cpu_op else ""
            print(f"    {name[:24]:24s} {len(split.ops):10d} {split.tpu_ops:7d} {split.first_cpu_op or '-':>16s} "
                  f"{where:22s} | {f.tpu_ops:3d} / {f.tpu_ops + f.cpu_ops:3d}, {f.first_cpu_op or '-'}")


if __name__ == "__main__":
    main()
