"""What the agent checks before it runs an uploaded model: a well-formed ONNX graph or TFLite flatbuffer with
standard operators only."""

from __future__ import annotations

from pathlib import Path

import onnx

from nas.core.errors import first_line

# Operator domains ONNX Runtime implements itself; anything else needs a custom-op library, which is refused.
ALLOWED_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}


class ModelRejected(ValueError):
    """The upload is not a model the agent will run; the message says why."""


def validate_onnx(data: bytes) -> onnx.ModelProto:
    try:
        model = onnx.load_from_string(data)
    except Exception:  # protobuf raises DecodeError and friends
        raise ModelRejected("the upload is not an ONNX model") from None
    if not model.graph.node:
        raise ModelRejected("the upload is not an ONNX model (empty graph)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ModelRejected(f"invalid ONNX model: {first_line(e)}") from None
    domains = {n.domain for n in model.graph.node} | {o.domain for o in model.opset_import}
    custom = sorted(d for d in domains if d not in ALLOWED_DOMAINS)
    if custom:
        raise ModelRejected(f"custom operator domain(s) {custom} refused: the agent loads no custom-op libraries")
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelRejected("models with external data files are refused: export with external_data=False")
    return model


def validate_tflite(data: bytes) -> None:
    """A TFLite flatbuffer that the LiteRT interpreter loads with its built-in operators alone."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelRejected("the upload is not a TFLite model (no TFL3 identifier)")
    try:
        from ai_edge_litert.interpreter import Interpreter

        Interpreter(model_content=data).allocate_tensors()
    except ImportError:
        raise ModelRejected("this agent has no LiteRT interpreter: pip install 'ai-edge-litert>=2.3' there") from None
    except (ValueError, RuntimeError) as e:
        first = first_line(e)[:200]
        if "custom op" in str(e).lower():
            raise ModelRejected(f"custom operators refused: the agent loads no custom-op libraries ({first})") from None
        raise ModelRejected(f"invalid TFLite model: {first}") from None


def validate_file(path: Path, file_format: str) -> None:
    """Check an upload spooled to ``path``: an ONNX model (``onnx``) or a TFLite one (``tflite``).

    The agent calls this in the measurement process, so a slow check or a parser crash on a hostile file neither
    blocks nor takes down the server."""
    data = path.read_bytes()
    validate_onnx(data) if file_format == "onnx" else validate_tflite(data)
