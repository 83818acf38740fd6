"""One study, many workers and devices: a real PostgreSQL server, a real MLflow tracking server, real agents.

The servers are started here, on loopback, in temporary folders, and stopped afterwards; the PostgreSQL tests skip
with a one-line reason where its server binaries are missing.
"""

import os
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import FAST, last_json, nas_bin, run_nas
from tests.servers import free_port, postgres_server
from tests.servers import mlflow_server as start_mlflow_server
from tests.test_agent import start_agent

STUDY = "cpu-mbconv-digits-50ms"


@pytest.fixture(scope="module")
def postgres():
    try:
        with postgres_server(("nas1", "nas2", "nas3")) as url:
            yield url
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=STUDY, storage=url).trials
    except KeyError:  # no worker has created the study yet
        return []


def _worker(url: str, tracking: str, wd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([nas_bin(), "search", f"study.storage={url}", f"tracking.uri={tracking}", f"workdir={wd}",
                             "budget_ms=50", "format=json", *FAST, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_two_workers_share_one_study(postgres, mlflow_server, tmp_path):
    url = f"{postgres}/nas1"
    res = run_nas("search", f"study.storage={url}", f"tracking.uri={mlflow_server}", f"workdir={tmp_path / 'wd'}",
                  "budget_ms=50", "study.workers=2", "study.n_trials=6", "format=json", *FAST, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    out = last_json(res.stdout)
    assert out["workers"] == 2 and out["export"] is not None
    trials = _trials(url)
    counted = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(counted) == 6  # the study-wide count, shared by both workers
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    hashes = [t.user_attrs["arch_hash"] for t in done]
    assert len(hashes) == len(set(hashes))  # no arch trained twice
    assert sorted(t.user_attrs.get("reference") for t in done if t.user_attrs.get("reference")) == \
        ["efficientnet_b0", "mnasnet_100", "mobilenetv2_100"]  # enqueued once
    pids = {t.user_attrs["worker"]["pid"] for t in done}
    assert len(pids) == 2  # both worked
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("nas").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert len(client.search_model_versions("name='nas-cpu-50ms'")) == 1  # one export
    # The measurement cache is a table in the same PostgreSQL database.
    import psycopg

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM measurements").fetchone()[0] == len(done)


def test_a_killed_worker_loses_only_its_running_trial(postgres, mlflow_server, tmp_path):
    url = f"{postgres}/nas2"
    extra = ("study.max_trials=6", "study.n_trials=6")
    a = _worker(url, mlflow_server, tmp_path / "a", *extra)
    b = _worker(url, mlflow_server, tmp_path / "b", *extra)
    try:
        victim = None
        for _ in range(1200):  # kill whichever worker is first seen mid-trial with its MLflow run open
            running = [t for t in _trials(url) if t.state == optuna.trial.TrialState.RUNNING
                       and "mlflow_run_id" in t.user_attrs]
            if running:
                victim = running[0]
                break
            time.sleep(0.1)
        assert victim is not None
        pid = victim.user_attrs["worker"]["pid"]
        (a if a.pid == pid else b).kill()
        survivor = b if a.pid == pid else a
        _out, err = survivor.communicate(timeout=1200)
        assert survivor.returncode == 0, err[-3000:]
        (a if a.pid == pid else b).wait()
        trials = _trials(url)
        dead = next(t for t in trials if t.number == victim.number)
        assert dead.state == optuna.trial.TrialState.FAIL and dead.user_attrs["fail_reason"] == "worker died"
        retried = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
        assert len(retried) == 1 and retried[0].state == optuna.trial.TrialState.COMPLETE  # retried once, elsewhere
        finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
        assert len(finished) == 6  # the study completed; nothing finished is missing
        client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
        assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    finally:  # never leave a worker behind, whatever failed
        for p in (a, b):
            p.kill()
            p.wait(timeout=30)


def test_a_wrong_storage_url_is_one_line(postgres, tmp_path):
    bad = f"{postgres.rsplit(':', 1)[0]}:{free_port()}/nas3"
    res = run_nas("search", f"study.storage={bad}", f"workdir={tmp_path / 'wd'}", *FAST)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the study storage at postgresql://postgres@127.0.0.1" in lines[0]


def test_an_unreachable_tracking_server_is_one_line(tmp_path):
    res = run_nas("search", f"tracking.uri=http://127.0.0.1:{free_port()}", f"workdir={tmp_path / 'wd'}", *FAST)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the MLflow tracking server" in lines[0]


def test_two_agents_serve_one_search_and_one_may_go(tmp_path):
    a, url_a = start_agent()
    b, url_b = start_agent()
    try:
        proc = subprocess.Popen([nas_bin(), "search", "target=remote", f"target.urls=[{url_a},{url_b}]",
                                 "target.url=null", f"workdir={tmp_path / 'wd'}", "study.n_trials=4",
                                 "search_space.enqueue_references=false", "budget_ms=1000", "target.retries=1",
                                 "target.down_s=600", *FAST], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        for line in proc.stdout:  # after the first trial, one device goes away
            if line.startswith("[  1/4]"):
                b.kill()
                break
        _out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        study = optuna.load_study(study_name="remote-mbconv-digits-1000ms",
                                  storage=f"sqlite:///{tmp_path / 'wd' / 'optuna.db'}")
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    finally:
        for p in (a, b):
            p.kill()
            p.wait(timeout=30)
