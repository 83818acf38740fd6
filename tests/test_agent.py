"""A real `nas agent` on loopback: measurements, the security rules, serialisation, a remote search."""

import json
import os
import subprocess
import threading
import time

import onnx
import optuna
import pytest
import requests
from onnx import TensorProto, helper

from nas.latency.onnx_export import export_onnx
from nas.search_spaces.build import build_model
from nas.search_spaces.references import reference_archs
from tests.conftest import FAST, nas_bin, run_nas
from tests.servers import free_port

TOKEN = "s3cret-token"


def start_agent(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([nas_bin(), "agent", f"port={port}", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(f"{url}/info", timeout=1)
            return proc, url
        except requests.ConnectionError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read()) from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("agent did not start")


@pytest.fixture(scope="module")
def agent():
    proc, url = start_agent(f"token={TOKEN}", "max_upload_mb=16")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.onnx"
    return export_onnx(build_model(reference_archs()["mobilenetv3_small_100"], 10), (1, 3, 32, 32), path)


AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUICK = {"warmup": 1, "repeats": 10, "rounds": 2, "round_pause_s": 0, "tolerance": 0, "drift_tolerance": 0}


def test_measures_an_uploaded_model(agent, small_model):
    r = requests.post(f"{agent}/measure", params=QUICK, data=small_model.read_bytes(), headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["stats"]["n"] == 10 and 0 < out["stats"]["p50"] <= out["stats"]["p99"]
    assert out["fingerprint"]["threads"] == 1 and "onnxruntime" in out["fingerprint"]["runtime"]
    info = requests.get(f"{agent}/info", headers=AUTH, timeout=10).json()
    assert "CPUExecutionProvider" in info["providers"] and info["measured"] >= 1


def test_no_token_is_401_and_wrong_token_is_403(agent, small_model):
    assert requests.get(f"{agent}/info", timeout=10).status_code == 401
    r = requests.post(f"{agent}/measure", data=small_model.read_bytes(), timeout=30,
                      headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403 and r.json()["error"] == "wrong token"


def test_oversized_upload_is_413(agent):
    r = requests.post(f"{agent}/measure", data=b"\0" * (17 * 1024 * 1024), headers=AUTH, timeout=30)
    assert r.status_code == 413 and "over the limit" in r.json()["error"]


def test_non_model_upload_is_400(agent):
    r = requests.post(f"{agent}/measure", data=b"#!/bin/sh\nrm -rf /\n", headers=AUTH, timeout=30)
    assert r.status_code == 400 and "not an ONNX model" in r.json()["error"]


def test_custom_operator_model_is_refused(agent):
    node = helper.make_node("Evil", ["x"], ["y"], domain="com.evil.ops")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.evil.ops", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    r = requests.post(f"{agent}/measure", data=model.SerializeToString(), headers=AUTH, timeout=30)
    assert r.status_code == 400 and "custom operator domain" in r.json()["error"]


def test_bad_settings_are_400(agent, small_model):
    r = requests.post(f"{agent}/measure", params={"repeats": 10**9}, data=small_model.read_bytes(), headers=AUTH,
                      timeout=30)
    assert r.status_code == 400 and "repeats" in r.json()["error"]


def test_two_clients_at_once_are_serialised(agent, small_model):
    results = []

    def client():
        r = requests.post(f"{agent}/measure", params={**QUICK, "repeats": 1000}, data=small_model.read_bytes(),
                          headers=AUTH, timeout=120)
        results.append(r.json()["timing"])

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a, b = sorted(results, key=lambda t: t["started"])
    assert a["finished"] <= b["started"]  # the second waited for the first: no overlapping timings
    assert b["queued_s"] > 0


def test_non_loopback_bind_without_token_is_refused():
    res = run_nas("agent", "host=0.0.0.0")
    assert res.returncode == 2
    assert "set token=" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_unreachable_agent_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    res = run_nas("measure", "arch=mobilenetv3_small_100", "target=remote", f"target.url={url}", "target.retries=2",
                  f"workdir={tmp_path}")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable after 2 attempt(s)" in lines[0]


def test_wrong_token_from_the_cli_is_one_line(agent, tmp_path):
    res = run_nas("measure", "arch=mobilenetv3_small_100", "target=remote", f"target.url={agent}",
                  "target.token=nope", f"workdir={tmp_path}")
    assert res.returncode == 1 and "refused: wrong token" in res.stderr


def test_search_through_the_agent(agent, tmp_path):
    wd = tmp_path / "wd"
    res = run_nas("search", "target=remote", f"target.url={agent}", f"target.token={TOKEN}", f"workdir={wd}",
                  "study.n_trials=2", "search_space.enqueue_references=false", "budget_ms=1000", *FAST)
    assert res.returncode == 0, res.stderr[-2000:]
    study = optuna.load_study(study_name="remote-mbconv-digits-1000ms", storage=f"sqlite:///{wd / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    card = json.loads((wd / "exports" / "remote-1000ms" / "model_card.json").read_text())
    exported = next(t for t in study.trials if t.number == card["trial"])
    # The exported latency is the one the agent measured for that trial, labelled measured, on the agent's set-up.
    assert card["latency_source"] == "measured" and card["target"] == "remote"
    assert card["latency_ms"]["p90"] == pytest.approx(exported.values[1]) and card["latency_ms"]["n"] > 0
    assert {k: v for k, v in card["fingerprint"].items() if k != "shape"} == study.user_attrs["fingerprint"]


def test_invalid_onnx_check(tmp_path):
    from nas.agent.validate import ModelRejected, validate_onnx

    with pytest.raises(ModelRejected, match="not an ONNX model"):
        validate_onnx(b"")
    ok = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]), opset_imports=[helper.make_opsetid("", 17)])
    assert isinstance(validate_onnx(ok.SerializeToString()), onnx.ModelProto)
