"""Analytic Edge TPU latency of any ONNX image classifier: graph features and the calibrated prediction.

This is the part the search calls (no Edge TPU, no network, a fraction of a second per graph). The calibration
tooling that fits the constants lives in the repo's ``tools/edgetpu_calibration.py``; the fitted constants ship in
``data/edgetpu_constants.json``.

From the ONNX graph (shape plumbing folded to constants first, so TF-"same" padding's computed ``Pad`` nodes are
understood) we count int8 MACs, parameter bytes and layers, and split the graph where the Edge TPU compiler would:
the first op it cannot map and everything after it run on the host CPU. Then, for a host ``h`` and clock ``f``:

    t = overhead_h + (f_ref / f) * (c * tpu_array_macs + b * tpu_layers)          (Edge TPU compute)
        + link_bytes / bandwidth_link(h) + e_link(h) * tpu_layers                  (host link: weights, I/O, code)
        + cpu_macs / cpu_throughput_h                                             (fallback ops on the host CPU)

``link_bytes`` are the int8 parameters beyond the on-chip memory (streamed on every inference), the input and what
the Edge TPU hands back. ``tpu_array_macs`` pad each conv/FC's per-tap input and output channels to the 64-wide MAC
array, so a depthwise conv or a 3-channel stem costs what it occupies. Coral's published timings are at the maximum
clock (500 MHz); the standard runtime (libedgetpu1-std) runs a USB Accelerator at 250 MHz, which doubles the compute
term only (libedgetpu's throttled build sets the Edge TPU clock, not the USB or memory clocks).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx

DATA_DIR = Path(__file__).parent / "data"
CONSTANTS_JSON = DATA_DIR / "edgetpu_constants.json"

ARRAY_TILE = 64  # channel tile of the compute term (4 TOPS int8 ~ a 64 x 64 MAC array)
MIN_ROWS = 8  # a host calibrated on fewer published rows (or fewer than 3 architectures) is flagged
MIN_ARCHITECTURES = 3

# ONNX ops whose TFLite counterparts the Edge TPU compiler maps (Coral, "TensorFlow models on the Edge TPU",
# supported operations; compiler 16). Not here, so they start the CPU part: HardSwish (TFLite HARD_SWISH is not in
# the table; google-coral/edgetpu#272 and #353: it runs on the CPU), LeakyRelu (#597: use PReLU), Erf/Gelu, Exp,
# Log, Pow, Sqrt, Div by a tensor, LayerNormalization, Einsum, Gather, TopK, any custom domain. HardSigmoid becomes
# a fused RELU6 plus a MUL and SiLU becomes LOGISTIC plus MUL in our int8 TFLite files: both map.
EDGETPU_OPS: frozenset[str] = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum",
    "Relu", "Clip", "PRelu", "HardSigmoid", "Sigmoid", "Tanh", "Softmax",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax",
    "ReduceMin", "LpNormalization", "BatchNormalization", "Concat", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Transpose", "Pad", "Resize", "Upsample", "Slice", "Split", "SpaceToDepth", "Identity", "Dropout",
})
# Mapped ops that cost no layer: ReLU/ReLU6 (Clip) fuse into the producing conv/FC/add; the rest are layout no-ops.
FREE_OPS: frozenset[str] = frozenset({"Relu", "Clip", "Identity", "Dropout", "Reshape", "Flatten", "Squeeze",
                                      "Unsqueeze"})
_META_OPS = frozenset({"Shape", "Size"})  # outputs are shape metadata: never activations
# Parameter inputs (by index) and their int8-model bytes per element; biases are int32.
_PARAM_INPUTS: dict[str, dict[int, int]] = {
    "Conv": {1: 1, 2: 4}, "ConvTranspose": {1: 1, 2: 4}, "Gemm": {0: 1, 1: 1, 2: 4}, "MatMul": {0: 1, 1: 1},
    "PRelu": {1: 1}, "BatchNormalization": {1: 1, 2: 1},
}
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"})
_FOLD_MAX_ELEMENTS = 1 << 16  # shape plumbing is small; weights are never evaluated
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                               "Multinomial", "Bernoulli"})


# --- graph features ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeTpuFeatures:
    """What the latency model needs from a graph (batch 1)."""

    macs: int  # Conv (incl. depthwise/grouped), ConvTranspose, Gemm, MatMul
    tpu_macs: int
    tpu_array_macs: int  # tpu_macs with channels padded to ARRAY_TILE: the compute term
    cpu_macs: int
    param_bytes: int  # int8 weights, int32 Conv/Gemm biases
    tpu_param_bytes: int  # those of the mapped part: the only ones that compete for the on-chip memory
    layers: int  # data ops other than FREE_OPS
    tpu_layers: int
    cpu_layers: int
    tpu_ops: int  # data ops (FREE_OPS included, shape plumbing excluded) mapped to the Edge TPU
    cpu_ops: int  # data ops from the first unsupported one on
    input_bytes: int
    output_bytes: int
    tpu_output_bytes: int  # what crosses back from the Edge TPU: its graph outputs plus tensors the CPU part reads
    first_cpu_op: str = ""  # "OpType:node_name" of the first unsupported op, "" when all maps

    def to_row(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, str]) -> EdgeTpuFeatures:
        return cls(**{f.name: (row.get(f.name) or "") if f.type == "str" else int(row[f.name]) for f in fields(cls)})


class NodeCost(NamedTuple):
    """One data op of the graph (shape plumbing left out), in graph (topological) order."""

    op: str
    name: str
    macs: int
    array_macs: int  # macs with channels padded to the tile
    param_bytes: int
    is_layer: bool
    on_cpu: bool  # at or after the first op the Edge TPU compiler cannot map


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


def node_costs(model: onnx.ModelProto | str | Path, tile: int = ARRAY_TILE) -> tuple[list[NodeCost], dict[str, int]]:
    """Per data op costs, and the input / output / TPU-to-host int8 bytes (keys ``input``, ``output``, ``tpu_out``)."""
    proto, params = static_graph(model)
    g = proto.graph
    shapes = _shapes(proto)
    # Activation tensors descend from the graph inputs; nodes that touch none of them are plumbing.
    act = {i.name for i in g.input if i.name not in params}
    on_cpu = False
    placed: dict[str, bool] = {}  # activation tensor -> produced on the CPU
    tpu_out: set[str] = set()
    costs: list[NodeCost] = []

    def shape(name: str) -> tuple[int, ...]:
        if shapes.get(name) is None:
            raise ValueError(f"no static shape for tensor {name!r}: export the model at a fixed input shape")
        return shapes[name]

    for node in g.node:
        ins = [i for i in node.input if i]
        if node.op_type in _META_OPS or not any(i in act for i in ins):
            continue
        data_ins = [i for i in ins if i in act]
        outs = [o for o in node.output if o]
        act.update(outs)
        # The compiler maps one graph prefix: the first unsupported op and everything after it run on the CPU.
        on_cpu = on_cpu or not _maps(node, data_ins)
        if on_cpu:  # tensors crossing from the Edge TPU part to the CPU part go back over the host link
            tpu_out.update(i for i in data_ins if placed.get(i) is False)
        placed.update(dict.fromkeys(outs, on_cpu))
        # Parameters by consumer input, not by initializer: the exporter merges identical initializers (e.g. the
        # zero biases of BN-folded random-init convs), which a trained model would not have.
        params_b = sum(_numel(shape(node.input[i])) * nbytes
                       for i, nbytes in _PARAM_INPUTS.get(node.op_type, {}).items()
                       if i < len(node.input) and node.input[i] and node.input[i] not in act)
        if node.op_type in _ELEMENTWISE:
            params_b += sum(_numel(shape(i)) for i in ins if i not in act)
        macs, array_macs = _macs(node, shape, tile)
        costs.append(NodeCost(node.op_type, node.name, macs, array_macs, params_b, node.op_type not in FREE_OPS,
                              on_cpu))
    outputs = [o.name for o in g.output]
    tpu_out.update(o for o in outputs if placed.get(o) is False)
    io = {"input": sum(_numel(shape(i.name)) for i in g.input if i.name not in params),
          "output": sum(_numel(shape(o)) for o in outputs), "tpu_out": sum(_numel(shape(o)) for o in tpu_out)}
    return costs, io


def static_graph(model: onnx.ModelProto | str | Path, max_rounds: int = 64) -> tuple[onnx.ModelProto, set[str]]:
    """The graph with shape plumbing folded to constants and shapes inferred, and the names of its parameters.

    Weights become typed graph inputs (their values are never needed), so shape inference stays fast on VGG-sized
    models. Exporters compute TF-"same" padding at run time (Shape -> Ceil -> ... -> Pad); ONNX shape inference
    leaves every tensor after such a Pad without a shape, so we evaluate the plumbing until the shapes are static.
    """
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    proto, params = _skeleton(proto)
    for _ in range(max_rounds):
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        folded = _fold_once(proto)
        if folded is None:
            return proto, params
        proto = folded
    raise ValueError(f"shape plumbing did not fold in {max_rounds} rounds")


def _skeleton(model: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str]]:
    g = model.graph
    params = {t.name for t in g.initializer}
    small = [t for t in g.initializer if _numel(t.dims) <= _FOLD_MAX_ELEMENTS]
    big = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer
           if _numel(t.dims) > _FOLD_MAX_ELEMENTS]
    inputs = [i for i in g.input if i.name not in params]
    graph = onnx.helper.make_graph(list(g.node), g.name, [*inputs, *big], list(g.output), initializer=small)
    out = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    out.functions.extend(model.functions)
    return out, params


def _fold_once(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """One round of constant folding; None when no node other than a Constant folds (shapes are final)."""
    from onnx import numpy_helper

    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer if t.data_location != onnx.TensorProto.EXTERNAL}
    shapes = _shapes(model)
    keep, new, progress = [], {}, False
    for node in g.node:
        values = _evaluate(node, consts, shapes, model)
        if values is None:
            keep.append(node)
            continue
        consts.update(values)
        new.update(values)
        progress = progress or node.op_type != "Constant"
    if not progress:
        return None
    inits = [*g.initializer, *(numpy_helper.from_array(np.asarray(v), k) for k, v in new.items())]
    graph = onnx.helper.make_graph(keep, g.name, list(g.input), list(g.output), initializer=inits)
    out = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    out.functions.extend(model.functions)
    return out


def _evaluate(node: onnx.NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...] | None],
              model: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """The outputs of a node computable without activations (plumbing), or None."""
    from onnx import numpy_helper

    if node.op_type == "Constant":
        attr = node.attribute[0]
        if attr.name == "value":
            return {node.output[0]: numpy_helper.to_array(attr.t)}
        return {node.output[0]: np.asarray(onnx.helper.get_attribute_value(attr))}
    if node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
        dims = shapes.get(node.input[0])
        if dims is None:
            return None
        if node.op_type == "Size":
            return {node.output[0]: np.asarray(_numel(dims), dtype=np.int64)}
        a = {x.name: x.i for x in node.attribute}
        return {node.output[0]: np.asarray(dims[a.get("start", 0):a.get("end", len(dims))], dtype=np.int64)}
    ins = [i for i in node.input if i]
    if (node.op_type in _NONDETERMINISTIC or not ins or node.domain not in ("", "ai.onnx")
            or not all(i in consts and consts[i].size <= _FOLD_MAX_ELEMENTS for i in ins)):
        return None
    from onnx.reference import ReferenceEvaluator

    inputs = [onnx.helper.make_tensor_value_info(i, onnx.helper.np_dtype_to_tensor_dtype(consts[i].dtype), None)
              for i in dict.fromkeys(ins)]
    outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    try:
        ev = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=list(model.opset_import)))
        results = ev.run(None, {i: consts[i] for i in dict.fromkeys(ins)})
    except Exception:  # an op the reference runtime lacks: leave it, shapes may still resolve
        return None
    return {o.name: np.asarray(r) for o, r in zip(outputs, results, strict=True)}


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    """Static shape of every tensor the inference knows: a symbolic batch counts as 1, other unknown dims as None."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
        if dims and dims[0] is None:
            dims[0] = 1  # a dynamic batch: we predict batch 1
        shapes[vi.name] = None if None in dims else tuple(dims)  # type: ignore[arg-type]
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


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
            rows, cin_g, cout = _numel(shape(node.output[0])[2:]), w[1], w[0]
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


