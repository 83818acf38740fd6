"""The analytic Edge TPU latency model: features, shipped constants, predictions, CPU fallback."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from nas.predictors import edgetpu as et


def _export(model: nn.Module, shape: tuple[int, ...], path) -> str:
    with torch.no_grad():
        torch.onnx.export(model.eval(), (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    return str(path)


@pytest.fixture(scope="module")
def mobilenetv2_onnx(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("edgetpu") / "mobilenetv2_100.onnx"
    return str(et.export_onnx(et.build_calibration_model("mobilenet_v2_1.0"), 224, path))


def test_mobilenetv2_features_equal_the_shipped_row(mobilenetv2_onnx):
    # Exact: the counts follow from the architecture alone, so any difference is drift in timm / torch / onnx.
    assert et.features_of(mobilenetv2_onnx) == et.read_features_csv()["mobilenet_v2_1.0"]


def test_refit_reproduces_the_shipped_constants():
    shipped = json.loads(et.CONSTANTS_JSON.read_text())
    refit = et.calibrate()
    for key in ("cache_bytes", "array_tile", "relative_fit", "source"):
        assert refit[key] == shipped[key], key
    assert refit["cpu_macs_per_ms"] == pytest.approx(shipped["cpu_macs_per_ms"], rel=1e-9)
    assert refit["devices"].keys() == shipped["devices"].keys() == {"usb", "dev_board"}
    for dev, consts in shipped["devices"].items():
        assert {"rel_error", "rel_error_cached", "rel_error_streaming", "rel_error_cpu"} <= consts.keys(), dev
        assert consts["rel_error_cached"] < consts["rel_error"] < consts["rel_error_streaming"], dev
        for key, value in consts.items():
            assert refit["devices"][dev][key] == (pytest.approx(value, rel=1e-9, abs=1e-15)
                                                  if isinstance(value, float) else value), (dev, key)


def test_nested_loo_reproduces_the_shipped_record():
    shipped = json.loads(et.CONSTANTS_JSON.read_text())["nested_loo"]
    tile_macs = et.read_tile_macs_csv()
    features = et.read_features_csv()
    assert all(tile_macs[k][et.ARRAY_TILE] == f.tpu_array_macs for k, f in features.items())
    nested = et.nested_loo(features, tile_macs)
    assert [{k: f[k] for k in ("model", "tile", "cache_bytes")} for f in nested["folds"]] == \
        [{k: f[k] for k in ("model", "tile", "cache_bytes")} for f in shipped["folds"]]
    for dev in et.DEVICES:
        for key in ("mdape", "spearman", "mdape_cached", "mdape_streaming"):
            assert nested[dev][key] == pytest.approx(shipped[dev][key], rel=1e-9), (dev, key)


def test_mobilenetv2_prediction_is_within_20_percent_of_coral(mobilenetv2_onnx):
    est = et.predict_onnx(mobilenetv2_onnx)  # usb
    assert abs(est.ms - 2.6) / 2.6 <= 0.2, est
    assert est.ms == pytest.approx(est.overhead_ms + est.compute_ms + est.streaming_ms + est.cpu_ms)
    assert est.cpu_ops == 0 and est.streamed_bytes == 0 and est.cached_bytes == est.param_bytes
    assert 0 < est.rel_error < 1
    board = et.predict_onnx(mobilenetv2_onnx, device="dev_board")
    assert abs(board.ms - 2.6) / 2.6 <= 0.2, board


def test_parameters_beyond_the_cache_stream(tmp_path):
    # Same MACs (4096 x 4096 = 64 x 512 x 512), 16.8 MB of int8 weights vs 0.26 MB.
    big = et.features_of(_export(nn.Linear(4096, 4096), (1, 4096), tmp_path / "big.onnx"))
    small = et.features_of(_export(nn.Linear(512, 512), (1, 64, 512), tmp_path / "small.onnx"))
    assert big.macs == small.macs and big.tpu_array_macs == small.tpu_array_macs
    model = et.EdgeTpuModel.load("usb")
    assert big.param_bytes > model.cache_bytes > small.param_bytes
    pb, ps = model.predict(big), model.predict(small)
    assert pb.streamed_bytes == big.param_bytes - model.cache_bytes and ps.streamed_bytes == 0
    assert pb.streaming_ms > 10 * ps.streaming_ms and pb.ms > 3 * ps.ms
    assert pb.compute_ms == pytest.approx(ps.compute_ms)


def test_streaming_estimates_carry_the_larger_error(mobilenetv2_onnx, tmp_path):
    big = et.features_of(_export(nn.Linear(4096, 4096), (1, 4096), tmp_path / "big.onnx"))  # 16.8 MB of weights
    small = et.features_of(mobilenetv2_onnx)
    for dev in et.DEVICES:
        model = et.EdgeTpuModel.load(dev)
        pb, ps = model.predict(big), model.predict(small)
        assert pb.streamed_bytes > 0 and ps.streamed_bytes == 0
        assert pb.rel_error == model.rel_error_streaming > ps.rel_error == model.rel_error_cached
        assert pb.rel_error > model.rel_error > ps.rel_error  # the overall figure stays on the model


class _ConvActConv(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.conv1, self.act, self.conv2 = nn.Conv2d(3, 16, 3), act, nn.Conv2d(16, 16, 3)

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


@pytest.mark.parametrize(("act", "first"), [(nn.GELU(), "Erf"), (nn.LeakyReLU(0.1), "LeakyRelu")])
def test_unsupported_op_and_everything_after_it_fall_back_to_the_cpu(tmp_path, act, first):
    f = et.features_of(_export(_ConvActConv(act), (1, 3, 32, 32), tmp_path / "m.onnx"))
    assert f.cpu_ops > 0 and f.first_cpu_op.startswith(first + ":")
    conv1, conv2 = 30 * 30 * 16 * 3 * 9, 28 * 28 * 16 * 16 * 9
    assert (f.tpu_macs, f.cpu_macs) == (conv1, conv2)  # the supported conv after the GELU runs on the CPU too
    assert f.cpu_layers >= 2 and f.tpu_output_bytes >= 30 * 30 * 16  # conv1's output goes back over USB
    model = et.EdgeTpuModel.load()
    est = model.predict(f)
    assert est.cpu_ops == f.cpu_ops and est.cpu_ms > 0
    # The uncertainty follows where the time goes: the CPU part carries the (larger) CPU-throughput error.
    share = est.cpu_ms / est.ms
    assert model.rel_error_cpu > model.rel_error_cached
    assert est.rel_error == pytest.approx(share * model.rel_error_cpu + (1 - share) * model.rel_error_cached)
    assert est.rel_error > model.rel_error_cached


def test_a_model_of_supported_ops_maps_entirely(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.Hardswish())
            self.pw = nn.Conv2d(32, 24, 1)
            self.head = nn.Linear(24, 10)

        def forward(self, x):
            x = self.stem(x)
            x = torch.cat([self.dw(x) * torch.sigmoid(x), nn.functional.max_pool2d(x, 3, 1, 1)], dim=1)
            x = nn.functional.adaptive_avg_pool2d(self.pw(x), 1).flatten(1)
            return torch.softmax(self.head(x), dim=1)

    f = et.features_of(_export(Net(), (1, 3, 32, 32), tmp_path / "ok.onnx"))
    assert f.cpu_ops == 0 and f.cpu_macs == 0 and f.first_cpu_op == "" and f.tpu_ops > 0
    assert f.macs == 16 * 16 * 16 * 27 + 16 * 16 * 16 * 9 + 16 * 16 * 24 * 32 + 24 * 10
    # int8 weights, int32 conv/FC biases (BN folds into the stem conv)
    assert f.param_bytes == (16 * 27 + 16 * 9 + 24 * 32 + 24 * 10) + 4 * (16 + 16 + 24 + 10)
    est = et.EdgeTpuModel.load().predict(f)
    assert est.cpu_ms == 0 and est.ms > 0 and math.isfinite(est.ms)


def test_constants_round_trip_and_unknown_device():
    m = et.EdgeTpuModel.load("dev_board")
    assert et.EdgeTpuModel.from_dict(m.to_dict()) == m and m.device == "dev_board"
    with pytest.raises(ValueError, match="unknown Edge TPU device"):
        et.EdgeTpuModel.load("pcie")
