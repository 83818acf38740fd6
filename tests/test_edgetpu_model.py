"""The analytic Edge TPU model: graph forms, hosts, clock, weight streaming, CPU fallback, shipped constants."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
from torch import nn

from nas.latency.onnx_export import export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ ships with the repo, not the package
from nas.predictors.edgetpu_model import (
    CONSTANTS_JSON,
    EdgeTpuModel,
    features_of,
    host_facts,
    known_clocks,
    known_hosts,
    node_costs,
)
from tools import edgetpu_calibration as ec

EXPORTERS = ["legacy", "dynamo"]


def _export(model: nn.Module, shape: tuple[int, ...], path: Path, exporter: str = "legacy") -> Path:
    return export_onnx(model.eval(), shape, path, exporter)


def _conv_macs(cin: int, cout: int, k: int, out_hw: int, groups: int = 1) -> int:
    return out_hw * out_hw * k * k * (cin // groups) * cout


@pytest.fixture(scope="module")
def mobilenetv2_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("edgetpu") / "mobilenetv2_100.onnx"
    return ec.export_onnx(ec.build_zoo_model("mobilenetv2_100"), 224, path)


def test_mobilenetv2_features_equal_the_shipped_row(mobilenetv2_onnx):
    # Exact: the counts follow from the architecture alone, so any difference is drift in timm / torch / onnx.
    assert features_of(mobilenetv2_onnx) == ec.read_features_csv()["mobilenetv2_100@224"]


# --- graph forms: MACs are counted through every form timm and both exporters produce ------------------------------


def test_computed_pad_nodes_do_not_stop_the_mac_count(tmp_path):
    # TF-"same" padding: legacy export computes the pads at run time (Shape -> Ceil -> ... -> Pad).
    tf = _export(timm.create_model("tf_efficientnet_em", pretrained=False), (1, 3, 64, 64), tmp_path / "tf.onnx")
    sym = _export(timm.create_model("efficientnet_em", pretrained=False), (1, 3, 64, 64), tmp_path / "pt.onnx")
    graph = onnx.load(str(tf)).graph
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    assert any(n.op_type == "Pad" and n.input[1] not in consts for n in graph.node)  # pads computed, not constant
    f_tf, f_sym = features_of(tf), features_of(sym)
    assert abs(f_tf.macs - f_sym.macs) <= 0.03 * f_sym.macs and f_sym.macs > 100e6
    assert f_tf.param_bytes == f_sym.param_bytes and f_tf.cpu_ops == 0
    model = EdgeTpuModel.load()
    assert model.predict(f_tf).ms == pytest.approx(model.predict(f_sym).ms, rel=0.1)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_constant_pad(tmp_path, exporter):
    net = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1))
    f = features_of(_export(net, (1, 3, 16, 16), tmp_path / "m.onnx", exporter))
    assert f.macs == _conv_macs(3, 8, 3, 8) + _conv_macs(8, 8, 3, 8) and f.cpu_ops == 0


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_clip_as_relu6_is_fused_and_counted_through(tmp_path, exporter):
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU6(), nn.Conv2d(16, 16, 3))
    f = features_of(_export(net, (1, 3, 16, 16), tmp_path / "m.onnx", exporter))
    assert f.macs == f.tpu_macs == _conv_macs(3, 16, 3, 14) + _conv_macs(16, 16, 3, 12)
    assert f.cpu_ops == 0 and f.layers == 2  # the Clip fuses into the conv: no layer of its own


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_hard_sigmoid_maps_and_hard_swish_falls_back(tmp_path, exporter):
    macs = _conv_macs(3, 16, 3, 14) + _conv_macs(16, 16, 3, 12)
    sig = features_of(_export(nn.Sequential(nn.Conv2d(3, 16, 3), nn.Hardsigmoid(), nn.Conv2d(16, 16, 3)),
                              (1, 3, 16, 16), tmp_path / "sig.onnx", exporter))
    assert sig.macs == sig.tpu_macs == macs and sig.cpu_ops == 0
    # TFLite HARD_SWISH is not in the compiler's table: it and everything after it run on the CPU.
    swish = features_of(_export(nn.Sequential(nn.Conv2d(3, 16, 3), nn.Hardswish(), nn.Conv2d(16, 16, 3)),
                                (1, 3, 16, 16), tmp_path / "hs.onnx", exporter))
    assert swish.macs == macs and swish.first_cpu_op.startswith("HardSwish:")
    assert (swish.tpu_macs, swish.cpu_macs) == (_conv_macs(3, 16, 3, 14), _conv_macs(16, 16, 3, 12))


class _SiluSe(nn.Module):
    """conv -> SiLU -> squeeze-excite (mean, 1x1 convs, sigmoid gate) -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3)
        self.reduce, self.expand = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x * torch.sigmoid(x)
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.conv2(x * gate)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mul_by_sigmoid_and_squeeze_excite_map(tmp_path, exporter):
    f = features_of(_export(_SiluSe(), (1, 3, 16, 16), tmp_path / "m.onnx", exporter))
    assert f.macs == f.tpu_macs == _conv_macs(3, 16, 3, 14) + 16 * 4 + 4 * 16 + _conv_macs(16, 16, 3, 12)
    assert f.cpu_ops == 0


