"""`nas measure` and the ONNX Runtime target, with real sessions."""


from nas.latency.cache import MeasurementCache
from nas.latency.onnx_export import export_onnx, graph_stats
from nas.latency.targets import make_target
from nas.latency.targets.ort import OrtConfig
from nas.search_spaces.build import build_model
from nas.search_spaces.references import reference_archs
from tests.conftest import last_json, run_nas

SMALL = ["target.input_shape=[1,3,64,64]", "target.warmup=2", "target.repeats=10", "target.rounds=2",
         "target.round_pause_s=0", "target.tolerance=0", "target.drift_tolerance=0"]


def test_measure_reference_json_and_cache(tmp_path):
    args = ["measure", "arch=mobilenetv3_small_100", f"workdir={tmp_path}", "format=json", *SMALL]
    first = run_nas(*args)
    assert first.returncode == 0, first.stderr
    out = last_json(first.stdout)
    lat = out["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
    assert out["cached"] is False and out["macs"] > 0
    second = last_json(run_nas(*args).stdout)
    assert second["cached"] is True  # same arch, same target set-up: not measured again
    assert second["latency_ms"] == lat


def test_measure_onnx_file(tmp_path):
    path = export_onnx(build_model(reference_archs()["mobilenetv3_small_100"], 10), (1, 3, 64, 64),
                       tmp_path / "m.onnx")
    res = run_nas("measure", f"model={path}", "format=json", f"workdir={tmp_path}", *SMALL)
    assert res.returncode == 0, res.stderr
    assert last_json(res.stdout)["latency_ms"]["n"] == 10


def test_corrupt_model_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model at all")
    res = run_nas("measure", f"model={bad}", f"workdir={tmp_path}")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a readable ONNX model" in lines[0]


def test_unknown_arch_is_one_line(tmp_path):
    res = run_nas("measure", "arch=resnet9000", f"workdir={tmp_path}")
    assert res.returncode == 1
    assert res.stderr.strip().startswith("nas measure: error: unknown timm model 'resnet9000'")
    assert len(res.stderr.strip().splitlines()) == 1


def test_any_timm_mbconv_model_is_measured_at_its_own_input_size(tmp_path):
    """`nas measure arch=efficientnet_b1`: read from timm with its exact parameter count, and measured."""
    res = run_nas("measure", "arch=efficientnet_b1", f"workdir={tmp_path}", "target.warmup=2", "target.repeats=10",
                  "target.rounds=2", "target.tolerance=0", "target.drift_tolerance=0", "format=json")
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    import timm

    assert out["params"] == sum(p.numel() for p in timm.create_model("efficientnet_b1").parameters())
    assert out["arch"] == "efficientnet_b1" and out["latency_source"] == "measured"


def test_graph_stats_counts_macs_like_timm(tmp_path):
    import onnx

    model = build_model(reference_archs()["mobilenetv3_large_100"])
    path = export_onnx(model, (1, 3, 224, 224), tmp_path / "mnv3.onnx")
    stats = graph_stats(onnx.load(str(path)))
    # timm lists mobilenetv3_large_100 at 0.22 GMACs.
    assert 0.20e9 < stats.macs < 0.24e9


def test_cache_is_keyed_by_fingerprint(tmp_path):
    cache = MeasurementCache(tmp_path / "m.db")
    t1 = make_target(OrtConfig(threads=1, repeats=10, rounds=2, round_pause_s=0))
    t2 = make_target(OrtConfig(threads=2, repeats=10, rounds=2, round_pause_s=0))
    path = export_onnx(build_model(reference_archs()["mobilenetv3_small_100"], 10), (1, 3, 224, 224),
                       tmp_path / "m.onnx")
    stats = t1.measure(path).stats
    cache.put("abc", t1.fingerprint(), stats)
    assert cache.get("abc", t1.fingerprint())[0] == stats
    assert cache.get("abc", t2.fingerprint()) is None  # other threads: another set-up


def test_macs_are_per_image_and_unknown_when_a_dimension_is_symbolic(tmp_path):
    """A batch-4 graph reports the MACs of one image (not 4x); a graph with a symbolic height has no MAC count
    rather than one that counts the unknown dimension as 1."""
    import onnx

    model = build_model(reference_archs()["mobilenetv2_100"], num_classes=10).eval()
    one = graph_stats(onnx.load(str(export_onnx(model, (1, 3, 96, 96), tmp_path / "b1.onnx")))).macs
    four = graph_stats(onnx.load(str(export_onnx(model, (4, 3, 96, 96), tmp_path / "b4.onnx")))).macs
    assert one is not None and one > 50e6 and four == one
    m = onnx.load(str(tmp_path / "b1.onnx"))
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"  # a symbolic height
    for vi in list(m.graph.value_info) + list(m.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            d.Clear()
    assert graph_stats(m).macs is None
