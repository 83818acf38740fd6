"""OpenVINO backend (``target=openvino``): the candidate's ONNX compiled by OpenVINO for its CPU (or a GPU or NPU it
reports), with the LATENCY performance hint and fixed threads; int8 by NNCF post-training quantization."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nas.config import Precision, Scope, TargetConfig, require
from nas.core.errors import CandidateFailed, TargetError, first_line
from nas.latency.targets.base import Measurement, Prepared, Target, targets
from nas.latency.targets.timing import run_rounds

INSTALL = "pip install '.[openvino]'"
# What OpenVINO's inference precision hint is for each of our precisions: int8 models carry their own
# (fake-)quantized operations and compute the rest in fp32.
INFERENCE_PRECISION = {Precision.fp32: "f32", Precision.fp16: "f16", Precision.int8: "f32", Precision.bf16: "bf16"}


@dataclass
class OpenVinoConfig(TargetConfig):
    """OpenVINO on a device it reports: CPU here; GPU or NPU where present."""

    name: str = "openvino"
    backend: str = "openvino"
    device: str = "CPU"
    BF16: ClassVar[bool] = True  # OpenVINO's own default on CPUs that have it (3.5 ms against 6.5 ms f32 here)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.scope == Scope.model, f"target.scope={self.scope}: target=openvino measures scope=model only")


def import_openvino(name: str) -> Any:
    """The ``openvino`` module, or one line naming the install command."""
    try:
        import openvino
    except ImportError:
        raise TargetError(f"target {name}: OpenVINO is not installed; {INSTALL}") from None
    return openvino


@targets.register("openvino", OpenVinoConfig, option=False)
class OpenVinoTarget(Target):
    """Measures ONNX (or OpenVINO IR) files compiled by ``ov.Core`` with one synchronous infer request."""

    agent_runtime = True

    @classmethod
    def installed(cls) -> bool:
        return find_spec("openvino") is not None

    cfg: OpenVinoConfig

    def __init__(self, cfg: OpenVinoConfig) -> None:
        super().__init__(cfg)
        self._ov = import_openvino(cfg.name)
        self.core = self._ov.Core()
        devices = self.core.available_devices
        if cfg.device not in devices:
            raise TargetError(f"target.device={cfg.device}: OpenVINO here reports only {devices}")
        caps = list(self.core.get_property(cfg.device, "OPTIMIZATION_CAPABILITIES"))
        if cfg.precision == Precision.fp16 and "FP16" not in caps:
            raise TargetError(f"target.precision=fp16: OpenVINO's {cfg.device} ({self.device_name}) does not run fp16 "
                              f"(its capabilities: {', '.join(caps)}); use fp32 or int8")
        if cfg.precision == Precision.bf16 and "BF16" not in caps:
            raise TargetError(f"target.precision=bf16: OpenVINO's {cfg.device} ({self.device_name}) does not run bf16 "
                              f"(its capabilities: {', '.join(caps)}; bf16 needs AVX512-BF16 or AMX); use fp32")
        # What the device really applied to a compiled model: the fingerprint names those, not only our requests.
        self.applied = self._applied(self.compile(_probe_model(self._ov), "a one-op probe model"))

    @property
    def device_name(self) -> str:
        return str(self.core.get_property(self.cfg.device, "FULL_DEVICE_NAME"))

    def config(self) -> dict[str, str]:
        cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[self.cfg.precision]}
        if self.cfg.device == "CPU":  # the thread count is a CPU plugin property
            cfg["INFERENCE_NUM_THREADS"] = str(self.cfg.threads)
        return cfg

    def _applied(self, compiled: Any) -> dict[str, str]:
        out = {}
        for key in ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS"):
            try:
                value = compiled.get_property(key)
            except RuntimeError:  # a device without that property (GPU, NPU: no thread count)
                continue
            out[key] = value.get_type_name() if isinstance(value, self._ov.Type) else str(value)
        return out

    def facts(self) -> dict[str, Any]:
        return {"device": f"{self.cfg.device}: {self.device_name}", "runtime": f"openvino {self._ov.__version__}",
                "hints": self.applied}

    def compile(self, model: Any, what: str) -> Any:
        try:
            return self.core.compile_model(model, self.cfg.device, self.config())
        except RuntimeError as e:  # OpenVINO raises RuntimeError (or subclasses) for models it cannot read or compile
            raise CandidateFailed(f"OpenVINO cannot compile {what}: {first_line(e)}") from None

    def accepts(self, path: Path) -> None:
        if path.suffix not in (".onnx", ".xml"):
            raise TargetError(f"model={path}: target {self.name} runs ONNX files or OpenVINO IR (.xml beside its "
                              ".bin); give one, or arch=NAME to convert one of our candidates")

    def prepare(self, model: Any, onnx_path: Path, shape: tuple[int, int, int, int], data: Any) -> Prepared:
        """The ONNX file itself; with ``precision=int8``, its NNCF-quantized OpenVINO IR (calibrated on ``data``)."""
        if self.cfg.precision != Precision.int8:
            return Prepared(onnx_path)
        from nas.latency.quantize import calibration_batches

        t0 = time.perf_counter()
        out = onnx_path.with_name("int8-" + onnx_path.stem + ".xml")
        self._ov.save_model(nncf_int8(self._ov, onnx_path, calibration_batches(shape, data)), str(out))
        return Prepared(out, {"quantizer": f"nncf {_nncf_version()}"}, time.perf_counter() - t0)

    def measure(self, path: Path) -> Measurement:
        t0 = time.perf_counter()
        compiled = self.compile(str(path), path.name)
        t1 = time.perf_counter()
        request = compiled.create_infer_request()
        for i, port in enumerate(compiled.inputs):  # fixed random inputs, set once: a run is `infer()` alone
            request.set_input_tensor(i, self._ov.Tensor(_random(port, self.cfg.input_shape)))

        def step() -> dict[str, float]:
            s = time.perf_counter_ns()
            request.infer()
            return {"model": (time.perf_counter_ns() - s) / 1e6}

        try:
            stats = run_rounds(step, self.cfg)
        except RuntimeError as e:
            raise CandidateFailed(f"OpenVINO cannot run {path.name}: {first_line(e)}") from None
        return Measurement(stats, timings={"compile": t1 - t0, "measure": time.perf_counter() - t1})

    @classmethod
    def deployed_top1(cls, cfg: TargetConfig, model: Any, data: Any, batch_size: int) -> float | None:
        """Top-1 on the validation split of the trained model quantized by NNCF and run by OpenVINO (CPU)."""
        if cfg.precision != Precision.int8:
            return None
        from nas.latency.onnx_export import export_onnx
        from nas.latency.quantize import calibration_batches

        ov = import_openvino(cfg.name)
        shape = (1, 3, data.resolution, data.resolution)
        with tempfile.TemporaryDirectory(prefix="nas-ov-int8-") as tmp:
            fp32 = export_onnx(model.eval(), shape, Path(tmp) / "fp32.onnx")
            q = nncf_int8(ov, fp32, calibration_batches(shape, data, n_batches=64))
        request = ov.Core().compile_model(q, "CPU").create_infer_request()
        x, y = data.validation_arrays()
        correct = sum(int(request.infer([x[i:i + 1]])[0].argmax() == int(y[i])) for i in range(len(x)))
        return correct / len(x)

    @classmethod
    def bundle_files(cls, cfg: TargetConfig, model: Any, shape: tuple[int, int, int, int],
                     out: Path) -> dict[str, Any]:
        if cfg.precision != Precision.int8:
            return {}  # model.onnx is what OpenVINO reads
        from nas.latency.onnx_export import export_onnx
        from nas.latency.quantize import calibration_batches

        ov = import_openvino(cfg.name)
        with tempfile.TemporaryDirectory(prefix="nas-ov-bundle-") as tmp:
            fp32 = export_onnx(model.eval(), shape, Path(tmp) / "fp32.onnx")
            ov.save_model(nncf_int8(ov, fp32, calibration_batches(shape, None)), str(out / "model_int8.xml"))
        return {"openvino": {"file": "model_int8.xml", "weights": "model_int8.bin",
                             "quantizer": f"nncf {_nncf_version()}",
                             "calibration": "seeded noise (the weights are random too): re-quantize the trained "
                                            "model with real images"}}

    @classmethod
    def deploy_note(cls, cfg: TargetConfig) -> str:
        if cfg.precision == Precision.int8:
            return ("; the latency was measured on its int8 OpenVINO IR made by NNCF post-training quantization "
                    "(nncf.quantize, model_int8.xml), so quantize the trained model the same way with real images")
        return f"; the latency is that of OpenVINO running model.onnx ({cfg.precision}, LATENCY hint)"


def nncf_int8(ov: Any, onnx_path: Path, batches: list[np.ndarray]) -> Any:
    """The ONNX model quantized to int8 by NNCF's post-training quantization, as an ``ov.Model``."""
    try:
        import nncf
    except ImportError:
        raise TargetError(f"int8 on OpenVINO needs NNCF, which is not installed; {INSTALL}") from None
    import logging

    logging.getLogger("nncf").setLevel(logging.ERROR)  # its progress bars and per-layer notes, once per candidate
    try:
        return nncf.quantize(ov.Core().read_model(str(onnx_path)), nncf.Dataset(batches), subset_size=len(batches))
    except (RuntimeError, ValueError, nncf.errors.InternalError) as e:
        raise CandidateFailed(f"NNCF int8 quantization failed: {type(e).__name__}: {first_line(e)}") from None


def _nncf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nncf")
    except PackageNotFoundError:
        return "missing"


def _probe_model(ov: Any) -> Any:
    """A one-op model: enough for the device to report what it applies (threads, streams, precision)."""
    x = ov.opset13.parameter([1, 8], ov.Type.f32, name="x")
    return ov.Model([ov.opset13.relu(x)], [x], "probe")


def _random(port: Any, default_shape: list[int]) -> np.ndarray:
    """Seeded random data for one input; dynamic dimensions take the target's deployment shape."""
    pshape = port.get_partial_shape()
    shape = [d.get_length() if d.is_static else (default_shape[i] if i < len(default_shape) else 1)
             for i, d in enumerate(pshape)]
    dtype = port.get_element_type().to_dtype()
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 10, size=shape).astype(dtype)
