"""A built candidate as a TFLite (LiteRT) model: fully int8 for the Edge TPU and ARM CPUs, or float.

PyTorch -> float TFLite with litert-torch (NHWC input, as TFLite runtimes expect), then full-integer static
quantization with ai-edge-quantizer (``static_wi8_ai8``: int8 weights and activations, int8 input and output, no
float ops left), calibrated on dataset images. litert-torch's own PT2E path left residual ADDs in float on
timm models here, which the Edge TPU would run on the CPU. Every conversion is checked against the float
PyTorch model on a few calibration inputs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.core.errors import CandidateFailed, first_line


@dataclass(frozen=True)
class TfliteConversion:
    path: Path
    precision: str
    top1_agreement: float  # argmax of the TFLite model == argmax of the float model, over the check inputs
    rel_error: float  # max |tflite - float| / max |float| over the check inputs
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@contextlib.contextmanager
def quiet_fds() -> Iterator[Path]:
    """Send fds 1 and 2 to a file: the converter's C++ and progress logging bypass Python's streams."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.NamedTemporaryFile(prefix="nas-litert-", suffix=".log", delete=False) as log:
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield Path(log.name)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            Path(log.name).unlink(missing_ok=True)


class _ChannelsLast(torch.nn.Module):
    """NHWC in, as TFLite runtimes and the Edge TPU expect; the model itself stays NCHW."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


def to_tflite(model: torch.nn.Module, shape: tuple[int, int, int, int], path: Path, precision: str = "int8",
              calibration: list[np.ndarray] | None = None, n_check: int = 4) -> TfliteConversion:
    """Convert ``model`` at NCHW ``shape`` to a TFLite file at ``path`` (atomically).

    ``calibration``: NCHW float batches of ``shape`` for int8 (seeded noise without any); the first ``n_check``
    also check the result against the float model.
    """
    if precision not in ("int8", "fp32"):
        raise CandidateFailed(f"TFLite conversion supports precision int8 or fp32, not {precision}")
    t0 = time.perf_counter()
    if not calibration:
        rng = np.random.default_rng(0)
        calibration = [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]
    nhwc = [np.ascontiguousarray(b.transpose(0, 2, 3, 1)) for b in calibration]
    wrapped = _ChannelsLast(model.eval()).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with quiet_fds() as log, tempfile.TemporaryDirectory(prefix="nas-tflite-") as work:
            try:
                float_path = Path(work) / "float.tflite"
                _convert_float(wrapped, nhwc[0], float_path)
                if precision == "int8":
                    _quantize(float_path, tmp, nhwc)
                else:
                    os.replace(float_path, tmp)
            except Exception as e:
                tail = [ln for ln in log.read_text(errors="replace").splitlines() if "rror" in ln][-1:]
                first = first_line(e)[:200]
                raise CandidateFailed(f"TFLite conversion failed: {type(e).__name__}: {first}"
                                      + (f" ({tail[0].strip()[:200]})" if tail else "")) from None
        agreement, rel = check_against(wrapped, tmp, nhwc[:n_check])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return TfliteConversion(path, precision, agreement, rel, time.perf_counter() - t0)


def _convert_float(wrapped: torch.nn.Module, sample_nhwc: np.ndarray, out: Path) -> None:
    import litert_torch

    with torch.no_grad():
        edge = litert_torch.convert(wrapped, (torch.from_numpy(sample_nhwc),))
    edge.export(str(out))


def _quantize(float_path: Path, out: Path, batches_nhwc: list[np.ndarray]) -> None:
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(str(float_path))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    sig = interpreter(float_path).get_signature_list()["serving_default"]
    name = sig["inputs"][0]
    calib = qt.calibrate({"serving_default": [{name: b} for b in batches_nhwc]}, num_threads=1)
    result = qt.quantize(calib)
    out.unlink(missing_ok=True)
    result.export_model(str(out))


def interpreter(path: Path, threads: int = 1, delegates: list[Any] | None = None, fallback: bool = False) -> Any:
    """A LiteRT interpreter with its tensors allocated. ``fallback``: where the default XNNPACK delegate refuses the
    graph ("failed to prepare", seen on some int8 candidates), TFLite's built-in kernels run it instead: the same
    arithmetic, slower, so only for checking outputs, never for timing."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), num_threads=threads, experimental_delegates=delegates)
    try:
        it.allocate_tensors()
    except RuntimeError:
        if not fallback or delegates:
            raise
        it = Interpreter(model_path=str(path), num_threads=threads,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
    return it


def run_float(it: Any, x: np.ndarray) -> np.ndarray:
    """Run one float NHWC input through an interpreter, quantizing and dequantizing at int8 edges."""
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    if np.issubdtype(inp["dtype"], np.integer):
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
    it.set_tensor(inp["index"], x.astype(inp["dtype"], copy=False))
    it.invoke()
    y = it.get_tensor(out["index"])
    if np.issubdtype(out["dtype"], np.integer):
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def check_against(wrapped: torch.nn.Module, path: Path, inputs_nhwc: list[np.ndarray]) -> tuple[float, float]:
    """(top-1 agreement, relative max error) of the TFLite model vs the float model on ``inputs_nhwc``."""
    it = interpreter(path, fallback=True)
    agree, rel = [], []
    for x in inputs_nhwc:
        with torch.no_grad():
            ref = wrapped(torch.from_numpy(x)).numpy()
        y = run_float(it, x)
        if not np.all(np.isfinite(y)):
            raise CandidateFailed(f"TFLite conversion produced non-finite outputs ({path.name})")
        agree.extend((y.argmax(-1) == ref.argmax(-1)).tolist())
        rel.append(float(np.abs(y - ref).max() / max(float(np.abs(ref).max()), 1e-6)))
    return float(np.mean(agree)), float(max(rel))


def tflite_top1(model: torch.nn.Module, data: Any, precision: str = "int8") -> tuple[float, TfliteConversion]:
    """Top-1 on the validation split of the trained model as the TFLite file a device would run."""
    from nas.latency.quantize import calibration_batches

    shape = (1, 3, data.resolution, data.resolution)
    with tempfile.TemporaryDirectory(prefix="nas-tflite-acc-") as tmp:
        conv = to_tflite(model, shape, Path(tmp) / "model.tflite", precision, calibration_batches(shape, data, 64))
        it = interpreter(conv.path)
        x, y = data.validation_arrays()
        x = x.transpose(0, 2, 3, 1)
        correct = sum(int(run_float(it, x[i:i + 1]).argmax() == int(y[i])) for i in range(len(x)))
    return correct / len(x), conv
