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
    macs: int | None  # per image (the batch dimension is not counted); None when a dimension is not known
    weight_bytes: int


def graph_stats(model: onnx.ModelProto) -> GraphStats:
    """Parameters and multiply-accumulates per image of Conv/Gemm/MatMul nodes, from ONNX shape inference.

    An activation's first dimension is the batch and is left out, so a batch-4 graph reports the MACs of one image.
    A graph whose other dimensions shape inference cannot fix (a symbolic height, say) has no MAC count (None)
    rather than one that counts the unknown dimension as 1."""
    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    inits = {t.name: t for t in g.initializer}
    shapes: dict[str, list[int | None]] = {}
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for t in inits.values():
        shapes[t.name] = list(t.dims)
    macs: int | None = 0
    for node in g.node:
        n = None
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in shapes:
            w, out = shapes[node.input[1]], shapes.get(node.output[0])  # w: (out, in/groups, kh, kw)
            if out:
                n = _prod(out[1:]) * _prod(w[1:]) if None not in out[1:] else None
            else:
                continue
        elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1:
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            if not (a and b):
                continue
            k = b[-1] if node.op_type == "MatMul" or not _trans_b(node) else b[0]
            per_image = a[1:] if node.input[0] not in inits else a  # a weight has no batch dimension
            n = _prod(per_image) * k if None not in per_image and k is not None else None
        else:
            continue
        macs = None if macs is None or n is None else macs + n
    params = sum(int(np.prod(t.dims)) for t in inits.values())
    weight_bytes = sum(int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                       for t in inits.values())
    return GraphStats(params=params, macs=macs, weight_bytes=weight_bytes)


def _prod(dims: list[int | None]) -> int:
    return int(np.prod([d for d in dims if d is not None], dtype=np.int64))


def _trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)
