"""int8 TFLite: the conversion a device runs, target=tflite_cpu on the LiteRT interpreter, TFLite via the agent."""

import json
import shutil

import numpy as np
import optuna
import pytest
import requests
from mlflow.tracking import MlflowClient

from nas.config import DatasetConfig
from nas.data.datasets import load_dataset
from nas.latency.quantize import calibration_batches
from nas.latency.tflite_convert import interpreter, to_tflite
from nas.search_spaces.build import build_model
from nas.search_spaces.references import reference_archs
from tests.conftest import FAST, last_json, run_nas
from tests.test_agent import AUTH, QUICK, TOKEN, start_agent

TFLITE_FAST = [*FAST, "target=tflite_cpu"]


@pytest.fixture(scope="module")
def small_tflite(tmp_path_factory):
    data = load_dataset(DatasetConfig()).at(32)
    model = build_model(reference_archs()["mobilenetv3_small_100"], 10)
    shape = (1, 3, 32, 32)
    conv = to_tflite(model, shape, tmp_path_factory.mktemp("t") / "m.tflite", "int8",
                     calibration_batches(shape, data, 16))
    return conv


def test_conversion_is_fully_int8_and_agrees_with_the_float_model(small_tflite):
    it = interpreter(small_tflite.path)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8  # int8 in and out, as the Edge TPU needs
    assert list(inp["shape"]) == [1, 32, 32, 3]  # NHWC
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    float_ops = [o["op_name"] for o in it._get_ops_details()
                 if any(i >= 0 and tensors[i]["dtype"] == np.float32 for i in [*o["inputs"], *o["outputs"]])]
    assert float_ops == []  # no op left in float: nothing would fall back to the CPU for being float
    assert small_tflite.top1_agreement >= 0.75 and small_tflite.rel_error < 0.5


def test_measure_converts_and_times_an_arch_on_tflite_cpu(tmp_path):
    res = run_nas("measure", "arch=mobilenetv3_small_100", "target=tflite_cpu", f"workdir={tmp_path}",
                  "format=json", "target.input_shape=[1,3,64,64]", "target.warmup=2", "target.repeats=10",
                  "target.rounds=2", "target.round_pause_s=0", "target.tolerance=0", "target.drift_tolerance=0")
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert out["latency_source"] == "measured" and out["latency_ms"]["n"] == 10 and out["latency_ms"]["p50"] > 0
    assert out["fingerprint"]["runtime"].startswith("ai-edge-litert") and out["fingerprint"]["precision"] == "int8"
    assert out["conversion"]["precision"] == "int8" and out["conversion"]["top1_agreement"] >= 0.5


def test_measure_a_tflite_file_and_refuse_an_onnx_one(tmp_path, small_tflite):
    ok = run_nas("measure", f"model={small_tflite.path}", "target=tflite_cpu", "format=json", "target.repeats=10",
                 "target.rounds=2", "target.warmup=1")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert last_json(ok.stdout)["latency_ms"]["p50"] > 0
    onnx_file = tmp_path / "x.onnx"
    onnx_file.write_bytes(b"not really")
    bad = run_nas("measure", f"model={onnx_file}", "target=tflite_cpu")
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


def test_tflite_cpu_search_exports_an_int8_tflite_model(tmp_path):
    wd = tmp_path / "wd"
    # One trial: each int8 conversion costs about 30 s here (measure, accuracy, export are three).
    res = run_nas("search", f"workdir={wd}", "study.n_trials=1", "search_space.enqueue_references=false",
                  "budget_ms=1000", "format=json", *TFLITE_FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    out = last_json(res.stdout)
    assert out["complete"] == 1
    study = optuna.load_study(study_name="tflite_cpu-mbconv-digits-1000ms", storage=f"sqlite:///{wd / 'optuna.db'}")
    client = MlflowClient(f"sqlite:///{wd / 'mlflow.db'}")
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["latency_source"] == "measured"
        assert "tflite_top1_agreement" in run.data.metrics and "latency_p90_ms" in run.data.metrics
        assert "accuracy_fp32" in run.data.metrics  # accuracy is the int8 TFLite model's, fp32 beside it
    bundle = wd / "exports" / "tflite_cpu-1000ms"
    card = json.loads((bundle / "model_card.json").read_text())
    it = interpreter(bundle / card["tflite"]["file"])
    assert it.get_input_details()[0]["dtype"] == np.int8
    assert list(it.get_input_details()[0]["shape"]) == [1, 64, 64, 3]


def test_agent_measures_an_uploaded_tflite_model_and_refuses_a_non_tflite(small_tflite, tmp_path):
    proc, url = start_agent(f"token={TOKEN}")
    try:
        r = requests.post(f"{url}/measure", params={**QUICK, "runtime": "litert"},
                          data=small_tflite.path.read_bytes(), headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["stats"]["n"] == 10 and r.json()["fingerprint"]["runtime"].startswith("ai-edge-litert")
        bad = requests.post(f"{url}/measure", params={**QUICK, "runtime": "litert"}, data=b"PK\x03\x04zipzip",
                            headers=AUTH, timeout=30)
        assert bad.status_code == 400 and "not a TFLite model" in bad.json()["error"]
        if shutil.which("edgetpu_compiler") is None:  # the agent host's Edge TPU path says what is missing
            r = requests.post(f"{url}/measure", params={**QUICK, "runtime": "edgetpu"},
                              data=small_tflite.path.read_bytes(), headers=AUTH, timeout=60)
            assert r.status_code == 422 and "edgetpu_compiler" in r.json()["error"]
        res = run_nas("measure", "arch=mobilenetv3_small_100", "target=remote", f"target.url={url}",
                      f"target.token={TOKEN}", "target.runtime=litert", "target.precision=int8", f"workdir={tmp_path}",
                      "format=json", "target.input_shape=[1,3,32,32]", "target.repeats=10", "target.rounds=2",
                      "target.warmup=1")
        assert res.returncode == 0, res.stderr[-2000:]
        assert last_json(res.stdout)["fingerprint"]["runtime"].startswith("ai-edge-litert")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_graph_xnnpack_refuses_is_still_converted_and_checked(tmp_path):
    """This int8 candidate (an Edge TPU export of the default space) makes the default XNNPACK delegate fail to
    prepare; the conversion's output check runs it on TFLite's own kernels instead of ending the export in a
    traceback."""
    from nas.core.arch import Arch
    from nas.search_spaces.references import _stages

    arch = Arch(family="efficientnet", stem_size=32, num_features=1280, act="relu", resolution=256, stages=_stages([
        ["ds_r2_k3_s1_e1_c16_se0.25"], ["ir_r2_k3_s2_e6_c24_se0.25"], ["ir_r2_k5_s2_e6_c40"],
        ["ir_r3_k5_s2_e6_c80_se0.25"], ["ds_r2_k3_s1_e1_c112"], ["ir_r4_k5_s2_e6_c192_se0.25"],
        ["ir_r2_k5_s1_e6_c320_se0.25"]]))
    conv = to_tflite(build_model(arch, 1000), (1, 3, 256, 256), tmp_path / "m.tflite", "int8")
    assert (tmp_path / "m.tflite").is_file() and np.isfinite(conv.rel_error)  # the check ran on every input
