"""OpenVINO and TVM on the three references, against their own yardsticks (issue 19).

1. `nas measure target=openvino` against OpenVINO's own `benchmark_app` (latency hint, same threads, same shape,
   the same ONNX file): ratio of medians, goal 0.9-1.1x. The two alternate, `--repeats` times each, every `nas
   measure` in a fresh workdir (no cache).
2. TVM untuned and tuned (`target.tune_trials`) against ONNX Runtime (`target=cpu`): the tuned references share one
   tuning database in order, so the table also says how many of each one's workloads were already tuned, and how
   long its tuning took.

    python benchmarks/runtimes.py [--trials 64] [--repeats 3] [--skip-tvm-tuned]

Prints a Markdown table and writes benchmarks/results/runtimes.json. Figures are p50 in ms, medians over repeats;
this machine is shared, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REFS = ("efficientnet_b0", "mnasnet_100", "mobilenetv2_100")
NAS = str(Path(sys.executable).with_name("nas"))
BENCHMARK_APP = str(Path(sys.executable).with_name("benchmark_app"))


def nas_measure(ref: str, workdir: Path, *overrides: str) -> dict:
    res = subprocess.run([NAS, "measure", f"arch={ref}", f"workdir={workdir}", "format=json", *overrides],
                         capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"nas measure {ref} {overrides} failed: {res.stderr.strip()[-500:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def onnx_file(ref: str, out: Path) -> Path:
    """The file `nas measure` measures: the reference at 224 px, 1000 classes, the default exporter and opset."""
    from nas.latency.onnx_export import export_onnx
    from nas.search_spaces.build import build_model
    from nas.search_spaces.references import reference_archs

    return export_onnx(build_model(reference_archs()[ref], num_classes=1000), (1, 3, 224, 224), out / f"{ref}.onnx")


def benchmark_app(path: Path, threads: int, seconds: int) -> float:
    """OpenVINO's benchmark_app on ``path``: its median latency in ms. Its command line refuses -nthreads beside
    -hint latency (a UI rule), so the thread count goes in as a device property, as `target=openvino` sets it."""
    props = path.with_suffix(".json")
    props.write_text(json.dumps({"CPU": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads),
                                         "INFERENCE_PRECISION_HINT": "f32"}}))
    res = subprocess.run([BENCHMARK_APP, "-m", str(path), "-d", "CPU", "-hint", "latency", "-load_config", str(props),
                          "-shape", "[1,3,224,224]", "-t", str(seconds)], capture_output=True, text=True)
    m = re.search(r"Median:\s+([\d.]+) ms", res.stdout)
    if res.returncode or not m:
        raise SystemExit(f"benchmark_app failed on {path}: {(res.stderr or res.stdout).strip()[-500:]}")
    return float(m.group(1))


def openvino_rows(tmp: Path, repeats: int, threads: int) -> list[dict]:
    rows = []
    for ref in REFS:
        path = onnx_file(ref, tmp)
        ours, theirs = [], []
        for i in range(repeats):  # alternating, so that drift in the machine's speed hits both alike
            wd = tmp / f"ov-{ref}-{i}"
            ours.append(nas_measure(ref, wd, "target=openvino", f"target.threads={threads}")["latency_ms"]["p50"])
            shutil.rmtree(wd, ignore_errors=True)
            theirs.append(benchmark_app(path, threads, seconds=10))
        a, b = statistics.median(ours), statistics.median(theirs)
        rows.append({"ref": ref, "nas_p50": ours, "benchmark_app_median": theirs, "nas": a, "benchmark_app": b,
                     "ratio": a / b})
        print(f"  {ref}: nas measure {a:.2f} ms, benchmark_app {b:.2f} ms, ratio {a / b:.2f}", flush=True)
    return rows


def tvm_rows(tmp: Path, trials: int, threads: int, tuned: bool) -> list[dict]:
    rows = []
    wd = tmp / "tvm"  # one workdir: the tuned references share its tuning database
    for ref in REFS[::-1]:  # the smallest first
        row: dict = {"ref": ref}
        ort = nas_measure(ref, wd, "target=cpu", f"target.threads={threads}")
        row["ort"] = ort["latency_ms"]["p50"]
        untuned = nas_measure(ref, wd, "target=tvm", f"target.threads={threads}")
        row["tvm_untuned"] = untuned["latency_ms"]["p50"]
        row["compile_s"] = untuned.get("tvm", {}).get("compile_s")
        if tuned:
            t = nas_measure(ref, wd, "target=tvm", f"target.threads={threads}", f"target.tune_trials={trials}")
            row["tvm_tuned"] = t["latency_ms"]["p50"]
            keys = ("tasks", "already_tuned", "tune_s", "startup_s", "strategy")
            row.update({k: t.get("tvm", {}).get(k) for k in keys})
        print(f"  {ref}: {row}", flush=True)
        rows.append(row)
    return rows


def markdown(ov: list[dict], tvm: list[dict], trials: int) -> str:
    lines = ["| reference | nas measure target=openvino | benchmark_app | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['ref']} | {r['nas']:.2f} ms | {r['benchmark_app']:.2f} ms | {r['ratio']:.2f}x |" for r in ov]
    lines += ["", f"| reference | ONNX Runtime | TVM untuned | TVM tuned ({trials} trials) | tuned / ORT | "
              "workloads already tuned | tuning time (of it, start-up) |", "|---|---|---|---|---|---|---|"]
    for r in tvm:
        tuned = r.get("tvm_tuned")
        lines.append(f"| {r['ref']} | {r['ort']:.2f} ms | {r['tvm_untuned']:.2f} ms "
                     f"({r['tvm_untuned'] / r['ort']:.1f}x) | "
                     + (f"{tuned:.2f} ms | {tuned / r['ort']:.1f}x | {r['already_tuned']}/{r['tasks']} | "
                        f"{r['tune_s']:.0f} s ({r.get('startup_s') or 0:.0f} s) |" if tuned else "- | - | - | - |"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=64, help="target.tune_trials for tuned TVM")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of nas measure and benchmark_app")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-tvm-tuned", action="store_true")
    ap.add_argument("--skip-openvino", action="store_true")
    args = ap.parse_args()
    out = Path(__file__).parent / "results" / "runtimes.json"
    kept = json.loads(out.read_text()) if out.exists() else {}  # a skipped part keeps its last figures
    tmp = Path(tempfile.mkdtemp(prefix="nas-runtimes-"))
    try:
        print("OpenVINO: nas measure against benchmark_app", flush=True)
        ov = kept.get("openvino", []) if args.skip_openvino else openvino_rows(tmp, args.repeats, args.threads)
        print("TVM against ONNX Runtime", flush=True)
        tvm = tvm_rows(tmp, args.trials, args.threads, not args.skip_tvm_tuned)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = markdown(ov, tvm, args.trials)
    print(table)
    out.write_text(json.dumps({"args": vars(args), "openvino": ov, "tvm": tvm, "table": table}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
