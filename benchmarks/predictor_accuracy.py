"""Latency-predictor accuracy on held-out archs, for each predictor kind, with the measurement noise floor.

Fits each kind on N stratified archs of the space (measured through the shared cache, so both kinds see the same
measurements) and evaluates on M fresh archs never used in fitting. Goals (issue 3): >= 99% within ±10%,
>= 90% within ±5%, Kendall tau >= 0.9, from <= 200 fitting measurements; fit < 10 s; predict < 1 ms per arch.

    python benchmarks/predictor_accuracy.py [--workdir DIR] [--fit 200] [--eval 100] [--kinds kernel_sum,lut]
"""

from __future__ import annotations

import argparse
import json
import sys

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nas.cli import predictor as predictor_commands
from nas.config import PredictorCmdConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="nas-bench-predictor")
    ap.add_argument("--fit", type=int, default=200)
    ap.add_argument("--eval", type=int, default=100)
    ap.add_argument("--kinds", default="kernel_sum,lut")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. target.threads=2")
    args = ap.parse_args()

    def log(msg: str, **_: object) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows = {}
    for kind in args.kinds.split(","):
        with initialize_config_module(config_module="nas.conf", version_base=None):
            base = [f"workdir={args.workdir}", f"kind={kind}", *args.overrides]
            fit_cfg: PredictorCmdConfig = OmegaConf.to_object(compose("predictor", [*base, f"n_samples={args.fit}"]))
            eval_cfg: PredictorCmdConfig = OmegaConf.to_object(compose("predictor",
                                                                        [*base, f"n_samples={args.eval}"]))
        fitted = predictor_commands.fit(fit_cfg, log)
        rows[kind] = {**predictor_commands.evaluate(eval_cfg, log), "fit_seconds": fitted["fit_seconds"],
                      "entry_measure_seconds": fitted["entry_measure_seconds"], "n_fit": fitted["n_fit"]}
    print(f"{'kind':<11} {'n_fit':>5} {'fit s':>6} {'pred ms':>7} {'MAPE':>6} {'±5%':>6} {'±10%':>6} {'tau':>6} "
          f"{'RMSE ms':>7}")
    for kind, m in rows.items():
        print(f"{kind:<11} {m['n_fit']:>5} {m['fit_seconds']:>6.2f} {m['predict_ms_single']:>7.3f} {m['mape']:>6.1%} "
              f"{m['within_5']:>6.1%} {m['within_10']:>6.1%} {m['kendall_tau']:>6.3f} {m['rmse_ms']:>7.3f}")
    nf = next(iter(rows.values()))["noise_floor"]
    print(f"noise floor: {nf['n']} held-out archs measured twice: median |diff| {nf['median_abs_rel']:.1%}, "
          f"within ±5% {nf['within_5']:.0%}, within ±10% {nf['within_10']:.0%}, max {nf['max_abs_rel']:.1%}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
