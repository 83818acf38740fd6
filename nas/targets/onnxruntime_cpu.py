"""Local ONNX Runtime target: fixed threads, warm-up, timed runs, percentiles."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from nas.config import TargetConfig
from nas.errors import TargetError
from nas.targets.base import LatencyStats
from nas.targets.timing import run_rounds


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def gpu_name() -> str:
    """The GPU ONNX Runtime's CUDA provider runs on (device 0 of those visible), with its driver when known."""
    try:
        import torch

        if torch.cuda.is_available():  # respects CUDA_VISIBLE_DEVICES, as ONNX Runtime does
            return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    except Exception:  # a CPU-only torch, or a driver torch cannot talk to
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.strip()
        name, _, driver = out.partition(",")
        return f"{name.strip()} (driver {driver.strip()})"
    except (OSError, subprocess.SubprocessError):
        return "unknown NVIDIA GPU"


def _probe_model() -> bytes:
    """A one-op ONNX model: enough for ONNX Runtime to register (or fail to register) each provider."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def unloaded_gpu_providers(requested: list[str], loaded: list[str]) -> list[str]:
    """GPU providers asked for that a session did not register: ONNX Runtime then runs on the CPU without failing."""
    return [p for p in requested if p in GPU_PROVIDERS and p not in loaded]


class OnnxRuntimeTarget:
    """Measures ONNX models with an ``InferenceSession`` on the configured execution providers.

    On a GPU provider, ``run`` takes and returns host arrays and returns once the output is back on the host, so
    every timed run is synchronised with the device and includes the input and output copies.
    """

    def __init__(self, cfg: TargetConfig) -> None:
        import onnxruntime as ort

        missing = [p for p in cfg.providers if p not in ort.get_available_providers()]
        if missing:
            hint = (" install the GPU build: pip uninstall -y onnxruntime && pip install '.[gpu]'"
                    if any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in missing) else "")
            raise TargetError(f"target {cfg.name}: ONNX Runtime here lacks {missing} "
                              f"(available: {ort.get_available_providers()});{hint}")
        self.cfg = cfg
        self.name = cfg.name
        self.last_timings: dict[str, float] = {}  # seconds of the last measure(): session, measure
        self._ort = ort
        self.accelerator: str | None = None
        # What a session really registers: the fingerprint names those, never merely the requested ones.
        self.providers = self._loaded(self.session(_probe_model(), "a one-op probe model"))
        if any(p in GPU_PROVIDERS for p in self.providers):
            self.accelerator = gpu_name()

    def fingerprint(self) -> dict[str, Any]:
        import torch

        return {
            "target": self.cfg.name,
            "device": cpu_model(),
            "machine": platform.machine(),
            "runtime": f"onnxruntime {self._ort.__version__}",
            "providers": self.providers,
            "threads": self.cfg.threads,
            "precision": self.cfg.precision,
            "batch": self.cfg.input_shape[0],
            "exporter": f"torch {torch.__version__.split('+')[0]} {self.cfg.exporter} opset{self.cfg.opset}",
            "warmup": self.cfg.warmup,
            "repeats": self.cfg.repeats,
            "rounds": self.cfg.rounds,
            "scope": self.cfg.scope if self.cfg.scope == "model" else f"pipeline from {self.cfg.source_size} JPEG",
            # Two GPUs behind the same host CPU must never share a measurement.
            **({"accelerator": self.accelerator} if self.accelerator else {}),
        }

    def _loaded(self, sess: Any) -> list[str]:
        """The session's providers; a GPU provider that failed to register is an error, not a silent CPU run."""
        loaded = list(sess.get_providers())
        missing = unloaded_gpu_providers(list(self.cfg.providers), loaded)
        if missing:
            raise TargetError(f"target {self.cfg.name}: ONNX Runtime has {missing} but could not load it (the CUDA, "
                              "cuDNN or TensorRT libraries that this onnxruntime-gpu build needs are missing or of "
                              f"another version; loaded: {loaded}), so it would time the CPU instead")
        return loaded

    def session(self, model: Path | bytes, what: str = "") -> Any:
        so = self._ort.SessionOptions()
        so.intra_op_num_threads = self.cfg.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            sess = self._ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                              providers=list(self.cfg.providers))
        except Exception as e:  # ORT raises its own exception types for corrupt or unsupported models
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TargetError(f"ONNX Runtime cannot load {what or model}: {first}") from None
        if self.accelerator is not None:  # a per-model session can fail to register the GPU provider too
            self._loaded(sess)
        return sess

    def measure(self, model_path: Path) -> LatencyStats:
        t0 = time.perf_counter()
        sess = self.session(model_path)
        t1 = time.perf_counter()
        stats = self.measure_session(sess)
        self.last_timings = {"session": t1 - t0, "measure": time.perf_counter() - t1}
        return stats

    def measure_session(self, sess: Any) -> LatencyStats:
        return run_rounds(self._step(sess), self.cfg, split=self.cfg.scope == "pipeline")

    def _step(self, sess: Any) -> Any:
        """One timed run: the model alone, or decode -> resize -> normalise -> model -> softmax/top-5."""
        if self.cfg.scope == "model":
            feeds = {i.name: _random_input(i, self.cfg.input_shape) for i in sess.get_inputs()}

            def model_only() -> dict[str, float]:
                t0 = time.perf_counter_ns()
                sess.run(None, feeds)
                return {"model": (time.perf_counter_ns() - t0) / 1e6}

            return model_only
        from nas.targets.pipeline import Pipeline

        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else self.cfg.input_shape[i] for i, d in enumerate(inp.shape)]
        pipe = Pipeline(tuple(shape), tuple(self.cfg.source_size))

        def pipeline() -> dict[str, float]:
            t0 = time.perf_counter_ns()
            x = pipe.preprocess()
            t1 = time.perf_counter_ns()
            logits = sess.run(None, {inp.name: x})[0]
            t2 = time.perf_counter_ns()
            pipe.postprocess(logits)
            t3 = time.perf_counter_ns()
            # CPU execution: the input is already in the model's memory, so transfer is 0 here.
            return {"preprocess": (t1 - t0) / 1e6, "transfer": 0.0, "model": (t2 - t1) / 1e6,
                    "postprocess": (t3 - t2) / 1e6}

        return pipeline


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
               "tensor(int8)": np.int8}


def _random_input(node: Any, default_shape: list[int]) -> np.ndarray:
    """Random data for one input; symbolic dimensions take the target's deployment shape."""
    shape = [d if isinstance(d, int) and d > 0 else (default_shape[i] if i < len(default_shape) else 1)
             for i, d in enumerate(node.shape)]
    dtype = _ORT_DTYPES.get(node.type)
    if dtype is None:
        raise TargetError(f"model input {node.name!r} has unsupported type {node.type}")
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 10, size=shape).astype(dtype)