@dataclass(frozen=True)
class Estimate:
    """One prediction and its parts (``ms`` is their sum)."""

    ms: float
    rel_error: float  # median abs error (a fraction) of the calibration rows like this one, weighted by the parts
    overhead_ms: float  # the host's fixed cost of one Edge TPU invocation
    compute_ms: float  # Edge TPU compute at the clock
    streaming_ms: float  # parameters beyond the on-chip memory, streamed over the host link on every inference
    io_ms: float  # the rest of the host link's traffic: input, outputs, per-layer code and control
    cpu_ms: float  # ops that fall back, on the host CPU
    tpu_ops: int
    cpu_ops: int
    macs: int
    param_bytes: int
    cached_bytes: int
    streamed_bytes: int
    first_cpu_op: str
    host: str
    clock: str


@dataclass(frozen=True)
class HostFacts:
    """What the calibration of one host rests on, for the console warning and the model card."""

    host: str
    description: str
    rows: int  # published timings on this host among the calibration rows
    architectures: int
    streaming_rows: int  # of those, rows whose parameters overflow the on-chip memory (they pin the bandwidth)
    loo_error: float  # leave-one-out median abs error over this host's rows (a fraction)
    loao_error: float  # leave-one-architecture-out median abs error over this host's rows
    loao_spearman: float
    too_few_rows: bool

    def warning(self) -> str | None:
        """One line for the console and the model card when the host's calibration is thin, else None."""
        if not self.too_few_rows:
            return None
        streaming = (f"{self.streaming_rows} of them streaming weights" if self.streaming_rows
                     else "none streaming weights: its link bandwidth is another host's")
        return (f"Edge TPU host {self.host} rests on only {self.rows} published timings of {self.architectures} "
                f"architectures ({streaming}); leave-one-architecture-out error {self.loao_error:.0%} over those "
                "rows: treat its predictions as rough")


