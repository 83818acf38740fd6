"""Latency of an ``Arch`` on a target: build with timm, export to ONNX at the deployment shape, measure."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from nas.accuracy.datasets import TensorSplits
from nas.arch import Arch
from nas.build import build_model, count_params
from nas.config import TargetConfig
from nas.measure_cache import MeasurementCache
from nas.onnx_export import GraphStats, export_onnx, graph_stats
from nas.targets.base import LatencyStats, Target
from nas.workers import scratch_prefix


@dataclass(frozen=True)
class ArchLatency:
    stats: LatencyStats
    graph: GraphStats
    cached: bool
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step: build, export, measure
    details: dict = field(default_factory=dict)  # conversion check, Edge TPU estimate or compile report


@contextmanager
def scratch_dir(workdir: Path) -> Iterator[Path]:
    """A private folder in ``workdir`` for this process's temporary ONNX files, removed afterwards.

    Private because several search workers may share one workdir.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=scratch_prefix(), dir=workdir))  # names its process: see nas.workers
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def deploy_shape(cfg: TargetConfig, arch: Arch) -> tuple[int, int, int, int]:
    """The target's batch and channels at the arch's resolution."""
    return (cfg.input_shape[0], cfg.input_shape[1], arch.resolution, arch.resolution)


def setup_fingerprint(target: Target, num_classes: int) -> dict:
    """The measurement set-up: the target's fingerprint and the classifier head (the resolution is in the arch)."""
    return {**target.fingerprint(), "num_classes": num_classes}


def measured_archs(cache: MeasurementCache, target: Target, num_classes: int) -> tuple[list[Arch], list[LatencyStats]]:
    """Every arch measured on this set-up so far: the predictor's training set."""
    archs, stats = [], []
    for extra, s in cache.rows(setup_fingerprint(target, num_classes)):
        if "arch" in extra:
            archs.append(Arch.from_dict(extra["arch"]))
            stats.append(s)
    return archs, stats


def measure_arch(arch: Arch, target: Target, cfg: TargetConfig, cache: MeasurementCache, onnx_path: Path,
                 num_classes: int, data: TensorSplits | None = None) -> ArchLatency:
    """Measured (or, for a predicting target, predicted) latency of ``arch``; from the cache when known.

    The target's ``artifact`` says what it runs: the ONNX export (statically quantized first with
    ``precision=int8`` on ONNX Runtime), or a TFLite conversion (int8 calibrated on ``data``). Without a dataset
    calibration uses seeded noise: the scales change, the operators and so the latency do not.
    """
    fp = setup_fingerprint(target, num_classes)
    hit = cache.get(arch.hash, fp)
    if hit is not None:
        stats, extra = hit
        return ArchLatency(stats, GraphStats(**extra["graph"]), cached=True, details=extra.get("details", {}))
    artifact = getattr(target, "artifact", "onnx")
    t0 = time.perf_counter()
    model = build_model(arch, num_classes=num_classes)
    t1 = time.perf_counter()
    params = count_params(model)
    shape = deploy_shape(cfg, arch)
    export_onnx(model, shape, onnx_path, cfg.exporter, cfg.opset, fp16=cfg.precision == "fp16")
    t2 = time.perf_counter()
    # timm's parameter count (BatchNorm included), not the ONNX one (BatchNorm folded into convolutions).
    graph = replace(graph_stats(onnx.load(str(onnx_path))), params=params)
    t3 = time.perf_counter()
    convert_s, details, model_path = 0.0, {}, onnx_path
    if artifact == "tflite":
        from nas.quantize import calibration_batches
        from nas.tflite_convert import to_tflite

        conv = to_tflite(model, shape, onnx_path.with_suffix(".tflite"), cfg.precision,
                         calibration_batches(shape, data))
        model_path, convert_s = conv.path, conv.seconds
        details["conversion"] = {k: v for k, v in conv.to_dict().items() if k != "path"}
    elif cfg.precision == "int8" and cfg.runtime in ("onnxruntime", "agent"):
        from nas.quantize import calibration_batches, quantize_int8

        model_path = quantize_int8(onnx_path, onnx_path.with_name("int8-" + onnx_path.name),
                                   calibration_batches(shape, data))
        convert_s = time.perf_counter() - t3
    t3 = time.perf_counter()
    stats = target.measure(model_path)
    t4 = time.perf_counter()
    for key in ("estimate_dict", "compile_dict"):  # what a target knows about how it got the figure
        if callable(getattr(target, key, None)) and (value := getattr(target, key)()) is not None:
            details[key.removesuffix("_dict")] = value
    cache.put(arch.hash, fp, stats, {"graph": graph.__dict__, "arch": arch.to_dict(), "details": details})
    timings = {"build": t1 - t0, "export": t2 - t1, "graph": t3 - t2 - convert_s, "quantize": convert_s,
               "measure": t4 - t3}
    timings.update(getattr(target, "last_timings", {}))  # a target may split session set-up from timing
    return ArchLatency(stats, graph, cached=False, timings=timings, details=details)
