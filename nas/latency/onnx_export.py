"""Export a built model to ONNX at the deployment shape, and read size figures off an ONNX graph."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import shape_inference

from nas.core.errors import CandidateFailed, first_line


def export_onnx(model: torch.nn.Module, shape: tuple[int, ...], path: Path, exporter: str = "legacy",
                opset: int = 17, fp16: bool = False) -> Path:
    """Write ``model`` as ONNX with input ``input`` and output ``logits``; atomically (temp file, rename).

    ``fp16`` exports weights, input and output in half precision (the model is converted in place).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    x = torch.zeros(*shape)
    if fp16:
        model, x = model.half(), x.half()
    if exporter == "dynamo":
        opset = max(opset, 18)  # the dynamo exporter's down-conversion below 18 fails on these models
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (x,), str(tmp), dynamo=exporter == "dynamo", opset_version=opset,
                              input_names=["input"], output_names=["logits"], external_data=False)
    except Exception as e:  # the exporters raise many types (an opset they cannot target, an unsupported op)
        tmp.unlink(missing_ok=True)
        raise CandidateFailed(f"ONNX export failed: {type(e).__name__}: {first_line(e)}") from None
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class GraphStats:
    params: int
    macs: int
    weight_bytes: int


def graph_stats(model: onnx.ModelProto) -> GraphStats:
    """Parameters and multiply-accumulates of Conv/Gemm/MatMul nodes, from ONNX shape inference."""
    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    inits = {t.name: t for t in g.initializer}
    shapes: dict[str, list[int]] = {}
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for t in inits.values():
        shapes[t.name] = list(t.dims)
    macs = 0
    for node in g.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in shapes:
            w = shapes[node.input[1]]  # (out, in/groups, kh, kw)
            out = shapes.get(node.output[0])
            if out:
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1:
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            if a and b:
                macs += int(np.prod(a)) * int(b[-1] if node.op_type == "MatMul" or not _trans_b(node) else b[0])
    params = sum(int(np.prod(t.dims)) for t in inits.values())
    weight_bytes = sum(int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                       for t in inits.values())
    return GraphStats(params=params, macs=macs, weight_bytes=weight_bytes)


def _trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)
