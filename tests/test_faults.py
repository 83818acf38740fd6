"""Fault injection: kill -9 mid-trial, two processes on one fresh workdir, damaged stores (real SQLite, MLflow)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import FAST, nas_bin, run_nas

STUDY = "cpu-mbconv-digits-50ms"
ARGS = ["budget_ms=50", *FAST]
REFS = {"efficientnet_b0", "mnasnet_100", "mobilenetv2_100"}


def start(wd: Path, n: int) -> subprocess.Popen:
    return subprocess.Popen([nas_bin(), "search", f"workdir={wd}", f"study.n_trials={n}", *ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def signal_after(proc: subprocess.Popen, lines: int, wd: Path, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` once ``lines`` trials have finished and the next one is running (not after a fixed sleep: a
    trial of the tests' small search takes a few seconds, and a loaded machine stretches any pause)."""
    seen = 0
    for line in proc.stdout:
        seen += line.startswith("[")
        if seen == lines:
            break
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{wd / 'optuna.db'}")
    for _ in range(600):  # the next trial has opened its MLflow run: it is really running
        running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        if running and "mlflow_run_id" in running[0].user_attrs:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.communicate(timeout=300)


def trials(wd: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{wd / 'optuna.db'}").trials


def runs(wd: Path):
    c = MlflowClient(f"sqlite:///{wd / 'mlflow.db'}")
    return c.search_runs([c.get_experiment_by_name("nas").experiment_id])


@pytest.fixture(scope="module")
def killed_twice(tmp_path_factory):
    """Kill -9 during a reference trial, resume and kill -9 during a sampled trial, resume to the end."""
    wd = tmp_path_factory.mktemp("faults") / "wd"
    proc = start(wd, 5)
    signal_after(proc, 1, wd)  # trial 1 (mnasnet_100, a reference) was running
    killed_ref = [t for t in trials(wd) if t.state == optuna.trial.TrialState.RUNNING]
    assert [t.user_attrs.get("reference") for t in killed_ref] == ["mnasnet_100"]
    assert list(wd.glob(".scratch-*")), "the killed process left its scratch folder (the fix removes it on resume)"
    proc = start(wd, 4)
    signal_after(proc, 2, wd)  # two queued references done; a sampled trial was running
    killed_sampled = [t for t in trials(wd) if t.state == optuna.trial.TrialState.RUNNING]
    assert len(killed_sampled) == 1 and "reference" not in killed_sampled[0].user_attrs
    res = run_nas("search", f"workdir={wd}", "study.n_trials=2", *ARGS)
    assert res.returncode == 0, res.stderr[-3000:]
    return wd, res, killed_ref[0].number, killed_sampled[0].number


def test_killed_trials_fail_at_once_with_a_reason(killed_twice):
    wd, res, ref_number, sampled_number = killed_twice
    by_number = {t.number: t for t in trials(wd)}
    for n in (ref_number, sampled_number):
        assert by_number[n].state == optuna.trial.TrialState.FAIL
        assert by_number[n].user_attrs["fail_reason"] == "worker died"
    assert "marked failed (worker died)" in res.stdout
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials(wd))


def test_every_reference_completes_after_kills(killed_twice):
    wd, *_ = killed_twice
    done = {t.user_attrs.get("reference") for t in trials(wd) if t.state == optuna.trial.TrialState.COMPLETE}
    assert done >= REFS


def test_every_trial_run_hangs_under_the_study_run_and_none_is_left_running(killed_twice):
    wd, *_ = killed_twice
    all_runs = runs(wd)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == STUDY
    children = [r for r in all_runs if "mlflow.parentRunId" in r.data.tags]
    # Every trial has its run, but a duplicate the sampler proposed (pruned at once, never measured or trained).
    assert len(children) == len([t for t in trials(wd) if "duplicate_of" not in t.user_attrs])
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status != "RUNNING" for r in all_runs)
    died = [r for r in children if r.data.tags.get("fail_reason") == "worker died"]
    assert len(died) == 2 and all(r.info.status == "FAILED" for r in died)
    # The parent carries the study's results, not a trial run.
    assert "trials_complete" in parents[0].data.metrics


def test_no_scratch_folder_is_left(killed_twice):
    wd, *_ = killed_twice
    assert list(wd.glob(".scratch-*")) == []


_OPEN = """
import sys, time
from pathlib import Path
import optuna
from nas.latency.cache import MeasurementCache
from nas.core.stores import study_storage_url
from nas.search.study import open_storage
from nas.tracking.client import Tracker
root, me = Path(sys.argv[1]), sys.argv[2]
for i in range(10):
    wd = root / f"wd{i}"
    (root / f"ready{i}-{me}").touch()
    while len(list(root.glob(f"ready{i}-*"))) < 2:
        time.sleep(0.001)
    Tracker(wd, "nas")
    optuna.create_study(study_name="s", storage=open_storage(study_storage_url(None, wd), wd),
                        load_if_exists=True)
    MeasurementCache(wd / "measurements.db")
"""


def test_two_processes_opening_a_fresh_workdir_never_crash(tmp_path):
    # Two interpreters import once, then open ten fresh workdirs together: before each, both wait at a barrier (a
    # file per process), so the openings race within milliseconds rather than after uneven import times.
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN, str(tmp_path), str(k)], stderr=subprocess.PIPE,
                              text=True) for k in range(2)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    # Usable afterwards: a run is recorded and read back.
    from nas.tracking.client import Tracker

    t = Tracker(tmp_path / "wd9", "nas")
    run_id = t.study_run("s", {})
    assert t.find_study_run("s") == run_id


@pytest.mark.parametrize(("store", "command"), [
    ("optuna.db", ["search", "study.n_trials=1"]),
    ("mlflow.db", ["search", "study.n_trials=1"]),
    ("optuna.db", ["export"]),
    ("measurements.db", ["measure", "arch=mobilenetv3_small_100"]),
])
def test_a_damaged_store_is_one_line_and_nothing_is_written(killed_twice, tmp_path, store, command):
    wd = tmp_path / "wd"
    shutil.copytree(killed_twice[0], wd)
    path = wd / store
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file() and p.name != ".nas.lock"}
    args = [a for a in FAST if a.startswith("target.")] if command[0] == "measure" else ARGS
    res = run_nas(*command, f"workdir={wd}", *args)
    assert res.returncode == 1, res.stdout[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr[-3000:]
    assert store in lines[0] and "damaged" in lines[0] and "Traceback" not in res.stderr
    after = {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file() and p.name != ".nas.lock"}
    assert after == before  # nothing else written


def test_ctrl_c_on_a_reference_reruns_it(tmp_path):
    wd = tmp_path / "wd"
    proc = start(wd, 5)
    signal_after(proc, 1, wd, signal.SIGINT)  # trial 1 (mnasnet_100, a reference) is running
    res = run_nas("search", f"workdir={wd}", "study.n_trials=2", *ARGS)
    assert res.returncode == 0, res.stderr[-2000:]
    interrupted = [t for t in trials(wd) if t.user_attrs.get("fail_reason") == "interrupted"]
    assert [t.user_attrs.get("reference") for t in interrupted] == ["mnasnet_100"]
    done = {t.user_attrs.get("reference") for t in trials(wd) if t.state == optuna.trial.TrialState.COMPLETE}
    assert "mnasnet_100" in done
