"""`nas runtimes arch=NAME`: one architecture under several CPU runtimes, one protocol, a table and the fastest."""

import sys
from importlib.util import find_spec

import pytest

from nas.config import TargetConfig
from nas.latency.runtimes import card_runtimes_md, fastest, measure_runtimes, runtime_config
from nas.latency.targets.ort import OrtConfig
from nas.search_spaces.references import reference_archs
from tests.conftest import last_json, run_nas

SMALL = ["target.warmup=2", "target.repeats=10", "target.rounds=2", "target.round_pause_s=0"]


@pytest.mark.skipif(find_spec("openvino") is None, reason="the openvino extra is not installed")
def test_runtimes_table_and_json(tmp_path):
    arch = tmp_path / "mnv3s_64.json"
    arch.write_text(reference_archs(64)["mobilenetv3_small_100"].to_json())
    args = ["runtimes", f"arch={arch}", "runtimes=[cpu,openvino,nope]", "num_classes=10", f"workdir={tmp_path}",
            *SMALL]
    res = run_nas(*args, "format=json")
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    rows = {r["name"]: r for r in out["runtimes"]}
    assert rows["cpu"]["runtime"].startswith("onnxruntime ") and rows["openvino"]["runtime"].startswith("openvino ")
    assert all(0 < rows[n]["latency_ms"]["p50"] <= rows[n]["latency_ms"]["p90"] for n in ("cpu", "openvino"))
    assert "no target option 'nope'" in rows["nope"]["error"]
    p90 = {n: rows[n]["latency_ms"]["p90"] for n in ("cpu", "openvino")}
    assert out["statistic"] == "p90" and out["fastest"] == min(p90, key=p90.get)
    # The text table, from the cache this time: one line per runtime and the fastest named.
    text = run_nas(*args)
    assert text.returncode == 0, text.stderr[-2000:]
    assert "p50 ms" in text.stdout and f"fastest (p90): {out['fastest']}" in text.stdout
    assert "<- fastest" in text.stdout and "nope" in text.stdout


def test_a_runtime_not_installed_is_a_row_saying_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tvm", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    protocol = OrtConfig(warmup=1, repeats=5, rounds=1, round_pause_s=0.0)
    rows = measure_runtimes(reference_archs(32)["mobilenetv3_small_100"], protocol, ["cpu", "openvino", "tvm"],
                            tmp_path, 10)
    by = {r.name: r for r in rows}
    assert by["cpu"].stats is not None and fastest(rows, "p90") is by["cpu"]
    assert "pip install '.[openvino]'" in by["openvino"].error and "pip install 'apache-tvm" in by["tvm"].error
    card = {"statistic": "p90", "fastest": "cpu", "measured": {"cpu": {"runtime": "onnxruntime x", "p90": 1.0}},
            "unavailable": {"tvm": by["tvm"].error}}
    assert card_runtimes_md(card).startswith("This model under each CPU runtime here (p90; fastest: cpu): "
                                             "cpu (onnxruntime x) 1.000 ms; tvm: target tvm: Apache TVM")


def test_the_shared_protocol_reaches_every_runtime(tmp_path):
    protocol = TargetConfig(threads=2, repeats=20, rounds=4, warmup=3)
    cfg = runtime_config("tflite_cpu", protocol, tmp_path)
    assert cfg.backend == "litert" and cfg.name == "tflite_cpu"
    assert (cfg.threads, cfg.repeats, cfg.rounds, cfg.warmup, str(cfg.precision)) == (2, 20, 4, 3, "fp32")
    tvm = runtime_config("tvm", protocol, tmp_path)
    assert tvm.tuning_db == f"{tmp_path}/tvm-tuning"  # the YAML's ${workdir}, resolved
