"""target=openvino end to end on real small models: measure and fingerprint, int8 by NNCF with the accuracy of the
quantized model, a search, the agent serving it, and a missing extra in one line."""

import json
import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest
import requests

from nas.config import DatasetConfig, Precision
from nas.core.errors import TargetError
from nas.data.datasets import load_dataset
from nas.latency.onnx_export import export_onnx
from nas.latency.targets import make_target
from nas.latency.targets.openvino import OpenVinoConfig, OpenVinoTarget
from nas.search_spaces.build import build_model
from nas.search_spaces.references import reference_archs
from tests.conftest import FAST, last_json, run_nas

needs_openvino = pytest.mark.skipif(find_spec("openvino") is None or find_spec("nncf") is None,
                                    reason="the openvino extra is not installed: pip install '.[openvino]'")
SMALL = ["target.warmup=2", "target.repeats=10", "target.rounds=2", "target.round_pause_s=0"]
QUICK = {"warmup": 2, "repeats": 10, "rounds": 2, "round_pause_s": 0.0}


@pytest.fixture
def arch64(tmp_path):
    """A real reference network at 64 px, as an arch.json (`nas measure` measures at the arch's resolution)."""
    path = tmp_path / "mnv3s_64.json"
    path.write_text(reference_archs(64)["mobilenetv3_small_100"].to_json())
    return path


@needs_openvino
def test_measure_and_fingerprint(tmp_path, arch64):
    res = run_nas("measure", f"arch={arch64}", "target=openvino", "num_classes=10", f"workdir={tmp_path}",
                  "format=json", *SMALL)
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    fp = out["fingerprint"]
    assert fp["target"] == "openvino" and fp["runtime"].startswith("openvino 20")
    assert fp["device"].startswith("CPU: ") and len(fp["device"]) > len("CPU: ")  # the device's full name
    assert fp["hints"]["PERFORMANCE_HINT"] == "LATENCY" and fp["hints"]["INFERENCE_NUM_THREADS"] == "1"
    assert fp["hints"]["INFERENCE_PRECISION_HINT"] == "f32" and fp["precision"] == "fp32" and fp["threads"] == 1
    lat = out["latency_ms"]
    assert lat["n"] >= 10 and 0 < lat["min"] <= lat["p50"] <= lat["p90"]


@needs_openvino
@pytest.mark.isolated
def test_int8_is_nncf_quantized_and_its_accuracy_is_the_quantized_models(tmp_path, monkeypatch):
    import openvino as ov
    import torch

    import nas.latency.targets.openvino as backend

    data = load_dataset(DatasetConfig()).at(32)
    model = build_model(reference_archs(32)["mobilenetv3_small_100"], 10).eval()
    shape = (1, 3, 32, 32)
    onnx_path = export_onnx(model, shape, tmp_path / "candidate.onnx")
    target = OpenVinoTarget(OpenVinoConfig(precision=Precision.int8, input_shape=list(shape), **QUICK))
    prepared = target.prepare(model, onnx_path, shape, data)
    assert prepared.path.suffix == ".xml" and prepared.path.with_suffix(".bin").exists()
    ops = {op.get_type_name() for op in ov.Core().read_model(str(prepared.path)).get_ops()}
    assert "FakeQuantize" in ops  # int8 operations, not the float graph
    assert target.measure(prepared.path).stats.p50 > 0
    # The quantized model agrees with the float one (quantized, not broken).
    core = ov.Core()
    fp32, int8 = core.compile_model(str(onnx_path), "CPU"), core.compile_model(str(prepared.path), "CPU")
    x = data.x_val[:8].numpy()
    pa = np.stack([fp32([x[i:i + 1]])[0][0] for i in range(8)])
    pb = np.stack([int8([x[i:i + 1]])[0][0] for i in range(8)])
    assert np.corrcoef(pa.ravel(), pb.ravel())[0, 1] > 0.9
    # deployed_top1 evaluates an NNCF-quantized model: the quantizer runs, and top-1 is a fraction of the split.
    calls = []
    real = backend.nncf_int8
    monkeypatch.setattr(backend, "nncf_int8", lambda *a: calls.append(a) or real(*a))
    top1 = OpenVinoTarget.deployed_top1(target.cfg, model, data, batch_size=32)
    x_val, y_val = data.validation_arrays()
    with torch.no_grad():
        float_top1 = float((model(torch.from_numpy(x_val)).argmax(1).numpy() == y_val).mean())
    assert calls and abs(top1 - float_top1) <= 0.15  # the int8 model, evaluated on the same images, as the float
    assert OpenVinoTarget.deployed_top1(OpenVinoConfig(), model, data, 32) is None  # fp32: the float model's


