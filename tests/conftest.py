"""Shared helpers: run the real `nas` console script, small shapes so the suite stays quick on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nas import builtins
from nas.cli import policy

# The suite is an entry point: it registers the built-in parts and sets the logging policy as the CLI does.
builtins.register(plugins=False)
policy.configure()
# Two pytest workers keep both cores busy by design: a measurement that finds the CPU oversubscribed waits for it
# (up to 15 min) instead of being refused after the default minute. Subprocesses inherit it.
os.environ.setdefault("NAS_BUSY_WAIT_S", "900")

# Set in the child interpreter that runs an `isolated` test, so the hook below runs it there instead of respawning.
ISOLATED_ENV = "NAS_TEST_ISOLATED"

# Small but real: 64 px deployment shape, 16 px digits (400 of them), one epoch, a few timed runs.
FAST = [
    "accuracy=train",  # these tests exercise training; tests/test_imagenet_search.py covers the default
    "search_space.resolution=[64]", "target.input_shape=[1,3,64,64]", "target.warmup=2", "target.repeats=10",
    "target.rounds=2", "target.round_pause_s=0", "dataset.proxy_scale=0.25", "study.epochs=1", "study.reeval_top_k=0",
    "target.tolerance=0", "target.drift_tolerance=0", "dataset.max_images=400",
    "card_runtimes=[]",  # the card's other-runtime figures (a TVM compile each): tested in test_runtimes/openvino
    "study.train_threads=1",  # the suite runs on two pytest-xdist workers: two 2-thread trainings on 2 cores spin
]


def nas_bin() -> str:
    exe = Path(sys.executable).with_name("nas")
    return str(exe) if exe.exists() else "nas"


def run_nas(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([nas_bin(), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture
def fast() -> list[str]:
    return list(FAST)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "isolated: run in a fresh interpreter (OpenVINO and NNCF loaded beside torch in one long pytest "
        "process crashed a full-suite CI run with SIGSEGV; TVM is kept apart the same way)")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """An `isolated` test runs as its own pytest process: a native crash fails that test, not the whole suite."""
    if pyfuncitem.get_closest_marker("isolated") is None or os.environ.get(ISOLATED_ENV):
        return None
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-n", "0", pyfuncitem.nodeid],
        capture_output=True, text=True, cwd=pyfuncitem.config.rootpath, timeout=900,
        env={**os.environ, ISOLATED_ENV: "1"})
    out = res.stdout + res.stderr
    if res.returncode != 0:
        pytest.fail(f"in a fresh interpreter (exit {res.returncode}):\n{out[-6000:]}", pytrace=False)
    if " passed" not in out:
        skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
        pytest.skip(skipped[0].split(": ", 1)[-1] if skipped else "skipped in a fresh interpreter")
    return True
