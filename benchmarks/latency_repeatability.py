"""Latency repeatability: one model measured N times, each in a fresh ONNX Runtime session as a trial does, under
several measuring protocols, to see which keeps the figure true on a noisy, drifting machine (issue 20).

Protocols (all 1 thread, 10 warm-up runs, rounds of 20 runs):
- ``fixed``: 5 rounds, no stopping rule, no drift probe (the protocol before issue 20);
- ``adaptive``: rounds until the 95% interval of the p50 is within ±3% (at most 25 rounds or 15 s);
- ``adaptive+drift`` (the default): the same, bracketed by the drift probe; measured again when it moved > 5%;
- ``normalised``: the fixed protocol with the drift probe timed in the same window, the figure scaled by the
  probe's first time over its time now (interleaving a reference).

For each protocol: every run's p50, the spread of the runs' p50 around their median (goal ±3%), the time one
measurement took, and the runs grouped by the speed the machine was in (a "mode": p50s within 5% of each other),
with the mode of each run in run order. The protocols are interleaved run by run, so slow drift hits them alike.

    python benchmarks/latency_repeatability.py [--arch mobilenetv2_100] [--runs 8] [--protocols fixed,adaptive+drift]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from nas.latency.onnx_export import export_onnx
from nas.latency.targets import make_target
from nas.latency.targets.ort import OrtConfig
from nas.search_spaces.build import build_model
from nas.search_spaces.references import reference_archs

PROTOCOLS = {
    "fixed": dict(tolerance=0.0, drift_tolerance=0.0),
    "adaptive": dict(tolerance=0.03, drift_tolerance=0.0),
    "adaptive+drift": dict(tolerance=0.03, drift_tolerance=0.05),
    "normalised": dict(tolerance=0.0, drift_tolerance=0.0),
}


def modes(values: list[float], gap: float = 0.05) -> list[list[float]]:
    """Values grouped into speed modes: sorted, a new mode wherever the next value is more than ``gap`` above."""
    out: list[list[float]] = []
    for v in sorted(values):
        if out and v <= out[-1][-1] * (1 + gap):
            out[-1].append(v)
        else:
            out.append([v])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mobilenetv2_100")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    base = OrtConfig(threads=args.threads)
    names = args.protocols.split(",")
    runs: dict[str, dict[str, list]] = {n: {"p50s": [], "seconds": [], "rounds": [], "remeasured": []} for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(build_model(reference_archs()[args.arch], num_classes=10), tuple(base.input_shape),
                           Path(tmp) / "model.onnx")
        targets = {}
        for name in names:
            cfg = replace(base, **PROTOCOLS[name])
            target = make_target(replace(cfg, drift_tolerance=0.05) if name == "normalised" else cfg)
            targets[name] = (cfg, target, target.drift_probe.time_ms() if name == "normalised" else None)
        # Interleaved, run i of every protocol before run i+1 of any: a machine that changes speed over minutes
        # then hits every protocol alike, instead of deciding which protocol happened to run in its fast spell.
        for i in range(args.runs):
            for name in names:
                cfg, target, probe0 = targets[name]
                t0 = time.perf_counter()
                if name == "normalised":
                    before = target.drift_probe.time_ms()
                    stats = make_target(cfg).measure(path).stats
                    after = target.drift_probe.time_ms()
                    p50, again = stats.p50 * probe0 / ((before + after) / 2), 0
                else:
                    m = target.measure(path)
                    stats, p50 = m.stats, m.stats.p50
                    again = int((m.details.get("drift") or {}).get("remeasured", 0))
                r = runs[name]
                r["seconds"].append(time.perf_counter() - t0)
                r["p50s"].append(p50)
                r["rounds"].append(stats.rounds)
                r["remeasured"].append(again)
            print(f"run {i + 1}/{args.runs}: " + ", ".join(f"{n} {runs[n]['p50s'][-1]:.2f} ms" for n in names),
                  flush=True)
    results = {}
    for name in names:
        r = runs[name]
        p50s, seconds, rounds, remeasured = r["p50s"], r["seconds"], r["rounds"], sum(r["remeasured"])
        med = statistics.median(p50s)
        spread = max(abs(p - med) for p in p50s) / med
        groups = modes(p50s)
        # Which mode each run fell in, in run order: a protocol that holds still shows one letter throughout.
        label = {id(g): chr(ord("A") + k) for k, g in enumerate(groups)}
        run_modes = "".join(next(label[id(g)] for g in groups if p in g) for p in p50s)
        results[name] = {"p50s": p50s, "median_p50_ms": med, "spread": spread, "seconds": seconds,
                         "rounds": rounds, "remeasured": remeasured, "run_modes": run_modes,
                         "modes": [[min(g), max(g), len(g)] for g in groups]}
        print(f"{name:<15} p50 " + " ".join(f"{p:.2f}" for p in p50s)
              + f" | median {med:.3f} ms, spread ±{spread:.1%} (goal ±3%), "
              f"{statistics.median(seconds):.1f} s/measurement, rounds {min(rounds)}-{max(rounds)}"
              + (f", re-measured {remeasured}x" if remeasured else "")
              + f"; {len(groups)} mode(s) {run_modes}: "
              + ", ".join(f"{min(g):.2f}-{max(g):.2f} ms ({len(g)} runs)" for g in groups), flush=True)
    print(json.dumps({"arch": args.arch, "runs": args.runs, "threads": args.threads, "protocols": results}))


if __name__ == "__main__":
    main()