@pytest.mark.parametrize(("act", "first"), [(nn.GELU(), "Erf"), (nn.LeakyReLU(0.1), "LeakyRelu")])
def test_unsupported_op_and_everything_after_it_fall_back_to_the_cpu(tmp_path, act, first):
    f = features_of(_export(nn.Sequential(nn.Conv2d(3, 16, 3), act, nn.Conv2d(16, 16, 3)), (1, 3, 32, 32),
                            tmp_path / "m.onnx"))
    assert f.cpu_ops > 0 and f.first_cpu_op.startswith(first + ":")
    assert (f.tpu_macs, f.cpu_macs) == (_conv_macs(3, 16, 3, 30), _conv_macs(16, 16, 3, 28))
    assert f.tpu_output_bytes >= 30 * 30 * 16  # conv1's output goes back over the host link
    model = EdgeTpuModel.load()
    est = model.predict(f)
    assert est.cpu_ops == f.cpu_ops and est.cpu_ms > 0
    share = est.cpu_ms / est.ms  # the CPU part carries the CPU-throughput term's error, weighted by its share
    assert est.rel_error == pytest.approx(share * model.rel_error_cpu + (1 - share) * model.rel_error_cached)


# --- hosts, clock, streaming ---------------------------------------------------------------------------------------


def test_unknown_host_or_clock_is_one_line_listing_the_known_ones():
    assert known_hosts() == ["desktop_usb3", "dev_board", "rpi4_usb3", "rpi4_usb2", "rpi3_usb2"]
    assert known_clocks() == ["std", "max"]
    with pytest.raises(ValueError) as e:
        EdgeTpuModel.load("jetson")
    msg = str(e.value)
    assert "\n" not in msg and "jetson" in msg and all(h in msg for h in known_hosts())
    with pytest.raises(ValueError, match="known clocks: std, max"):
        EdgeTpuModel.load("desktop_usb3", "turbo")


def test_each_host_states_what_it_rests_on():
    facts = host_facts()
    assert facts["desktop_usb3"].rows >= 20 and not facts["desktop_usb3"].too_few_rows
    assert facts["desktop_usb3"].warning() is None
    thin = [h for h, f in facts.items() if f.too_few_rows]
    assert thin and all(facts[h].rows < 8 or facts[h].architectures < 3 for h in thin)
    for h in thin:
        line = facts[h].warning()
        assert line and h in line and "\n" not in line
    for h, f in facts.items():
        assert f.rows > 0 and 0 < f.loao_error < 1 and EdgeTpuModel.load(h).facts == f


def test_std_clock_doubles_the_usb_compute_only(mobilenetv2_onnx):
    f = features_of(mobilenetv2_onnx)
    std, mx = EdgeTpuModel.load("desktop_usb3", "std").predict(f), EdgeTpuModel.load("desktop_usb3", "max").predict(f)
    assert std.compute_ms == pytest.approx(2 * mx.compute_ms) and std.io_ms == mx.io_ms > 0
    assert std.overhead_ms == mx.overhead_ms and std.ms > mx.ms
    # The runtime never throttles a Dev Board's Edge TPU.
    assert EdgeTpuModel.load("dev_board", "std").predict(f).ms == EdgeTpuModel.load("dev_board", "max").predict(f).ms
    assert abs(mx.ms - 2.6) / 2.6 <= 0.2  # Coral's Table 1: 2.6 ms (max clock)
    assert std.streaming_ms == 0 and std.ms == pytest.approx(std.overhead_ms + std.compute_ms + std.io_ms + std.cpu_ms)


