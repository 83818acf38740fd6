"""LiteRT (TFLite) interpreter target: int8 or float TFLite models on this CPU (XNNPACK), or on an ARM board via
the agent. The model file is a ``.tflite`` made by :mod:`nas.tflite_convert`."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from nas.config import TargetConfig
from nas.errors import TargetError, first_line
from nas.targets.base import LatencyStats
from nas.targets.ort import cpu_model
from nas.targets.timing import run_rounds


def litert_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ai-edge-litert", "litert-torch", "ai-edge-quantizer"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


def random_feed(detail: dict[str, Any]) -> np.ndarray:
    """Seeded random data of an interpreter input's shape and type."""
    rng = np.random.default_rng(0)
    shape, dtype = tuple(int(d) for d in detail["shape"]), detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


class LiteRtTarget:
    """Measures ``.tflite`` files with the LiteRT interpreter, fixed threads, as the ONNX Runtime target does."""

    artifact = "tflite"

    def __init__(self, cfg: TargetConfig) -> None:
        if cfg.scope != "model":
            raise TargetError(f"target {cfg.name}: scope={cfg.scope} is not supported for TFLite; use scope=model")
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError as e:
            raise TargetError(f"target {cfg.name}: the LiteRT interpreter is missing ({e}); "
                              "pip install 'ai-edge-litert>=2.3'") from None
        self.cfg = cfg
        self.name = cfg.name
        self.last_timings: dict[str, float] = {}

    def fingerprint(self) -> dict[str, Any]:
        import torch

        v = litert_versions()
        return {
            "target": self.cfg.name,
            "device": cpu_model(),
            "machine": platform.machine(),
            "runtime": f"ai-edge-litert {v['ai-edge-litert']}",
            "converter": f"torch {torch.__version__.split('+')[0]} litert-torch {v['litert-torch']} "
                         f"ai-edge-quantizer {v['ai-edge-quantizer']}",
            "threads": self.cfg.threads,
            "precision": self.cfg.precision,
            "batch": self.cfg.input_shape[0],
            "warmup": self.cfg.warmup,
            "repeats": self.cfg.repeats,
            "rounds": self.cfg.rounds,
            "scope": "model",
        }

    def interpreter(self, model_path: Path, delegates: list[Any] | None = None) -> Any:
        from nas.tflite_convert import interpreter

        try:
            return interpreter(model_path, self.cfg.threads, delegates)
        except (ValueError, RuntimeError) as e:
            raise TargetError(f"LiteRT cannot load {model_path}: {first_line(e)}") from None

    def measure(self, model_path: Path) -> LatencyStats:
        t0 = time.perf_counter()
        it = self.interpreter(model_path)
        t1 = time.perf_counter()
        stats = time_interpreter(it, self.cfg)
        self.last_timings = {"session": t1 - t0, "measure": time.perf_counter() - t1}
        return stats


def time_interpreter(it: Any, cfg: TargetConfig) -> LatencyStats:
    """Warm-up and timed ``invoke()`` rounds on fixed random inputs."""
    for d in it.get_input_details():
        it.set_tensor(d["index"], random_feed(d))

    def step() -> dict[str, float]:
        t0 = time.perf_counter_ns()
        it.invoke()
        return {"model": (time.perf_counter_ns() - t0) / 1e6}

    return run_rounds(step, cfg)
