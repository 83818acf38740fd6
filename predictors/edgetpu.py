"""Analytic Edge TPU latency for any ONNX image classifier, calibrated on Coral's published benchmarks.

No Edge TPU is needed. From the ONNX graph we count int8 MACs, int8 parameter bytes, compute layers and the ops the
Edge TPU compiler would map (only up to the first unsupported op; everything after it runs on the host CPU). Then

    t = a + b * tpu_layers + c * tpu_array_macs + d * host_bytes + cpu_ms

tpu_array_macs are the mapped MACs with each conv/FC's per-tap input channels and its output channels rounded up to
ARRAY_TILE = 64 (the 4 TOPS = 2 TMAC/s peak is ~64 x 64 MAC lanes): a 3-channel stem or a depthwise conv, which
reduces over one channel, fills 1/64 of the array. host_bytes = parameters that do not fit the on-chip cache
(CACHE_BYTES; they stream over USB every inference) plus the input and the tensors the TPU hands back. cpu_ms = plain
fallback MACs / a CPU throughput taken from Coral's desktop-CPU column. a, b, c, d >= 0 are fitted by non-negative
least squares on the 7 rows of Coral's table with relative residuals (so the 2.4 ms and the 296 ms rows weigh alike),
one set per device column (``usb``, ``dev_board``).

Uncertainty: the leave-one-out median absolute percentage error (LOO MdAPE) ships with the constants, overall
(``rel_error``) and split by whether a calibration model's parameters fit the cache: ``rel_error_cached`` (the 4
small models) and ``rel_error_streaming`` (the 3 whose parameters stream). A prediction's ``rel_error`` is the
streaming figure when it streams parameters, the cached one otherwise; the part predicted for ops that fall back to
the host CPU carries the LOO error of the CPU-throughput term instead (``rel_error_cpu``, over Coral's desktop-CPU
column), weighted by its share of the predicted time. The cache size and ARRAY_TILE were chosen by
LOO error on the same 7 rows, so these LOO figures are optimistic; benchmarks/edgetpu_calibration.py also prints a
nested LOO (settings chosen on the 6 training rows of each fold) and writes it to the constants JSON (``nested_loo``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from scipy.optimize import nnls
from scipy.stats import spearmanr

DATA_DIR = Path(__file__).parent / "data"
CORAL_CSV = DATA_DIR / "coral_edgetpu_benchmarks.csv"
FEATURES_CSV = DATA_DIR / "edgetpu_features.csv"
TILE_MACS_CSV = DATA_DIR / "edgetpu_tile_macs.csv"  # tpu_array_macs of each calibration model at every tile
CONSTANTS_JSON = DATA_DIR / "edgetpu_constants.json"
CORAL_SOURCE = 'Coral documentation, "Edge TPU performance benchmarks", Table 1 (coral.ai/docs/edgetpu/benchmarks)'

MIB = 1 << 20
# Candidate on-chip parameter caches. The chip has 8 MB of SRAM, but edgetpu_compiler reports ~6.9-7.9 MiB usable for
# caching parameters (the rest holds activations and instructions); the calibration picks one by leave-one-out error.
CACHE_CANDIDATES: tuple[int, ...] = (int(6.9 * MIB), int(7.5 * MIB), 8 * MIB)
DEVICES: dict[str, str] = {"usb": "usb_accelerator_ms", "dev_board": "dev_board_ms"}
PEAK_MACS_PER_MS = 2e9  # 4 TOPS int8 = 2 TMAC/s, for comparing the fitted c (not enforced)
# Channel tile of the compute term. Plain MACs leave MobileNetV2 (0.30 GMAC, 2.6 ms) slower than MobileNetV1
# (0.57 GMAC, 2.4 ms) unexplained; padding channels to the array width explains it. benchmarks/edgetpu_calibration.py
# prints the LOO error for tiles 1..128 (64 is best there, so that figure is chosen on the same 7 rows) and a nested
# LOO that chooses tile and cache inside each fold: 6 of its 7 folds choose 64 (inception_v1's held-out fold: 32).
ARRAY_TILE = 64
TILE_CANDIDATES: tuple[int, ...] = (1, 8, 16, 32, 64, 128)

# ONNX ops the Edge TPU compiler maps, from Coral's table in "TensorFlow models on the Edge TPU", section "Supported
# operations" (coral.ai/docs/edgetpu/models-intro/#supported-operations), translated to the ONNX ops that the TFLite
# converter turns into them: Conv/ConvTranspose -> Conv2d, DepthwiseConv2d, TransposeConv; Gemm (and MatMul with a
# constant operand, checked per node) -> FullyConnected; GlobalAveragePool/ReduceMean -> Mean; Clip -> Relu6;
# HardSigmoid -> Relu6 arithmetic; BatchNormalization folds into the conv or into Mul/Add; LpNormalization ->
# L2Normalization. HardSwish counts as mapped, though google-coral/edgetpu#272 saw compiler 15 run it on the CPU.
# Not mapped, so they start the CPU part: LeakyRelu (maintainers in google-coral/edgetpu#597: use PReLU), Erf/Gelu,
# Div by a tensor, Exp, Log, Pow, Sqrt, LayerNormalization, Einsum, Gather, TopK, NonMaxSuppression, any custom domain.
EDGETPU_OPS: frozenset[str] = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum",
    "Relu", "Clip", "PRelu", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Softmax",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax",
    "ReduceMin", "LpNormalization", "BatchNormalization", "Concat", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Transpose", "Pad", "Resize", "Upsample", "Slice", "Split", "SpaceToDepth", "Identity", "Dropout",
})
# Mapped ops that cost no layer: ReLU/ReLU6 fuse into the producing conv/FC/add in TFLite; the rest are layout no-ops.
FREE_OPS: frozenset[str] = frozenset({"Relu", "Clip", "Identity", "Dropout", "Reshape", "Flatten", "Squeeze",
                                      "Unsqueeze"})
# Outputs are shape metadata, not activations: whatever consumes only them is shape plumbing.
_META_OPS = frozenset({"Shape", "Size"})
# Parameter inputs (by index) and their int8-model bytes per element; biases are int32.
_PARAM_INPUTS: dict[str, dict[int, int]] = {
    "Conv": {1: 1, 2: 4}, "ConvTranspose": {1: 1, 2: 4}, "Gemm": {0: 1, 1: 1, 2: 4}, "MatMul": {0: 1, 1: 1},
    "PRelu": {1: 1}, "BatchNormalization": {1: 1, 2: 1},
}
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"})


@dataclass(frozen=True)
class EdgeTpuFeatures:
    """What the latency model needs from a graph (batch 1; unknown dims count as 1)."""

    macs: int  # Conv (incl. depthwise/grouped), ConvTranspose, Gemm, MatMul
    tpu_macs: int
    tpu_array_macs: int  # tpu_macs with channels padded to ARRAY_TILE: the compute term
    cpu_macs: int
    param_bytes: int  # int8 weights, int32 Conv/Gemm biases
    tpu_param_bytes: int  # those of the mapped part: the only ones that compete for the on-chip cache
    layers: int  # data ops other than FREE_OPS (see module constants)
    tpu_layers: int
    cpu_layers: int
    tpu_ops: int  # data ops (FREE_OPS included, shape plumbing excluded) mapped to the Edge TPU
    cpu_ops: int  # data ops from the first unsupported one on
    input_bytes: int
    output_bytes: int
    tpu_output_bytes: int  # what crosses back from the TPU: its graph outputs plus tensors handed to the CPU part
    first_cpu_op: str = ""  # "OpType:node_name" of the first unsupported op, "" when all maps

    def to_row(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, str]) -> EdgeTpuFeatures:
        return cls(**{f.name: (row.get(f.name) or "") if f.type == "str" else int(row[f.name]) for f in fields(cls)})


@dataclass(frozen=True)
class EdgeTpuEstimate:
    ms: float
    overhead_ms: float  # a + b * tpu_layers
    compute_ms: float  # c * tpu_array_macs
    streaming_ms: float  # d * host_bytes (uncached parameters + input + output over USB)
    cpu_ms: float  # fallback MACs on the host CPU
    # Leave-one-out MdAPE (a fraction) of each part, weighted by its share of ``ms``: the Edge TPU part takes that of
    # the calibration models in its cache regime (rel_error_streaming or rel_error_cached), the CPU part rel_error_cpu.
    rel_error: float
    tpu_ops: int
    cpu_ops: int
    macs: int
    param_bytes: int
    cached_bytes: int
    streamed_bytes: int


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shape of every tensor the inference knows; symbolic or unknown dims become 1 (batch 1)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                                    for d in t.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(attr.t.dims)
    return shapes


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


class NodeCost(NamedTuple):
    """One data op of the graph (shape plumbing left out), in graph (topological) order."""

    op: str
    name: str
    macs: int
    array_macs: int  # macs with channels padded to the tile
    param_bytes: int
    is_layer: bool
    on_cpu: bool  # at or after the first op the Edge TPU compiler cannot map


def node_costs(model: onnx.ModelProto | str | Path, tile: int = ARRAY_TILE) -> tuple[list[NodeCost], dict[str, int]]:
    """Per data op costs, and the input / output / TPU-to-host int8 bytes (keys ``input``, ``output``, ``tpu_out``)."""
    proto = onnx.shape_inference.infer_shapes(_load(model), data_prop=True)
    g = proto.graph
    shapes = _shapes(proto)
    const = {i.name for i in g.initializer}
    # Activation tensors descend from the graph inputs; nodes that touch none of them are shape plumbing.
    act = {i.name for i in g.input if i.name not in const}
    on_cpu = False
    placed: dict[str, bool] = {}  # activation tensor -> produced on the CPU
    tpu_out: set[str] = set()
    costs: list[NodeCost] = []

    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise ValueError(f"no static shape for tensor {name!r}: run onnx shape inference on a static-shape model")
        return shapes[name]

    for node in g.node:
        ins = [i for i in node.input if i]
        if node.op_type in _META_OPS or not any(i in act for i in ins):
            continue  # Constant, Shape -> Gather -> Concat chains, Identity of weights: plumbing
        data_ins = [i for i in ins if i in act]
        outs = [o for o in node.output if o]
        act.update(outs)
        # The compiler maps one graph prefix: the first unsupported op and everything after it run on the CPU.
        on_cpu = on_cpu or not _maps(node, data_ins)
        if on_cpu:  # tensors crossing from the TPU part to the CPU part go back over USB
            tpu_out.update(i for i in data_ins if placed.get(i) is False)
        placed.update(dict.fromkeys(outs, on_cpu))
        # Parameters by consumer input, not by initializer: the exporter merges identical initializers (e.g. the
        # zero biases of BN-folded random-init convs), which a trained model would not have.
        params = sum(_numel(shape(node.input[i])) * nbytes for i, nbytes in _PARAM_INPUTS.get(node.op_type, {}).items()
                     if i < len(node.input) and node.input[i] and node.input[i] not in act)
        if node.op_type in _ELEMENTWISE:
            params += sum(_numel(shape(i)) for i in ins if i not in act)
        macs, array_macs = _macs(node, shape, tile)
        costs.append(NodeCost(node.op_type, node.name, macs, array_macs, params, node.op_type not in FREE_OPS,
                              on_cpu))
    outputs = [o.name for o in g.output]
    tpu_out.update(o for o in outputs if placed.get(o) is False)
    io = {"input": sum(_numel(shape(i.name)) for i in g.input if i.name not in const),
          "output": sum(_numel(shape(o)) for o in outputs), "tpu_out": sum(_numel(shape(o)) for o in tpu_out)}
    return costs, io


def features_of(model: onnx.ModelProto | str | Path, tile: int = ARRAY_TILE) -> EdgeTpuFeatures:
    """Features of an ONNX graph at batch 1, with the Edge TPU / CPU split the compiler would make."""
    costs, io = node_costs(model, tile)
    tpu = [c for c in costs if not c.on_cpu]
    cpu = [c for c in costs if c.on_cpu]
    return EdgeTpuFeatures(
        macs=sum(c.macs for c in costs), tpu_macs=sum(c.macs for c in tpu),
        tpu_array_macs=sum(c.array_macs for c in tpu), cpu_macs=sum(c.macs for c in cpu),
        param_bytes=sum(c.param_bytes for c in costs), tpu_param_bytes=sum(c.param_bytes for c in tpu),
        layers=sum(c.is_layer for c in costs), tpu_layers=sum(c.is_layer for c in tpu),
        cpu_layers=sum(c.is_layer for c in cpu), tpu_ops=len(tpu), cpu_ops=len(cpu), input_bytes=io["input"],
        output_bytes=io["output"], tpu_output_bytes=io["tpu_out"],
        first_cpu_op=f"{cpu[0].op}:{cpu[0].name}" if cpu else "",
    )


def _maps(node: onnx.NodeProto, data_ins: list[str]) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type not in EDGETPU_OPS:
        return False
    if node.op_type == "MatMul":  # activation x activation is BatchMatMul, not in Coral's table
        return len(data_ins) == 1
    if node.op_type == "Div":  # the converter turns division by a constant into Mul; TFLite DIV does not map
        return node.input[1] not in data_ins
    return True


def _macs(node: onnx.NodeProto, shape: Callable[[str], tuple[int, ...]], tile: int) -> tuple[int, int]:
    """(MACs, array MACs): rows x taps x reduction channels x output channels, the latter two padded to ``tile``."""
    op = node.op_type

    def pad(n: int) -> int:
        return -(-n // tile) * tile

    if op in ("Conv", "ConvTranspose"):
        w = shape(node.input[1])  # Conv (Cout, Cin/g, k...); ConvTranspose (Cin, Cout/g, k...)
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if op == "Conv":
            out = shape(node.output[0])
            rows, cin_g, cout = _numel(out[2:]), w[1], w[0]
        else:
            rows, cin_g, cout = _numel(shape(node.input[0])[2:]), w[0] // groups, w[1] * groups
        taps = _numel(w[2:])
        return rows * taps * cin_g * cout, rows * taps * pad(cin_g) * pad(cout)
    if op in ("Gemm", "MatMul"):
        out = shape(node.output[0])
        if op == "Gemm":
            b = shape(node.input[1])
            k = b[1] if next((a.i for a in node.attribute if a.name == "transB"), 0) else b[0]
        else:  # counted either way; activation x activation falls back, so its MACs land in cpu_macs
            k = shape(node.input[0])[-1]
        rows, n = _numel(out[:-1]), out[-1]
        return rows * k * n, rows * pad(k) * pad(n)
    return 0, 0


# --- the latency model -------------------------------------------------------------------------------------------

COMPUTE_FEATURES = ("array", "macs")  # c multiplies tpu_array_macs (shipped) or plain tpu_macs (for comparison)


def host_bytes(f: EdgeTpuFeatures, cache_bytes: int) -> int:
    """Bytes crossing USB per inference: uncached parameters, the input, and what the TPU sends back."""
    if f.tpu_ops == 0:
        return 0
    return max(0, f.tpu_param_bytes - cache_bytes) + f.input_bytes + f.tpu_output_bytes


def _compute_macs(f: EdgeTpuFeatures, compute: str) -> int:
    return f.tpu_array_macs if compute == "array" else f.tpu_macs


@dataclass(frozen=True)
class EdgeTpuModel:
    """Constants of one device column: a ms, b ms per layer, c ms per (array) MAC, d ms per host byte."""

    a: float
    b: float
    c: float
    d: float
    cache_bytes: int
    cpu_macs_per_ms: float
    compute: str = "array"
    rel_error: float = float("nan")  # LOO MdAPE as a fraction, all calibration rows
    spearman: float = float("nan")  # LOO Spearman
    device: str = "usb"
    rel_error_cached: float = float("nan")  # LOO MdAPE over the rows whose mapped parameters fit cache_bytes
    rel_error_streaming: float = float("nan")  # LOO MdAPE over the rows whose mapped parameters overflow it
    rel_error_cpu: float = float("nan")  # LOO MdAPE of cpu_macs_per_ms on Coral's desktop-CPU column (fallback ops)

    def rel_error_for(self, streamed_bytes: int) -> float:
        """The LOO MdAPE of the calibration rows in the same cache regime (the overall one where that is unknown)."""
        e = self.rel_error_streaming if streamed_bytes > 0 else self.rel_error_cached
        return self.rel_error if math.isnan(e) else e

    def predict(self, features: EdgeTpuFeatures) -> EdgeTpuEstimate:
        f = features
        overhead = (self.a + self.b * f.tpu_layers) if f.tpu_ops else 0.0  # nothing mapped: no TPU invocation
        compute = self.c * _compute_macs(f, self.compute)
        streaming = self.d * host_bytes(f, self.cache_bytes)
        cpu = f.cpu_macs / self.cpu_macs_per_ms
        cached = min(f.tpu_param_bytes, self.cache_bytes)
        streamed = f.tpu_param_bytes - cached
        ms = overhead + compute + streaming + cpu
        tpu_error = self.rel_error_for(streamed)
        cpu_error = tpu_error if math.isnan(self.rel_error_cpu) else self.rel_error_cpu
        # A ViT spends most of its time in CPU fallback: the TPU regime's small error must not speak for that part.
        rel_error = ((ms - cpu) * tpu_error + cpu * cpu_error) / ms if cpu > 0 else tpu_error
        return EdgeTpuEstimate(
            ms=ms, overhead_ms=overhead, compute_ms=compute, streaming_ms=streaming,
            cpu_ms=cpu, rel_error=rel_error, tpu_ops=f.tpu_ops, cpu_ops=f.cpu_ops, macs=f.macs,
            param_bytes=f.param_bytes, cached_bytes=cached, streamed_bytes=streamed,
        )

    @classmethod
    def fit(cls, rows: Sequence[tuple[EdgeTpuFeatures, float]], *, cache_bytes: int, cpu_macs_per_ms: float,
            compute: str = "array", relative: bool = True, device: str = "usb", loo: bool = True) -> EdgeTpuModel:
        """NNLS fit on (features, measured ms) rows; with ``loo`` also the leave-one-out MdAPE (overall, and over
        the rows whose parameters fit / overflow ``cache_bytes``) and Spearman."""
        if compute not in COMPUTE_FEATURES:
            raise ValueError(f"compute must be one of {COMPUTE_FEATURES}, not {compute!r}")
        feats = [f for f, _ in rows]
        y = np.array([t for _, t in rows], dtype=float)
        cpu = np.array([f.cpu_macs / cpu_macs_per_ms for f in feats])
        x = np.array([[1.0, f.tpu_layers, _compute_macs(f, compute), host_bytes(f, cache_bytes)] for f in feats])
        # Relative residuals: divide each row by its measured time so every model counts, not just VGG16.
        w = 1.0 / y if relative else np.ones_like(y)
        scale = np.maximum(np.abs(x).max(axis=0), 1e-30)  # columns span 1 .. 1e10: scale for a well-posed NNLS
        coef, _ = nnls((x / scale) * w[:, None], (y - cpu) * w)
        a, b, c, d = (coef / scale).tolist()
        kw = {"cache_bytes": cache_bytes, "cpu_macs_per_ms": cpu_macs_per_ms, "compute": compute, "device": device}
        if not loo:
            return cls(a, b, c, d, **kw)
        pred = loo_predictions(rows, cache_bytes=cache_bytes, cpu_macs_per_ms=cpu_macs_per_ms, compute=compute,
                               relative=relative)
        streams = np.array([f.tpu_param_bytes > cache_bytes for f in feats])
        return cls(a, b, c, d, rel_error=mdape(pred, y), spearman=float(spearmanr(y, pred)[0]),
                   rel_error_cached=mdape(pred[~streams], y[~streams]),
                   rel_error_streaming=mdape(pred[streams], y[streams]), **kw)

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EdgeTpuModel:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @classmethod
    def load(cls, device: str = "usb", path: str | Path = CONSTANTS_JSON) -> EdgeTpuModel:
        """The shipped constants of one device column (``usb`` or ``dev_board``)."""
        data = json.loads(Path(path).read_text())
        if device not in data["devices"]:
            raise ValueError(f"unknown Edge TPU device {device!r}; choose from {sorted(data['devices'])}")
        return cls.from_dict(data["devices"][device])


def loo_predictions(rows: Sequence[tuple[EdgeTpuFeatures, float]], **fit_kw) -> np.ndarray:
    """Prediction for each row from constants fitted on all the other rows (``fit_kw`` as for ``fit``)."""
    out = []
    for i in range(len(rows)):
        m = EdgeTpuModel.fit([r for j, r in enumerate(rows) if j != i], loo=False, **fit_kw)
        out.append(m.predict(rows[i][0]).ms)
    return np.array(out)


def mdape(pred: Iterable[float], measured: Iterable[float]) -> float:
    """Median absolute percentage error, as a fraction (NaN for no rows)."""
    p, y = np.asarray(list(pred), float), np.asarray(list(measured), float)
    return float(np.median(np.abs(p - y) / y)) if len(y) else float("nan")


def predict_onnx(model: onnx.ModelProto | str | Path, device: str = "usb") -> EdgeTpuEstimate:
    """Edge TPU latency estimate of an ONNX graph with the shipped constants."""
    return EdgeTpuModel.load(device).predict(features_of(model))


# --- calibration data ---------------------------------------------------------------------------------------------


def read_coral_csv(path: str | Path = CORAL_CSV) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def read_features_csv(path: str | Path = FEATURES_CSV) -> dict[str, EdgeTpuFeatures]:
    with open(path, newline="") as fh:
        return {row["model"]: EdgeTpuFeatures.from_row(row) for row in csv.DictReader(fh)}


def write_features_csv(features: dict[str, EdgeTpuFeatures], path: str | Path = FEATURES_CSV) -> None:
    names = ["model", *(f.name for f in fields(EdgeTpuFeatures))]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=names, lineterminator="\n")
        w.writeheader()
        for model, f in features.items():
            w.writerow({"model": model, **f.to_row()})


def read_tile_macs_csv(path: str | Path = TILE_MACS_CSV) -> dict[str, dict[int, int]]:
    """model -> {tile: tpu_array_macs at that tile} (columns ``tpu_array_macs_t<tile>``)."""
    with open(path, newline="") as fh:
        return {row["model"]: {int(k.removeprefix("tpu_array_macs_t")): int(v) for k, v in row.items()
                               if k.startswith("tpu_array_macs_t")} for row in csv.DictReader(fh)}


def write_tile_macs_csv(tile_macs: Mapping[str, Mapping[int, int]], path: str | Path = TILE_MACS_CSV) -> None:
    tiles = sorted({t for by_tile in tile_macs.values() for t in by_tile})
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["model", *(f"tpu_array_macs_t{t}" for t in tiles)])
        for model, by_tile in tile_macs.items():
            w.writerow([model, *(by_tile[t] for t in tiles)])


def at_tile(features: EdgeTpuFeatures, tile_macs: Mapping[int, int], tile: int) -> EdgeTpuFeatures:
    """The features with the compute term at another tile (only tpu_array_macs depends on the tile)."""
    return replace(features, tpu_array_macs=tile_macs[tile])


def cpu_macs_per_ms(coral: Sequence[dict[str, str]], features: Mapping[str, EdgeTpuFeatures]) -> float:
    """Host CPU throughput for fallback ops: the median MACs/ms over the desktop-CPU column. The median shrugs off
    efficientnet_edgetpu_s's 5431 ms (~50x what its MACs suggest). Coral gives no Dev Board CPU column, so the
    dev_board constants reuse it (the board's Cortex-A53 is slower: its cpu_ms is a lower bound)."""
    return float(np.median([features[r["model"]].macs / float(r["desktop_cpu_ms"]) for r in coral]))


def cpu_loo_error(coral: Sequence[dict[str, str]], features: Mapping[str, EdgeTpuFeatures]) -> float:
    """LOO MdAPE of the CPU-fallback term: each desktop-CPU time predicted from the other rows' median throughput."""
    pred, measured = [], []
    for i, held in enumerate(coral):
        throughput = cpu_macs_per_ms([r for j, r in enumerate(coral) if j != i], features)
        pred.append(features[held["model"]].macs / throughput)
        measured.append(float(held["desktop_cpu_ms"]))
    return mdape(pred, measured)


def calibrate(features: dict[str, EdgeTpuFeatures] | None = None, coral: list[dict[str, str]] | None = None,
              cache_candidates: Sequence[int] = CACHE_CANDIDATES, compute: str = "array",
              relative: bool = True) -> dict:
    """Constants for every device column, with the cache size of least leave-one-out MdAPE on the usb column
    (ties: least LOO mean APE). Deterministic, so refitting the shipped CSVs reproduces the shipped JSON."""
    features = read_features_csv() if features is None else features
    coral = read_coral_csv() if coral is None else coral
    cpu = cpu_macs_per_ms(coral, features)
    kw = {"cpu_macs_per_ms": cpu, "compute": compute, "relative": relative}

    def rows(col: str) -> list[tuple[EdgeTpuFeatures, float]]:
        return [(features[r["model"]], float(r[col])) for r in coral]

    cache = min(cache_candidates, key=lambda c: loo_score(rows(DEVICES["usb"]), cache_bytes=c, **kw))
    cpu_error = cpu_loo_error(coral, features)
    devices = {dev: replace(EdgeTpuModel.fit(rows(col), cache_bytes=cache, device=dev, **kw),
                            rel_error_cpu=cpu_error).to_dict() for dev, col in DEVICES.items()}
    return {"source": CORAL_SOURCE, "cache_bytes": cache, "cache_candidates": list(cache_candidates),
            "array_tile": ARRAY_TILE, "cpu_macs_per_ms": cpu, "relative_fit": relative, "devices": devices}


def loo_score(rows: Sequence[tuple[EdgeTpuFeatures, float]], **fit_kw) -> tuple[float, float]:
    """(LOO MdAPE, LOO mean APE): the selection key for cache size and tile, least first."""
    y = np.array([t for _, t in rows])
    ape = np.abs(loo_predictions(rows, **fit_kw) - y) / y
    return float(np.median(ape)), float(np.mean(ape))


def select_settings(features: Mapping[str, EdgeTpuFeatures], tile_macs: Mapping[str, Mapping[int, int]],
                    coral: Sequence[dict[str, str]], *, tiles: Sequence[int] = TILE_CANDIDATES,
                    cache_candidates: Sequence[int] = CACHE_CANDIDATES, select_device: str = "usb",
                    compute: str = "array", relative: bool = True) -> tuple[int, int, tuple[float, float]]:
    """(tile, cache_bytes, score) of least LOO MdAPE (ties: least LOO mean APE, then the first candidate) on the
    ``select_device`` column of ``coral``'s rows, over every tile x cache pair."""
    cpu = cpu_macs_per_ms(list(coral), dict(features))
    col = DEVICES[select_device]
    scored = []
    for tile in tiles:
        rows = [(at_tile(features[r["model"]], tile_macs[r["model"]], tile), float(r[col])) for r in coral]
        for cache in cache_candidates:
            scored.append((loo_score(rows, cache_bytes=cache, cpu_macs_per_ms=cpu, compute=compute,
                                     relative=relative), tile, cache))
    score, tile, cache = min(scored, key=lambda s: s[0])  # min keeps the first of equal keys
    return tile, cache, score


def nested_loo(features: Mapping[str, EdgeTpuFeatures], tile_macs: Mapping[str, Mapping[int, int]],
               coral: Sequence[dict[str, str]] | None = None, *, select_device: str = "usb",
               **select_kw) -> dict:
    """Nested leave-one-out: for each held-out row, choose tile and cache size by the LOO error on the other rows
    (``select_settings``), fit every device column on those rows with that choice (the CPU throughput too), and
    predict the held-out row. Returns ``folds`` (per held-out model: the choice, its inner score, the predictions)
    and per device the nested ``mdape``, ``spearman``, ``pred`` and the MdAPE over the held-out rows whose parameters
    fit (``mdape_cached``) or overflow (``mdape_streaming``) the cache their fold chose."""
    coral = read_coral_csv() if coral is None else list(coral)
    folds = []
    for i, held in enumerate(coral):
        train = [r for j, r in enumerate(coral) if j != i]
        tile, cache, score = select_settings(features, tile_macs, train, select_device=select_device, **select_kw)
        cpu = cpu_macs_per_ms(train, dict(features))
        fit_kw = {k: v for k, v in select_kw.items() if k in ("compute", "relative")}
        pred = {}
        for dev, col in DEVICES.items():
            rows = [(at_tile(features[r["model"]], tile_macs[r["model"]], tile), float(r[col])) for r in train]
            m = EdgeTpuModel.fit(rows, cache_bytes=cache, cpu_macs_per_ms=cpu, device=dev, loo=False, **fit_kw)
            pred[dev] = m.predict(at_tile(features[held["model"]], tile_macs[held["model"]], tile)).ms
        folds.append({"model": held["model"], "tile": tile, "cache_bytes": cache, "inner_mdape": score[0],
                      "streams": features[held["model"]].tpu_param_bytes > cache, "pred_ms": pred})
    out: dict = {"select_device": select_device, "folds": folds}
    streams = np.array([f["streams"] for f in folds])
    for dev, col in DEVICES.items():
        y = np.array([float(r[col]) for r in coral])
        p = np.array([f["pred_ms"][dev] for f in folds])
        out[dev] = {"mdape": mdape(p, y), "spearman": float(spearmanr(y, p)[0]),
                    "mdape_cached": mdape(p[~streams], y[~streams]),
                    "mdape_streaming": mdape(p[streams], y[streams]), "pred": p.tolist()}
    return out


# --- calibration models -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationModel:
    library: str  # "timm" or "torchvision"
    name: str
    kwargs: tuple[tuple[str, object], ...] = ()


# Coral table name -> a same-architecture model built here (random weights, 1000 classes).
CALIBRATION_MODELS: dict[str, CalibrationModel] = {
    "mobilenet_v1_1.0": CalibrationModel("timm", "mobilenetv1_100"),
    "mobilenet_v2_1.0": CalibrationModel("timm", "mobilenetv2_100"),
    "efficientnet_edgetpu_s": CalibrationModel("timm", "efficientnet_es"),
    "inception_v1": CalibrationModel("torchvision", "googlenet", (("aux_logits", False), ("init_weights", False))),
    "resnet50_v1": CalibrationModel("timm", "resnet50"),
    "vgg16": CalibrationModel("torchvision", "vgg16"),
    "inception_resnet_v2": CalibrationModel("timm", "inception_resnet_v2"),
}


def build_calibration_model(key: str):
    """The torch module for a Coral table row, random weights, eval mode (never downloads weights)."""
    spec = CALIBRATION_MODELS[key]
    if spec.library == "timm":
        import timm

        model = timm.create_model(spec.name, pretrained=False, num_classes=1000, **dict(spec.kwargs))
    else:
        import torchvision

        model = getattr(torchvision.models, spec.name)(weights=None, num_classes=1000, **dict(spec.kwargs))
    return model.eval()


def export_onnx(model, input_size: int, path: str | Path) -> Path:
    """Legacy (TorchScript) export at batch 1, opset 17, as the calibration features were made."""
    import warnings

    import torch

    x = torch.randn(1, 3, input_size, input_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"])
    return Path(path)