def test_weights_beyond_the_on_chip_memory_stream_at_the_hosts_bandwidth(tmp_path):
    # Same MACs (4096 x 4096 = 64 x 512 x 512): 16.8 MB of int8 weights against 0.26 MB.
    big = features_of(_export(nn.Linear(4096, 4096), (1, 4096), tmp_path / "big.onnx"))
    small = features_of(_export(nn.Linear(512, 512), (1, 64, 512), tmp_path / "small.onnx"))
    assert big.macs == small.macs
    usb3, usb2 = EdgeTpuModel.load("desktop_usb3"), EdgeTpuModel.load("rpi3_usb2")
    assert big.param_bytes > usb3.cache_bytes > small.param_bytes
    b3, b2, s3, s2 = usb3.predict(big), usb2.predict(big), usb3.predict(small), usb2.predict(small)
    assert b3.streamed_bytes == big.param_bytes - usb3.cache_bytes and s3.streamed_bytes == 0
    assert b3.ms > 3 * s3.ms and b3.rel_error == usb3.rel_error_streaming
    assert b2.streaming_ms > 5 * b3.streaming_ms and b2.ms > 5 * b3.ms  # USB 2.0 streams ~10x slower than USB 3.0
    assert b2.ms - b3.ms > 20 * (s2.ms - s3.ms) > 0  # below the on-chip size the host matters much less


# --- the compiler's split on our own int8 TFLite files ------------------------------------------------------------


def test_fallback_split_on_a_converted_candidate_with_squeeze_excite(tmp_path):
    from nas.core.arch import Arch, Block
    from nas.latency.tflite_convert import to_tflite
    from nas.search_spaces.build import build_model

    arch = Arch(family="efficientnet", stem_size=16, num_features=64, act="swish", width=0.5, resolution=32,
                stages=((Block("ds", 1, 3, 1, 1, 16),), (Block("ir", 1, 7, 2, 4, 24, se=0.25),),
                        (Block("ir", 1, 5, 2, 4, 32, se=0.25, act="hard_swish"),)))
    model = build_model(arch, num_classes=10)
    shape = (1, 3, 32, 32)
    split = ec.tflite_split(to_tflite(model, shape, tmp_path / "m.tflite").path)
    mapped = split.ops[:split.tpu_ops]
    # Squeeze-excite (MEAN, 1x1 convs, LOGISTIC gate, MUL), SiLU and the 7x7 depthwise conv map ...
    assert {"MEAN", "LOGISTIC", "MUL", "DEPTHWISE_CONV_2D", "CONV_2D"} <= set(mapped)
    assert set(mapped) <= ec.EDGETPU_TFLITE_OPS
    # ... the first hard-swish does not: it and everything after it (the head included) run on the CPU.
    assert split.first_cpu_op == "HARD_SWISH" and "FULLY_CONNECTED" in split.ops[split.tpu_ops:]
    f = features_of(_export(model, shape, tmp_path / "m.onnx"))
    assert f.first_cpu_op.startswith("HardSwish:")
    conv_like = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    onnx_convs = sum(1 for c in node_costs(tmp_path / "m.onnx")[0] if c.op in ("Conv", "Gemm") and not c.on_cpu)
    assert onnx_convs == sum(op in conv_like for op in mapped)  # the split lands at the same layer
    desktop, pi3 = EdgeTpuModel.load("desktop_usb3").predict(f), EdgeTpuModel.load("rpi3_usb2").predict(f)
    assert desktop.cpu_ms > 0 and pi3.cpu_ms > 4 * desktop.cpu_ms  # the CPU part runs on the host's CPU


# --- the shipped constants ------------------------------------------------------------------------------------------


def test_refit_reproduces_the_shipped_constants():
    shipped = json.loads(CONSTANTS_JSON.read_text())
    refit = json.loads(json.dumps(ec.calibrate().constants))  # through JSON, as shipped (NaN included)

    def same(a, b, path=""):
        if isinstance(a, dict):
            assert a.keys() == b.keys(), path
            for k in a:
                same(a[k], b[k], f"{path}.{k}")
        elif isinstance(a, float) and math.isnan(a):
            assert isinstance(b, float) and math.isnan(b), path
        elif isinstance(a, float):
            assert b == pytest.approx(a, rel=1e-6, abs=1e-12), path
        else:
            assert a == b, path

    same(shipped, refit)
    assert ec.check_model_matches(shipped, ec.read_features_csv()) < 1e-9


def test_calibration_rows_carry_host_source_and_clock():
    rows = ec.calibration_rows()
    assert {r.host for r in rows} == set(known_hosts())
    assert {r.source for r in rows} == {"coral_table1", "coral_reference_csv", "fischer2023",
                                        "coral_models_page_copy", "hanchanghun2024_p95"}
    assert sorted({r.clock_mhz for r in rows}) == [62.5, 125.0, 250.0, 500.0]
    held_out = {r.arch for r in ec.validation_rows()}
    assert not held_out & {r.arch for r in rows}  # the check uses architectures the fit never saw
    y = np.array([r.ms for r in rows])
    assert np.all(y > 0)