@needs_openvino
@pytest.mark.isolated
def test_bf16_runs_where_the_cpu_has_it_and_is_refused_elsewhere(tmp_path, arch64):
    """target.precision=bf16: OpenVINO computes in bf16 (the hint it applied is in the fingerprint); a CPU without
    it, or a target that cannot, says so in one line."""
    import openvino as ov

    res = run_nas("measure", f"arch={arch64}", "target=openvino", "target.precision=bf16", "num_classes=10",
                  f"workdir={tmp_path}", "format=json", *SMALL)
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert res.returncode == 0, res.stderr[-2000:]
        fp = last_json(res.stdout)["fingerprint"]
        assert fp["hints"]["INFERENCE_PRECISION_HINT"] == "bf16" and fp["precision"] == "bf16"
    else:
        lines = res.stderr.strip().splitlines()
        assert res.returncode != 0 and len(lines) == 1 and "does not run bf16" in lines[0]
    cpu = run_nas("measure", f"arch={arch64}", "target=cpu", "target.precision=bf16", f"workdir={tmp_path}")
    assert cpu.returncode == 2 and "target cpu does not run bf16" in cpu.stderr.strip().splitlines()[0]


def test_the_card_runtime_list_names_each_runtimes_precision():
    from nas.latency.runtimes import applied_precision, card_runtimes_md

    assert applied_precision({"hints": {"INFERENCE_PRECISION_HINT": "bf16"}}, "bf16") == "bf16"
    assert applied_precision({"hints": {"INFERENCE_PRECISION_HINT": "f32"}}, "int8") == "int8"
    assert applied_precision({"runtime": "onnxruntime 1.23"}, "fp32") == "fp32"
    md = card_runtimes_md({"statistic": "p90", "fastest": "openvino", "unavailable": {}, "measured": {
        "openvino": {"runtime": "openvino 2026.4", "precision": "bf16", "p90": 2.75}}})
    assert "openvino (openvino 2026.4, bf16) 2.750 ms" in md


@needs_openvino
@pytest.mark.isolated
def test_fp16_where_the_device_lacks_it_is_one_line():
    import openvino as ov

    if "FP16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU runs fp16 in OpenVINO")
    with pytest.raises(TargetError, match=r"target.precision=fp16: OpenVINO's CPU .* does not run fp16") as e:
        make_target(OpenVinoConfig(precision=Precision.fp16))
    assert "\n" not in str(e.value)


@needs_openvino
@pytest.mark.isolated
def test_a_device_openvino_does_not_report_is_one_line():
    with pytest.raises(TargetError, match=r"target\.device=NOPE: OpenVINO here reports only"):
        make_target(OpenVinoConfig(device="NOPE"))


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(TargetError) as e:
        make_target(OpenVinoConfig())
    assert str(e.value) == "target openvino: OpenVINO is not installed; pip install '.[openvino]'"


@needs_openvino
def test_search_on_openvino_names_the_runtime_in_the_card(tmp_path):
    wd = tmp_path / "wd"
    res = run_nas("search", "target=openvino", f"workdir={wd}", "study.n_trials=1", "budget_ms=1000",
                  "search_space.enqueue_references=false", "format=json",
                  *(o for o in FAST if not o.startswith("card_runtimes")), "card_runtimes=[cpu,openvino]")
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert out["complete"] == 1 and out["study"] == "openvino-mbconv-digits-1000ms"
    card = json.loads((wd / "exports" / "openvino-1000ms" / "model_card.json").read_text())
    assert card["fingerprint"]["runtime"].startswith("openvino ")
    runtimes = card["runtimes"]
    assert set(runtimes["measured"]) == {"cpu", "openvino"} and runtimes["fastest"] in ("cpu", "openvino")
    assert runtimes["measured"]["cpu"]["runtime"].startswith("onnxruntime ")
    # the study's own figure and the card's openvino row are one measurement (the cache)
    assert runtimes["measured"]["openvino"]["p90"] == pytest.approx(card["latency_ms"]["p90"])
    md = (wd / "exports" / "openvino-1000ms" / "model_card.md").read_text()
    assert "under each CPU runtime here" in md and "openvino (openvino 20" in md


@needs_openvino
def test_the_agent_serves_openvino(tmp_path):
    from tests.test_agent import start_agent

    # Exported in a fresh interpreter: this process has imported OpenVINO and NNCF by now, and one full-suite run
    # died here with SIGSEGV (not reproduced alone); the agent's own measurement is what this test is about.
    path = tmp_path / "m.onnx"
    subprocess.run([sys.executable, "-c", "import sys, pathlib; from nas.search_spaces.build import build_model; "
                    "from nas.latency.onnx_export import export_onnx; "
                    "from nas.search_spaces.references import reference_archs; "
                    "export_onnx(build_model(reference_archs()['mobilenetv3_small_100'], 10), (1, 3, 32, 32), "
                    "pathlib.Path(sys.argv[1]))", str(path)], check=True, capture_output=True)
    proc, url = start_agent()
    try:
        info = requests.get(f"{url}/info", timeout=10).json()
        assert "openvino" in info["runtimes"]
        r = requests.post(f"{url}/measure", params={**QUICK, "runtime": "openvino"}, data=path.read_bytes(),
                          timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["fingerprint"]["runtime"].startswith("openvino ") and r.json()["stats"]["n"] >= 10
    finally:
        proc.terminate()
        proc.wait(timeout=30)
