"""ONNX Runtime backend (``target=cpu``, ``target=cuda``): fixed threads, warm-up, timed runs, percentiles."""

from __future__ import annotations

import io
import platform
import sys
import time
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.config import TargetConfig
from nas.core.errors import CandidateFailed, TargetError, first_line
from nas.latency.targets.base import Measurement, Target, targets
from nas.latency.targets.gpu import (
    GPU_INSTALL,
    clash,
    gpu_name,
    installed_builds,
    load_failure,
    native_stderr,
    preload_cuda_libraries,
    unloaded_gpu_providers,
    wants_gpu,
)
from nas.latency.targets.timing import DriftProbe, measure_with_drift_check, run_rounds


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _probe_model() -> bytes:
    """A one-op ONNX model: enough for ONNX Runtime to register (or fail to register) each provider."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@dataclass
class OrtConfig(TargetConfig):
    """ONNX Runtime on this machine: the execution providers in order of preference."""

    backend: str = "onnxruntime"
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])


def _drift_workload() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, cin in enumerate((3, 32, 32)):
        w = numpy_helper.from_array(rng.standard_normal((32, cin, 3, 3)).astype(np.float32) * 0.1, f"w{i}")
        inits.append(w)
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 32, 32, 32])
    model = helper.make_model(helper.make_graph(nodes, "drift_probe", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@targets.register("onnxruntime", OrtConfig, option=False)
class OnnxRuntimeTarget(Target):
    """Measures ONNX models with an ``InferenceSession`` on the configured execution providers.

    On a GPU provider, ``run`` takes and returns host arrays and returns once the output is back on the host, so
    every timed run is synchronised with the device and includes the input and output copies.
    """

    agent_runtime = True

    cfg: OrtConfig

    def __init__(self, cfg: OrtConfig) -> None:
        super().__init__(cfg)
        import onnxruntime as ort

        self.gpu = wants_gpu(list(cfg.providers))
        if self.gpu:
            preload_cuda_libraries(ort)
        missing = [p for p in cfg.providers if p not in ort.get_available_providers()]
        if missing:
            hint = ""
            if wants_gpu(missing):
                hint = " " + (clash(installed_builds()) or f"install the GPU build: {GPU_INSTALL}")
            raise TargetError(f"target {cfg.name}: ONNX Runtime here lacks {missing} "
                              f"(available: {ort.get_available_providers()});{hint}")
        self._ort = ort
        self.accelerator: str | None = None
        # What a session really registers: the fingerprint names those, never merely the requested ones.
        self.providers = list(self.session(_probe_model(), "a one-op probe model").get_providers())
        if wants_gpu(self.providers):
            self.accelerator = gpu_name()
        self.drift_probe = self._drift_probe() if cfg.drift_tolerance > 0 else None

    def facts(self) -> dict[str, Any]:
        return {
            "device": cpu_model(),
            "machine": platform.machine(),
            "runtime": f"onnxruntime {self._ort.__version__}",
            "providers": self.providers,
            # Two GPUs behind the same host CPU must never share a measurement.
            **({"accelerator": self.accelerator} if self.accelerator else {}),
        }

    def session(self, model: Path | bytes, what: str = "") -> Any:
        so = self._ort.SessionOptions()
        so.intra_op_num_threads = self.cfg.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if not self.gpu:
            return self._create(model, so, what)
        # ONNX Runtime says why a provider did not load in its native log, and in prints of its Python wrapper.
        with native_stderr() as log, redirect_stdout(io.StringIO()) as printed:
            sess = self._create(model, so, what)
        log += printed.getvalue().splitlines()
        missing = unloaded_gpu_providers(list(self.cfg.providers), list(sess.get_providers()))
        if missing:  # ONNX Runtime would quietly time the CPU instead
            why = clash(installed_builds()) or load_failure(log)
            raise TargetError(f"target {self.cfg.name}: ONNX Runtime could not load {missing}: {why}")
        if log:
            print("\n".join(log), file=sys.stderr)
        return sess

    def _create(self, model: Path | bytes, so: Any, what: str) -> Any:
        try:
            return self._ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                              providers=list(self.cfg.providers))
        except Exception as e:  # ORT raises its own exception types for corrupt or unsupported models
            raise CandidateFailed(f"ONNX Runtime cannot load {what or model}: {first_line(e)}") from None

    def measure(self, path: Path) -> Measurement:
        t0 = time.perf_counter()
        sess = self.session(path)
        t1 = time.perf_counter()
        step = self._step(sess)
        try:
            stats, drift = measure_with_drift_check(
                lambda: run_rounds(step, self.cfg, split=self.cfg.scope == "pipeline"), self.drift_probe,
                self.cfg.drift_tolerance)
        except self._ort_errors() as e:  # a model that loads but cannot run (a shape it cannot take)
            raise CandidateFailed(f"ONNX Runtime cannot run {path.name}: {first_line(e)}") from None
        return Measurement(stats, {"drift": drift} if drift else {},
                           timings={"session": t1 - t0, "measure": time.perf_counter() - t1})

    def _drift_probe(self) -> DriftProbe:
        """Three small convolutions (about 1-2 ms on one core) in a session like the candidates'."""
        sess = self.session(_drift_workload(), "the drift probe")
        feeds = {i.name: _random_input(i, [1, 3, 32, 32]) for i in sess.get_inputs()}
        return DriftProbe(lambda: sess.run(None, feeds))

    def _ort_errors(self) -> tuple[type[BaseException], ...]:
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

        return (Fail, InvalidArgument, RuntimeException)

    def _step(self, sess: Any) -> Any:
        """One timed run: the model alone, or decode -> resize -> normalise -> model -> softmax/top-5."""
        if self.cfg.scope == "model":
            feeds = {i.name: _random_input(i, self.cfg.input_shape) for i in sess.get_inputs()}

            def model_only() -> dict[str, float]:
                t0 = time.perf_counter_ns()
                sess.run(None, feeds)
                return {"model": (time.perf_counter_ns() - t0) / 1e6}

            return model_only
        from nas.latency.targets.pipeline import Pipeline

        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else self.cfg.input_shape[i] for i, d in enumerate(inp.shape)]
        pipe = Pipeline(tuple(shape), tuple(self.cfg.source_size), dtype=_ORT_DTYPES.get(inp.type, np.float32))
        if self.accelerator is not None:
            return io_bound_pipeline(self._ort, sess, pipe, "cuda")

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

