"""LiteRT (TFLite) interpreter backend (``target=tflite_cpu``): int8 or float TFLite models on this CPU (XNNPACK), or
on an ARM board via the agent. The model file is a ``.tflite`` made by :mod:`nas.latency.tflite_convert`."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.config import Precision, Scope, TargetConfig, require
from nas.core.errors import CandidateFailed, TargetError, first_line
from nas.latency.targets.base import LatencyStats, Measurement, Prepared, Target, targets
from nas.latency.targets.ort import cpu_model
from nas.latency.targets.timing import run_rounds


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


class TfliteFiles:
    """What every target that runs TFLite files shares: conversion, int8 accuracy as deployed, bundle files."""

    cfg: TargetConfig
    agent_runtime = True  # the agent runs TFLite files it is sent (and compiles them for its Edge TPU)

    @classmethod
    def installed(cls) -> bool:
        return litert_versions()["ai-edge-litert"] != "missing"

    def prepare(self, model: Any, onnx_path: Path, shape: tuple[int, int, int, int], data: Any) -> Prepared:
        from nas.latency.quantize import calibration_batches
        from nas.latency.tflite_convert import to_tflite

        conv = to_tflite(model, shape, onnx_path.with_suffix(".tflite"), str(self.cfg.precision),
                         calibration_batches(shape, data))
        return Prepared(conv.path, {"conversion": {k: v for k, v in conv.to_dict().items() if k != "path"}},
                        conv.seconds)

    @classmethod
    def deployed_top1(cls, cfg: TargetConfig, model: Any, data: Any, batch_size: int) -> float | None:
        if cfg.precision != Precision.int8:
            return None
        from nas.latency.tflite_convert import tflite_top1

        return tflite_top1(model, data)[0]

    @classmethod
    def bundle_files(cls, cfg: TargetConfig, model: Any, shape: tuple[int, int, int, int],
                     out: Path) -> dict[str, Any]:
        from nas.latency.tflite_convert import to_tflite

        name = f"model_{cfg.precision}.tflite"
        conv = to_tflite(model, shape, out / name, str(cfg.precision))
        return {"tflite": {"file": name, **{k: v for k, v in conv.to_dict().items() if k != "path"},
                           "calibration": "seeded noise (the weights are random too): re-quantize the trained model "
                                          "with real images"}}

    @classmethod
    def deploy_note(cls, cfg: TargetConfig) -> str:
        p = cfg.precision
        return (f"; the latency is that of its {p} TFLite form (model_{p}.tflite: litert-torch + ai-edge-quantizer), "
                "so convert the trained model alike (nas.latency.tflite_convert.to_tflite, real calibration images)")


@dataclass
class LiteRtConfig(TargetConfig):
    """LiteRT on this CPU: int8 (full-integer) or fp32 TFLite files."""

    backend: str = "litert"
    precision: Precision = Precision.int8

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.precision in (Precision.int8, Precision.fp32),
                f"target.precision={self.precision}: TFLite targets take int8 (full-integer) or fp32")
        require(self.scope == Scope.model, f"target.scope={self.scope}: TFLite targets measure scope=model only")


@targets.register("litert", LiteRtConfig, option=False)
class LiteRtTarget(TfliteFiles, Target):
    """Measures ``.tflite`` files with the LiteRT interpreter, fixed threads, as the ONNX Runtime target does."""

    file_format = "tflite"

    def __init__(self, cfg: TargetConfig) -> None:
        super().__init__(cfg)
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError as e:
            raise TargetError(f"target {cfg.name}: the LiteRT interpreter is missing ({e}); "
                              "pip install 'ai-edge-litert>=2.3'") from None

    def facts(self) -> dict[str, Any]:
        import torch

        v = litert_versions()
        return {
            "device": cpu_model(),
            "machine": platform.machine(),
            "runtime": f"ai-edge-litert {v['ai-edge-litert']}",
            "converter": f"torch {torch.__version__.split('+')[0]} litert-torch {v['litert-torch']} "
                         f"ai-edge-quantizer {v['ai-edge-quantizer']}",
        }

    def interpreter(self, model_path: Path, delegates: list[Any] | None = None) -> Any:
        from nas.latency.tflite_convert import interpreter

        try:
            return interpreter(model_path, self.cfg.threads, delegates)
        except (ValueError, RuntimeError) as e:
            raise CandidateFailed(f"LiteRT cannot load {model_path}: {first_line(e)}") from None

    def measure(self, path: Path) -> Measurement:
        t0 = time.perf_counter()
        it = self.interpreter(path)
        t1 = time.perf_counter()
        stats = time_interpreter(it, self.cfg)
        return Measurement(stats, timings={"session": t1 - t0, "measure": time.perf_counter() - t1})


def time_interpreter(it: Any, cfg: TargetConfig) -> LatencyStats:
    """Warm-up and timed ``invoke()`` rounds on fixed random inputs."""
    for d in it.get_input_details():
        it.set_tensor(d["index"], random_feed(d))

    def step() -> dict[str, float]:
        t0 = time.perf_counter_ns()
        it.invoke()
        return {"model": (time.perf_counter_ns() - t0) / 1e6}

    return run_rounds(step, cfg)
