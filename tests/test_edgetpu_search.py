"""target=edge_tpu with no Edge TPU here: predicted latencies, labelled predicted everywhere a user looks."""

import json

import numpy as np
import optuna
import timm
import torch
from mlflow.tracking import MlflowClient

from nas.latency.tflite_convert import interpreter
from tests.conftest import FAST, last_json, run_nas


def test_edge_tpu_search_runs_end_to_end_and_says_latencies_are_predicted(tmp_path):
    wd = tmp_path / "wd"
    res = run_nas("search", "target=edge_tpu", "budget_ms=10", f"workdir={wd}", "study.n_trials=1",
                  "search_space.enqueue_references=false", "format=json", *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "PREDICTED by the analytic Edge TPU model" in res.stderr  # the warning, before any figure
    out = last_json(res.stdout)
    assert out["complete"] == 1 and out["export"]["latency_ms"] <= 10

    study = optuna.load_study(study_name="edge_tpu-mbconv-digits-10ms", storage=f"sqlite:///{wd / 'optuna.db'}")
    assert study.metric_names == ["accuracy", "predicted_latency_p90_ms"]
    client = MlflowClient(f"sqlite:///{wd / 'mlflow.db'}")
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["latency_source"] == "predicted"
        assert "predicted_latency_p90_ms" in run.data.metrics and "latency_p90_ms" not in run.data.metrics
        assert run.data.metrics["predicted_compute_ms"] > 0 and "edgetpu_cpu_ops" in run.data.metrics
        # Hard-swish is not an Edge TPU op: a candidate using it runs part of its graph on the host CPU.
        uses_hswish = "hard_swish" in json.dumps(t.user_attrs["arch"])
        assert (run.data.metrics["edgetpu_cpu_ops"] > 0) == uses_hswish
    parent = client.get_run(study.trials[0].user_attrs["mlflow_run_id"]).data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).data.tags["latency_source"] == "predicted"

    bundle = wd / "exports" / "edge_tpu-10ms"
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["latency_source"] == "predicted" and "PREDICTED, not measured" in card["latency_note"]
    assert card["fingerprint"]["host"] == "desktop_usb3" and card["fingerprint"]["clock"] == "std"
    assert "host desktop_usb3 at the std clock" in card["latency_note"] and "error band" in card["latency_note"]
    assert "PREDICTED, not measured" in (bundle / "model_card.md").read_text()
    assert "edgetpu_compiler" in card["edgetpu_compile"]  # not compiled here, and says how to
    it = interpreter(bundle / card["tflite"]["file"])  # the int8 TFLite file to compile for the device
    assert it.get_input_details()[0]["dtype"] == np.int8


def test_edge_tpu_host_option(tmp_path):
    res = run_nas("measure", "arch=mobilenetv2_100", "target=edge_tpu", "target.host=rpi9", f"workdir={tmp_path}")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "target.host=rpi9: use one of desktop_usb3, dev_board" in lines[0]
    ms = {}
    for host in ("desktop_usb3", "rpi3_usb2"):
        out = run_nas("measure", "arch=efficientnet_b0", "target=edge_tpu", f"target.host={host}", "format=json",
                      f"workdir={tmp_path}")
        assert out.returncode == 0, out.stderr[-2000:]
        doc = last_json(out.stdout)
        assert doc["fingerprint"]["host"] == host
        ms[host] = doc["latency_ms"]["p50"]
    assert ms["rpi3_usb2"] > ms["desktop_usb3"]  # a USB 2.0 Pi 3 is slower than a desktop over USB 3.0


def test_edge_tpu_candidate_predicted_over_budget_is_skipped_and_labelled(tmp_path):
    wd = tmp_path / "wd"
    res = run_nas("search", "target=edge_tpu", "budget_ms=0.5", f"workdir={wd}", "study.n_trials=1",
                  "search_space.enqueue_references=false", "format=json", *FAST)
    assert res.returncode == 1  # nothing meets 0.5 ms: no export, said in one line
    assert "all 1 trial(s) were predicted surely over it" in res.stderr
    assert last_json(res.stdout)["skipped"] == 1  # predicted ~1 ms at this resolution: neither trained nor converted
    study = optuna.load_study(study_name="edge_tpu-mbconv-digits-0.5ms", storage=f"sqlite:///{wd / 'optuna.db'}")
    run = MlflowClient(f"sqlite:///{wd / 'mlflow.db'}").get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.data.tags["state"] == "skipped" and run.data.tags["latency_source"] == "predicted"
    # The same metric name as every other predicted Edge TPU figure, so the MLflow UI compares them.
    assert run.data.metrics["predicted_latency_p90_ms"] > 0.5 and "latency_p90_ms" not in run.data.metrics
    assert not (wd / "exports").exists()


def _export(model: torch.nn.Module, path, size: int = 224):
    with torch.no_grad():
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, size, size),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    return path


def test_measure_predicts_any_onnx_classifier_and_shows_the_parameter_memory_step(tmp_path):
    out = {}
    for name in ("mobilenetv2_100", "resnet50"):
        path = _export(timm.create_model(name, pretrained=False), tmp_path / f"{name}.onnx")
        res = run_nas("measure", f"model={path}", "target=edge_tpu", "format=json")
        assert res.returncode == 0, res.stderr[-2000:]
        assert "PREDICTED" in res.stderr
        out[name] = last_json(res.stdout)
        assert out[name]["latency_source"] == "predicted"
    mnv2, r50 = out["mobilenetv2_100"], out["resnet50"]
    assert mnv2["estimate"]["streaming_ms"] < 0.1 * mnv2["estimate"]["ms"]  # 3.5 MB of int8 weights: cached
    assert r50["estimate"]["streamed_bytes"] > 10e6  # 25.6 MB of weights: most stream from the host
    # The step past ~8 MB of parameters: streaming weights over USB is a large share of ResNet-50's time.
    assert r50["estimate"]["streaming_ms"] > 0.3 * r50["estimate"]["ms"]


def test_edge_tpu_required_but_absent_is_one_line(tmp_path):
    res = run_nas("measure", "arch=mobilenetv2_100", "target=edge_tpu", "target.edgetpu.mode=measure",
                  f"workdir={tmp_path}")
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "edgetpu_compiler" in lines[0], res.stderr


def test_a_tflite_file_without_an_edge_tpu_is_one_line(tmp_path):
    fake = tmp_path / "m.tflite"
    fake.write_bytes(b"\0\0\0\0TFL3")
    res = run_nas("measure", f"model={fake}", "target=edge_tpu")
    assert res.returncode != 0 and "needs an Edge TPU" in res.stderr.strip().splitlines()[-1]


def test_device_measurements_correct_the_analytic_prior():
    from nas.latency.gate import PriorCorrection

    c = PriorCorrection(rel_error=0.11)
    assert c.fit([(2.0, 3.0), (4.0, 6.2)]).apply(10.0) == (10.0, 1.1)  # too few pairs: the prior as it is
    c.fit([(2.0, 3.0), (4.0, 6.2), (1.0, 1.45), (8.0, 12.0)])
    mean, std = c.apply(10.0)
    assert mean == 15.0  # the device runs 1.5x slower than the model says: predictions follow
    assert 0 < std < 1.1  # and are trusted more once measurements agree with each other


def test_a_learned_predictor_for_a_predicting_edge_tpu_is_refused_in_one_line(tmp_path):
    res = run_nas("predictor", "fit", "target=edge_tpu", f"workdir={tmp_path / 'wd'}")
    assert res.returncode == 1 and "needs measurements" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "wd").exists()  # nothing written
