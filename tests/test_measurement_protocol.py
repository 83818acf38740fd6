"""Measurements that stay true on a noisy device: the stopping rule, the drift probe, the stated uncertainty."""

import time

import numpy as np

from nas.latency.targets.ort import OrtConfig
from nas.latency.targets.timing import DriftProbe, measure_with_drift_check, run_rounds


def synthetic(round_sd: float, run_sd: float = 0.01, per_round: int = 20, seed: int = 0):
    """A timer of known spread: each round has its own speed (sd ``round_sd``), each run its own jitter."""
    rng = np.random.default_rng(seed)
    state = {"i": 0, "speed": 1.0}

    def step() -> dict[str, float]:
        if state["i"] % (per_round + 1) == 0:  # a round starts with one untimed re-warm run
            state["speed"] = 1.0 + rng.normal(0, round_sd)
        state["i"] += 1
        return {"model": 10.0 * state["speed"] * (1.0 + rng.normal(0, run_sd))}

    return step


def cfg(**kw) -> OrtConfig:
    base = dict(warmup=0, repeats=100, rounds=5, round_pause_s=0.0, tolerance=0.03, max_rounds=25,
                time_limit_s=60.0, drift_tolerance=0.0)
    return OrtConfig(**{**base, **kw})


def test_a_steady_timer_stops_at_the_minimum_rounds():
    stats = run_rounds(synthetic(round_sd=0.002), cfg())
    assert stats.rounds == 5 and stats.settled
    assert stats.rel_halfwidth("p90") <= 0.03
    lo, hi = stats.ci["p90"]
    assert lo <= stats.p90 <= hi


def test_a_moderately_noisy_timer_takes_rounds_until_the_interval_is_tight():
    stats = run_rounds(synthetic(round_sd=0.04, seed=3), cfg())
    assert 5 < stats.rounds < 25 and stats.settled
    assert stats.rel_halfwidth("p90") <= 0.03  # stopped exactly because the interval got within the tolerance


def test_a_timer_that_never_settles_is_labelled_not_settled():
    stats = run_rounds(synthetic(round_sd=0.25, seed=1), cfg())
    assert stats.rounds == 25 and not stats.settled
    assert stats.rel_halfwidth("p90") > 0.03
    assert stats.to_dict()["settled"] is False  # what the cache, MLflow and the card read


def test_without_a_tolerance_the_rounds_are_fixed():
    assert run_rounds(synthetic(round_sd=0.25), cfg(tolerance=0.0)).rounds == 5


def test_a_machine_that_changes_speed_mid_measurement_is_measured_again():
    speed = {"sleep": 0.002}
    probe = DriftProbe(lambda: time.sleep(speed["sleep"]), runs=5)
    calls = []

    def measure():
        calls.append(1)
        if len(calls) == 1:
            speed["sleep"] = 0.006  # the machine slowed down during the first measurement
        return run_rounds(synthetic(round_sd=0.0), cfg(tolerance=0.0))

    _, report = measure_with_drift_check(measure, probe, tolerance=0.05)
    assert len(calls) == 2 and report["remeasured"] == 1.0 and report["drift"] > 0.5


def test_a_steady_machine_is_measured_once():
    probe = DriftProbe(lambda: time.sleep(0.004), runs=5)
    calls = []

    def measure():
        calls.append(1)
        return run_rounds(synthetic(round_sd=0.0), cfg(tolerance=0.0))

    _, report = measure_with_drift_check(measure, probe, tolerance=0.5)
    assert len(calls) == 1 and report["remeasured"] == 0.0


def test_tail_percentiles_pool_the_rounds_rather_than_take_each_rounds_maximum():
    """A round of 20 runs has no p99 of its own (np.percentile of 20 runs at 99 is about its maximum, and the median
    of 20-run maxima is the distribution's ~96.6th percentile). Over 50 rounds of a lognormal latency the reported
    p99 must be the distribution's p99, from the 1,000 runs pooled, with an interval around it."""
    import math

    import numpy as np
    import pytest

    from nas.core.stats import LatencyStats

    rng = np.random.default_rng(0)
    rounds = [rng.lognormal(0.0, 0.5, 20) for _ in range(50)]
    true_p99, true_p95 = math.exp(0.5 * 2.3263), math.exp(0.5 * 1.6449)
    s = LatencyStats.from_rounds(rounds)
    old = float(np.median([np.percentile(r, 99) for r in rounds]))
    assert old < 0.85 * true_p99  # what the per-round figure said
    assert s.p99 == pytest.approx(true_p99, rel=0.1) and s.p95 == pytest.approx(true_p95, rel=0.08)
    assert s.n == 1000
    lo, hi = s.ci["p99"]
    assert lo <= s.p99 <= hi and lo < true_p99 < hi * 1.05


def test_a_measurement_on_an_oversubscribed_cpu_is_refused_in_one_line(tmp_path):
    """With every core taken by other processes, a latency would time the scheduler: `nas measure` waits up to
    target.busy_wait_s for the CPU, then refuses in one line and records nothing."""
    import os
    import subprocess
    import sys

    from tests.conftest import run_nas

    cores = os.cpu_count() or 1
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        res = run_nas("measure", "arch=mobilenetv3_small_100", "target.input_shape=[1,3,64,64]",
                      "target.busy_wait_s=2", f"workdir={tmp_path}", cwd=tmp_path)
    finally:
        for p in spin:
            p.kill()
            p.wait()
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "the CPU is oversubscribed" in lines[0] and "target.busy_wait_s" in lines[0], res.stderr
    import sqlite3

    db = tmp_path / "measurements.db"
    if db.exists():  # nothing recorded
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 0
