"""The timing loop every local target shares: warm-up, then timed runs split into rounds spaced in time."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from nas.config import TargetConfig
from nas.targets.base import LatencyStats

Step = Callable[[], dict[str, float]]  # one timed run -> milliseconds per part (model, or a pipeline's parts)


def run_rounds(step: Step, cfg: TargetConfig, split: bool = False) -> LatencyStats:
    """``cfg.warmup`` untimed runs, then ``cfg.repeats`` timed runs in ``cfg.rounds`` rounds.

    With ``split`` the record keeps each part's median (pipeline scope).
    """
    for _ in range(cfg.warmup):
        step()
    rounds, parts = [], []
    per_round = max(1, cfg.repeats // cfg.rounds)
    for r in range(cfg.rounds):
        if r:
            time.sleep(cfg.round_pause_s)  # spread rounds in time, past short bursts of foreign load
            step()  # re-warm caches after the pause, untimed
        samples = np.empty(per_round)
        for k in range(per_round):
            one = step()
            samples[k] = sum(one.values())
            parts.append(one)
        rounds.append(samples)
    split_ms = {k: float(np.median([p[k] for p in parts])) for k in parts[0]} if split else None
    return LatencyStats.from_rounds(rounds, split_ms)
