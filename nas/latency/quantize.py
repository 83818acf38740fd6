"""int8 by ONNX Runtime static quantization (QDQ, per-channel weights), calibrated on dataset images."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from nas.core.errors import CandidateFailed, first_line
from nas.data.datasets import Splits
from nas.latency.onnx_export import export_onnx


class _Batches(CalibrationDataReader):
    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._it = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def calibration_batches(shape: tuple[int, ...], data: Splits | None, n_batches: int = 8,
                        seed: int = 0) -> list[np.ndarray]:
    """``n_batches`` inputs of ``shape`` from the dataset's training images (resized), or seeded noise without one."""
    b, _, h, w = shape
    if data is None:
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(shape).astype(np.float32) for _ in range(n_batches)]
    x = torch.from_numpy(data.calibration(b * n_batches))
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    x = x.numpy().astype(np.float32)
    return [x[i * b:(i + 1) * b] for i in range(len(x) // b) if len(x[i * b:(i + 1) * b]) == b]


def quantize_int8(fp32_path: Path, out_path: Path, batches: list[np.ndarray]) -> Path:
    """Static int8 quantization of an ONNX model; written atomically."""
    import onnxruntime as ort

    # Calibration sessions warn once per folded initializer (CleanUnusedInitializers): dozens of lines per trial.
    ort.set_default_logger_severity(3)
    name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    tmp = out_path.with_name(out_path.name + ".tmp.onnx")
    try:
        quantize_static(str(fp32_path), str(tmp), _Batches(name, batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    except Exception as e:  # ONNX Runtime's quantizer raises many types on graphs it cannot handle
        tmp.unlink(missing_ok=True)
        raise CandidateFailed(f"int8 quantization failed: {type(e).__name__}: {first_line(e)}") from None
    tmp.replace(out_path)
    return out_path


def int8_top1(model: torch.nn.Module, data: Splits, batch_size: int) -> float:
    """Top-1 on the validation split of the trained model after int8 quantization, run by ONNX Runtime."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="nas-int8-") as tmp:
        fp32 = export_onnx(model.eval(), (1, 3, data.resolution, data.resolution), Path(tmp) / "fp32.onnx")
        q = quantize_int8(fp32, Path(tmp) / "int8.onnx",
                          calibration_batches((1, 3, data.resolution, data.resolution), data, n_batches=64))
        sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        x, y = data.validation_arrays()
        correct = 0
        for i in range(len(x)):  # the export is batch-1, as deployed
            correct += int(sess.run(None, {name: x[i:i + 1]})[0].argmax() == int(y[i]))
    return correct / len(x)
