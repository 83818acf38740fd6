"""The timing loop every local target shares: warm-up, then timed rounds spaced in time, until the figure is tight.

Rounds continue past ``cfg.rounds`` until the 95% bootstrap interval of the budget statistic (over rounds) is
within ``cfg.tolerance`` of it, or ``cfg.max_rounds`` / ``cfg.time_limit_s`` is reached; a measurement that never
got there is returned with ``settled=False`` and labelled so, not silently accepted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from nas.config import TargetConfig
from nas.core.errors import TargetError
from nas.core.stats import STATS, LatencyStats, bootstrap_interval, pooled_interval, round_statistics

Step = Callable[[], dict[str, float]]  # one timed run -> milliseconds per part (model, or a pipeline's parts)


def run_rounds(step: Step, cfg: TargetConfig, split: bool = False,
               clock: Callable[[], float] = time.monotonic) -> LatencyStats:
    """``cfg.warmup`` untimed runs, then rounds of ``cfg.repeats // cfg.rounds`` timed runs until settled.

    With ``split`` the record keeps each part's median (pipeline scope).
    """
    wait_for_cpu(cfg.threads, cfg.busy_wait_s)
    for _ in range(cfg.warmup):
        step()
    rounds, parts = [], []
    per_round = max(1, cfg.repeats // cfg.rounds)
    column = STATS.index(str(cfg.statistic))
    start, settled = clock(), False
    while True:
        if rounds:
            time.sleep(cfg.round_pause_s)  # spread rounds in time, past short bursts of foreign load
            wait_for_cpu(cfg.threads, cfg.busy_wait_s)
            step()  # re-warm caches after the pause, untimed
        samples = np.empty(per_round)
        for k in range(per_round):
            one = step()
            samples[k] = sum(one.values())
            parts.append(one)
        rounds.append(samples)
        if len(rounds) >= cfg.rounds:
            settled = tight(rounds, column, cfg.tolerance)
            if settled or len(rounds) >= cfg.max_rounds or clock() - start >= cfg.time_limit_s:
                break
    split_ms = {k: float(np.median([p[k] for p in parts])) for k in parts[0]} if split else None
    return LatencyStats.from_rounds(rounds, split_ms, settled=settled)


def runnable_elsewhere(reads: int = 1, pause_s: float = 0.01) -> int | None:
    """Threads of other processes that are runnable on this machine now: the kernel's count in /proc/loadavg less
    this process's own running threads (the median of a few reads); None where /proc cannot tell (not Linux)."""
    counts = []
    try:
        for i in range(reads):
            if i:
                time.sleep(pause_s)
            with open("/proc/loadavg") as f:
                total = int(f.read().split()[3].split("/")[0])
            mine = 0
            for task in os.listdir("/proc/self/task"):
                try:
                    with open(f"/proc/self/task/{task}/stat") as f:
                        mine += f.read().rsplit(")", 1)[1].split()[0] == "R"
                except OSError:
                    continue  # a thread that ended meanwhile
            counts.append(max(0, total - mine))
    except (OSError, ValueError, IndexError):
        return None
    return int(np.median(counts))


def wait_for_cpu(threads: int, wait_s: float, poll_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
    """Return once this measurement's ``threads`` and the other runnable threads fit the cores; wait up to ``wait_s``.

    With more runnable threads than cores the scheduler slices them, and a latency measured then is the time
    slice, not the model (a predictor fitted beside two trainings on 2 cores read 0.68 ms as 12.9 ms). Past the
    wait the measurement is refused in one line rather than recorded."""
    # The machine's cores, not this process's affinity: the other threads may run anywhere (TVM pins its own
    # thread to one core, which would make any other runnable process look like contention).
    cores = os.cpu_count() or 1
    deadline = clock() + wait_s
    while True:
        others = runnable_elsewhere()  # one read: the usual, quiet case costs ~0.1 ms per round
        if others is not None and others + threads > cores:
            others = runnable_elsewhere(reads=5)  # confirm over 40 ms: a passing thread is not contention
        if others is None or others + threads <= cores:
            return
        if clock() >= deadline:
            raise TargetError(f"the CPU is oversubscribed: {others} runnable thread(s) of other processes + {threads} "
                              f"to measure on {cores} core(s), for {wait_s:g} s; a latency measured now would time "
                              "the scheduler, not the model: stop the other work or raise target.busy_wait_s")
        time.sleep(poll_s)


def tight(rounds: list[np.ndarray], column: int, tolerance: float) -> bool:
    """Whether the bootstrap interval of one statistic's median over rounds is within ``tolerance`` of it."""
    if tolerance <= 0:
        return True  # no stopping rule: the fixed number of rounds
    if STATS[column] in ("p95", "p99"):  # the tails are pooled over rounds (LatencyStats.from_rounds)
        q = float(STATS[column][1:])
        value = float(np.percentile(np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds]), q))
        lo_q, hi_q = pooled_interval(rounds, q)
        return bool(value > 0 and (hi_q - lo_q) / 2 <= tolerance * value)
    per_round = round_statistics(rounds)
    lo, hi = bootstrap_interval(per_round)
    value = float(np.median(per_round[:, column]))
    return bool(value > 0 and (hi[column] - lo[column]) / 2 <= tolerance * value)


class DriftProbe:
    """A small fixed workload timed before and after each measurement: a machine whose speed changed in between
    (another tenant, a thermal throttle, a clock change) shows as a change in the probe's time."""

    def __init__(self, run: Callable[[], None], runs: int = 15) -> None:
        self.run, self.runs = run, runs
        for _ in range(3):
            run()

    def time_ms(self) -> float:
        samples = []
        for _ in range(self.runs):
            t0 = time.perf_counter_ns()
            self.run()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        return float(np.median(samples))


def measure_with_drift_check(measure: Callable[[], LatencyStats], probe: DriftProbe | None,
                             tolerance: float) -> tuple[LatencyStats, dict[str, float] | None]:
    """``measure()``, bracketed by the probe; measured again once when the probe moved by more than ``tolerance``.

    Returns the statistics and what the probe saw (None without a probe)."""
    if probe is None:
        return measure(), None
    before = probe.time_ms()
    stats = measure()
    after = probe.time_ms()
    drift = after / before - 1.0
    report = {"probe_before_ms": before, "probe_after_ms": after, "drift": drift, "remeasured": 0.0}
    if abs(drift) > tolerance:  # the machine changed speed during the measurement: take it again
        stats = measure()
        again = probe.time_ms()
        report.update(remeasured=1.0, probe_again_ms=again, drift_again=again / after - 1.0)
    return stats, report
