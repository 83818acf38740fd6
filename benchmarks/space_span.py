"""The latency span of a search space: its smallest and largest networks, and random candidates, against
mobilenetv2_100 at 224 px (issue 17: smallest at least 4x faster, largest at least 1.5x slower).

    python benchmarks/space_span.py [--space mbconv] [--random 24] [overrides for the target, e.g. target.threads=2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import optuna
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nas import builtins
from nas.config import SearchConfig
from nas.core.arch import Arch
from nas.latency.onnx_export import export_onnx
from nas.latency.targets import make_target
from nas.search_spaces.build import build_model
from nas.search_spaces.factorized import make_space
from nas.search_spaces.references import reference_archs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mbconv")
    ap.add_argument("--random", type=int, default=24)
    ap.add_argument("--budget-ms", type=float, default=10.0)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    builtins.register()
    with initialize_config_module(config_module="nas.conf", version_base=None):
        cfg: SearchConfig = OmegaConf.to_object(compose("search", [f"search_space={args.space}", *args.overrides]))
    space, target = make_space(cfg.search_space), make_target(cfg.target)
    small, large = space.extremes()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    randoms = []
    for _ in range(args.random):
        trial = study.ask()
        randoms.append(space.sample(trial))
        study.tell(trial, 0.0)

    def p90(arch: Arch, tmp: Path) -> float:
        path = export_onnx(build_model(arch, 10), (1, 3, arch.resolution, arch.resolution), tmp / "m.onnx")
        return statistics.median(target.measure(path).stats.p90 for _ in range(3))

    with tempfile.TemporaryDirectory() as tmp:
        base = p90(reference_archs()["mobilenetv2_100"], Path(tmp))
        lo, hi = p90(small, Path(tmp)), p90(large, Path(tmp))
        rand = []
        for i, arch in enumerate(randoms):
            rand.append(p90(arch, Path(tmp)))
            print(f"random {i + 1:>2}/{len(randoms)} {arch.summary()[:60]:<60} p90 {rand[-1]:6.2f} ms", flush=True)
    under = sum(r <= args.budget_ms for r in rand) / max(len(rand), 1)
    print(f"{args.space}: mobilenetv2_100 {base:.2f} ms p90; smallest {lo:.2f} ms ({base / lo:.1f}x faster, "
          f"goal >= 4x), largest {hi:.2f} ms ({hi / base:.2f}x slower, goal >= 1.5x); {len(rand)} random: median "
          f"{statistics.median(rand):.2f} ms, {under:.0%} within {args.budget_ms:g} ms")
    print(json.dumps({"space": args.space, "mbv2_p90_ms": base, "smallest_p90_ms": lo, "largest_p90_ms": hi,
                      "random_median_p90_ms": statistics.median(rand), "random_within_budget": under}))


if __name__ == "__main__":
    main()
