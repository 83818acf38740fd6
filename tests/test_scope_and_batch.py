"""Batch size and the budget's scope change what is measured."""

import numpy as np
import onnxruntime as ort

from nas.latency.onnx_export import export_onnx
from nas.latency.targets import make_target
from nas.latency.targets.ort import OrtConfig, io_bound_pipeline
from nas.latency.targets.pipeline import Pipeline
from nas.search_spaces.build import build_model
from nas.search_spaces.references import reference_archs
from tests.conftest import last_json, run_nas

QUICK = ["target.warmup=1", "target.repeats=10", "target.rounds=2", "target.round_pause_s=0", "target.tolerance=0",
         "target.drift_tolerance=0"]


def test_pipeline_scope_splits_the_time(tmp_path):
    res = run_nas("measure", "arch=mobilenetv3_small_100", "target.scope=pipeline", "target.input_shape=[1,3,64,64]",
                  f"workdir={tmp_path}", "format=json", *QUICK)
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    split = out["latency_ms"]["split_ms"]
    assert set(split) == {"preprocess", "transfer", "model", "postprocess"}
    assert split["preprocess"] > 0 and split["model"] > 0
    assert out["fingerprint"]["scope"].startswith("pipeline")


def test_pipeline_scope_feeds_an_fp16_model_half_precision_pixels(tmp_path):
    res = run_nas("measure", "arch=mobilenetv3_small_100", "target.scope=pipeline", "target.precision=fp16",
                  "target.input_shape=[1,3,64,64]", f"workdir={tmp_path}", "format=json", *QUICK)
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert out["fingerprint"]["precision"] == "fp16" and out["latency_ms"]["split_ms"]["model"] > 0


def test_pipeline_preprocessing_produces_the_model_input():
    pipe = Pipeline((2, 3, 48, 40), (120, 160))
    x = pipe.preprocess()
    assert x.shape == (2, 3, 48, 40) and x.dtype.name == "float32"
    top = Pipeline.postprocess(x.reshape(2, -1)[:, :10])
    assert top.shape == (2, 5)
    assert Pipeline((1, 3, 8, 8), (16, 16), dtype=np.float16).preprocess().dtype == np.float16


def test_batch_size_is_part_of_the_set_up(tmp_path):
    base = ["measure", "arch=mobilenetv3_small_100", f"workdir={tmp_path}", "format=json", *QUICK]
    one = last_json(run_nas(*base, "target.input_shape=[1,3,64,64]").stdout)
    res = run_nas(*base, "target.input_shape=[4,3,64,64]")
    assert res.returncode == 0, res.stderr[-2000:]
    four = last_json(res.stdout)
    assert four["cached"] is False and four["fingerprint"]["batch"] == 4 and one["fingerprint"]["batch"] == 1


def test_batched_export_is_measured_at_its_batch(tmp_path):
    cfg = OrtConfig(input_shape=[4, 3, 64, 64], warmup=1, repeats=10, rounds=2, round_pause_s=0, tolerance=0,
                    drift_tolerance=0)
    path = export_onnx(build_model(reference_archs()["mobilenetv3_small_100"], 10), (4, 3, 64, 64),
                       tmp_path / "b4.onnx")
    assert ort.InferenceSession(str(path)).get_inputs()[0].shape == [4, 3, 64, 64]
    assert make_target(cfg).measure(path).stats.n == 10


def test_io_bound_pipeline_returns_the_models_output_and_times_the_copies(tmp_path):
    # The GPU pipeline's I/O binding, run against CPU memory: what a CI machine can check of it.
    path = export_onnx(build_model(reference_archs()["mobilenetv3_small_100"], 10), (1, 3, 64, 64),
                       tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    seen = []

    class Recording(Pipeline):
        def postprocess(self, logits, k=5):
            seen.append(logits)
            return super().postprocess(logits, k)

    pipe = Recording((1, 3, 64, 64), (120, 160))
    parts = io_bound_pipeline(ort, sess, pipe, "cpu")()
    assert set(parts) == {"preprocess", "transfer", "model", "postprocess"} and parts["model"] > 0
    expected = sess.run(None, {sess.get_inputs()[0].name: pipe.preprocess()})[0]
    np.testing.assert_allclose(seen[0], expected, rtol=1e-5, atol=1e-5)