def io_bound_pipeline(ort: Any, sess: Any, pipe: Any, device: str) -> Any:
    """A pipeline step whose copies to and from ``device`` memory are timed apart from the model (I/O binding)."""
    name = sess.get_inputs()[0].name
    outputs = [o.name for o in sess.get_outputs()]

    def pipeline() -> dict[str, float]:
        t0 = time.perf_counter_ns()
        x = pipe.preprocess()
        t1 = time.perf_counter_ns()
        x_dev = ort.OrtValue.ortvalue_from_numpy(x, device, 0)  # host -> device, returns when copied
        t2 = time.perf_counter_ns()
        binding = sess.io_binding()
        binding.bind_ortvalue_input(name, x_dev)
        for o in outputs:
            binding.bind_output(o, device, 0)  # outputs stay on the device until copied below
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        t3 = time.perf_counter_ns()
        logits = binding.copy_outputs_to_cpu()[0]  # device -> host
        t4 = time.perf_counter_ns()
        pipe.postprocess(logits)
        t5 = time.perf_counter_ns()
        return {"preprocess": (t1 - t0) / 1e6, "transfer": (t2 - t1 + t4 - t3) / 1e6, "model": (t3 - t2) / 1e6,
                "postprocess": (t5 - t4) / 1e6}

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
