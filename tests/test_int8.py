"""int8 as a target setting: static quantization changes the measured model and the accuracy evaluated."""

import numpy as np
import onnx
import onnxruntime as ort
import optuna
from mlflow.tracking import MlflowClient

from nas.config import DatasetConfig
from nas.data.datasets import load_dataset
from nas.latency.onnx_export import export_onnx
from nas.latency.quantize import calibration_batches, quantize_int8
from nas.search_spaces.build import build_model
from nas.search_spaces.references import reference_archs
from tests.conftest import FAST, last_json, run_nas


def test_static_quantization_gives_a_qdq_model_that_agrees_with_fp32(tmp_path):
    data = load_dataset(DatasetConfig()).at(32)
    model = build_model(reference_archs()["mobilenetv2_100"], 10)
    fp32 = export_onnx(model, (1, 3, 32, 32), tmp_path / "fp32.onnx")
    q = quantize_int8(fp32, tmp_path / "int8.onnx", calibration_batches((1, 3, 32, 32), data, 16))
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    a = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    x = data.x_val[:16].numpy()
    pa = np.stack([a.run(None, {"input": x[i:i + 1]})[0][0] for i in range(16)])
    pb = np.stack([b.run(None, {"input": x[i:i + 1]})[0][0] for i in range(16)])
    assert np.corrcoef(pa.ravel(), pb.ravel())[0, 1] > 0.9  # quantized, not broken


def test_int8_is_another_measurement_set_up(tmp_path):
    small = ["target.input_shape=[1,3,64,64]", "target.warmup=2", "target.repeats=10", "target.rounds=2",
             "target.round_pause_s=0"]
    base = ["measure", "arch=mobilenetv3_small_100", f"workdir={tmp_path}", "format=json", *small]
    fp32 = last_json(run_nas(*base).stdout)
    int8 = run_nas(*base, "target.precision=int8")
    assert int8.returncode == 0, int8.stderr[-2000:]
    out = last_json(int8.stdout)
    assert out["cached"] is False  # not the fp32 measurement
    assert out["fingerprint"]["precision"] == "int8" and fp32["fingerprint"]["precision"] == "fp32"


def test_search_with_int8_records_quantized_accuracy(tmp_path):
    wd = tmp_path / "wd"
    res = run_nas("search", f"workdir={wd}", "target.precision=int8", "study.n_trials=1",
                  "search_space.enqueue_references=false", "budget_ms=1000", *FAST)
    assert res.returncode == 0, res.stderr[-2000:]
    (t,) = optuna.load_study(study_name="cpu-int8-mbconv-digits-1000ms",
                          storage=f"sqlite:///{wd / 'optuna.db'}").trials
    assert t.state == optuna.trial.TrialState.COMPLETE
    uri = f"sqlite:///{wd / 'mlflow.db'}"
    run = MlflowClient(uri).get_run(t.user_attrs["mlflow_run_id"])
    assert "accuracy_fp32" in run.data.metrics and run.data.metrics["accuracy"] == t.values[0]


def test_fp16_exports_and_measures_a_half_precision_model(tmp_path):
    small = ["target.input_shape=[1,3,64,64]", "target.warmup=1", "target.repeats=10", "target.rounds=2",
             "target.round_pause_s=0"]
    res = run_nas("measure", "arch=mobilenetv3_small_100", "target.precision=fp16", f"workdir={tmp_path}",
                  "format=json", *small)
    assert res.returncode == 0, res.stderr[-2000:]
    assert last_json(res.stdout)["fingerprint"]["precision"] == "fp16"


def test_fp16_export_is_half_precision(tmp_path):
    path = export_onnx(build_model(reference_archs()["mobilenetv3_small_100"], 10), (1, 3, 32, 32),
                       tmp_path / "h.onnx", fp16=True)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