@dataclass(frozen=True)
class EdgeTpuModel:
    """The calibrated constants resolved for one host and clock setting."""

    host: str
    clock: str
    clock_mhz: float
    reference_mhz: float  # the clock of the published timings
    cache_bytes: int  # int8 parameters the on-chip memory holds
    array_tile: int
    c: float  # ms per array MAC at reference_mhz
    b: float  # ms per Edge TPU layer at reference_mhz
    link: str
    link_ms_per_byte: float
    link_ms_per_layer: float
    overhead_ms: float
    cpu_macs_per_ms: float
    rel_error: float  # leave-one-architecture-out median abs error over this host's rows
    rel_error_cached: float  # ... over its rows whose parameters fit the on-chip memory
    rel_error_streaming: float  # ... over its rows whose parameters stream (nan when it has none)
    rel_error_cpu: float  # leave-one-out error of the CPU-throughput term (fallback ops)
    facts: HostFacts

    @classmethod
    def load(cls, host: str = "desktop_usb3", clock: str = "std", path: str | Path = CONSTANTS_JSON) -> EdgeTpuModel:
        """The shipped constants for ``host`` at ``clock`` (``std``: libedgetpu1-std, ``max``: libedgetpu1-max)."""
        data = json.loads(Path(path).read_text())
        hosts, clocks = data["hosts"], data["clocks"]
        if host not in hosts:
            raise ValueError(f"unknown Edge TPU host {host!r}; known hosts: {', '.join(hosts)}")
        if clock not in clocks:
            raise ValueError(f"unknown Edge TPU clock {clock!r}; known clocks: {', '.join(clocks)}")
        h = hosts[host]
        link = data["links"][h["link"]]
        mhz = clocks[clock]["usb_mhz"] if h["link"] != "board" else clocks[clock]["board_mhz"]
        facts = HostFacts(host=host, **{f.name: h["facts"][f.name] for f in fields(HostFacts) if f.name != "host"})
        return cls(
            host=host, clock=clock, clock_mhz=float(mhz), reference_mhz=float(data["reference_mhz"]),
            cache_bytes=int(data["cache_bytes"]), array_tile=int(data["array_tile"]), c=data["tpu"]["c"],
            b=data["tpu"]["b"], link=h["link"], link_ms_per_byte=link["ms_per_byte"],
            link_ms_per_layer=link["ms_per_layer"], overhead_ms=h["overhead_ms"],
            cpu_macs_per_ms=h["cpu_macs_per_ms"], rel_error=h["rel_error"], rel_error_cached=h["rel_error_cached"],
            rel_error_streaming=h["rel_error_streaming"], rel_error_cpu=data["rel_error_cpu"], facts=facts,
        )

    def predict(self, features: EdgeTpuFeatures) -> Estimate:
        f = features
        mapped = f.tpu_ops > 0  # nothing mapped: no Edge TPU invocation at all
        cached = min(f.tpu_param_bytes, self.cache_bytes)
        streamed = f.tpu_param_bytes - cached
        overhead = self.overhead_ms if mapped else 0.0
        compute = self.reference_mhz / self.clock_mhz * (self.c * f.tpu_array_macs + self.b * f.tpu_layers)
        streaming = self.link_ms_per_byte * streamed if mapped else 0.0
        io = (self.link_ms_per_byte * (link_bytes(f, self.cache_bytes) - streamed)
              + self.link_ms_per_layer * f.tpu_layers if mapped else 0.0)
        cpu = f.cpu_macs / self.cpu_macs_per_ms
        ms = overhead + compute + streaming + io + cpu
        tpu_error = self.rel_error_for(streamed)
        # Weighted by the parts; exactly the regime's error when nothing falls back ((ms * e) / ms is not always e).
        rel_error = ((ms - cpu) * tpu_error + cpu * self.rel_error_cpu) / ms if ms > 0 and cpu > 0 else tpu_error
        return Estimate(ms=ms, rel_error=rel_error, overhead_ms=overhead, compute_ms=compute,
                        streaming_ms=streaming, io_ms=io, cpu_ms=cpu, tpu_ops=f.tpu_ops, cpu_ops=f.cpu_ops,
                        macs=f.macs, param_bytes=f.param_bytes, cached_bytes=cached, streamed_bytes=streamed,
                        first_cpu_op=f.first_cpu_op, host=self.host, clock=self.clock)

    def rel_error_for(self, streamed_bytes: int) -> float:
        """The error of this host's calibration rows in the same regime (the host's overall one where unknown)."""
        e = self.rel_error_streaming if streamed_bytes > 0 else self.rel_error_cached
        return self.rel_error if math.isnan(e) else e

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def link_bytes(f: EdgeTpuFeatures, cache_bytes: int) -> int:
    """Bytes over the host link per inference: parameters beyond the on-chip memory, the input, the outputs."""
    if f.tpu_ops == 0:
        return 0
    return max(0, f.tpu_param_bytes - cache_bytes) + f.input_bytes + f.tpu_output_bytes


def known_hosts(path: str | Path = CONSTANTS_JSON) -> list[str]:
    return list(json.loads(Path(path).read_text())["hosts"])


def known_clocks(path: str | Path = CONSTANTS_JSON) -> list[str]:
    return list(json.loads(Path(path).read_text())["clocks"])


def host_facts(path: str | Path = CONSTANTS_JSON) -> dict[str, HostFacts]:
    """Per host: rows, architectures, leave-one-out errors and the too-few-rows flag."""
    hosts = json.loads(Path(path).read_text())["hosts"]
    return {h: HostFacts(host=h, **{f.name: v["facts"][f.name] for f in fields(HostFacts) if f.name != "host"})
            for h, v in hosts.items()}


def predict_onnx(model: onnx.ModelProto | str | Path, host: str = "desktop_usb3", clock: str = "std") -> Estimate:
    """Edge TPU latency estimate of an ONNX graph with the shipped constants."""
    return EdgeTpuModel.load(host, clock).predict(features_of(model))
