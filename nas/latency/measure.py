"""Latency of an ``Arch`` on a target: build with timm, export to ONNX at the deployment shape, measure."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from nas.config import Precision
from nas.core.arch import Arch
from nas.core.workers import host_lock, scratch_prefix
from nas.data.datasets import Splits
from nas.latency.cache import MeasurementCache
from nas.latency.onnx_export import GraphStats, export_onnx, graph_stats
from nas.latency.targets.base import LatencyStats, Target, deploy_shape
from nas.search_spaces.build import build_model, count_params


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
    path = Path(tempfile.mkdtemp(prefix=scratch_prefix(), dir=workdir))  # names its process: see nas.core.workers
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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


def measure_arch(arch: Arch, target: Target, cache: MeasurementCache, scratch: Path, num_classes: int,
                 data: Splits | None = None, lock: Callable[[], AbstractContextManager] | None = None
                 ) -> ArchLatency:
    """Measured (or, for a predicting target, predicted) latency of ``arch``; from the cache when known.

    The model is built and exported to ONNX at the deployment shape (the graph's size figures come from it); the
    target then makes the file it runs (``prepare``: the ONNX itself, int8 QDQ, TFLite) and times it. Without a
    dataset, int8 calibration uses seeded noise: the scales change, the operators and so the latency do not.
    ``lock()`` is held while the file is timed (and only then); by default the host lock on a local target, so that
    ``nas measure``, ``nas predictor fit`` and ``nas runtimes`` never time a model while a search trains here.
    """
    cfg = target.cfg
    fp = setup_fingerprint(target, num_classes)
    hit = cache.get(arch.hash, fp)
    if hit is not None:
        stats, extra = hit
        return ArchLatency(stats, GraphStats(**extra["graph"]), cached=True, details=extra.get("details", {}))
    t0 = time.perf_counter()
    model = build_model(arch, num_classes=num_classes)
    t1 = time.perf_counter()
    params = count_params(model)
    shape = deploy_shape(cfg, arch)
    onnx_path = export_onnx(model, shape, scratch / "candidate.onnx", str(cfg.exporter), cfg.opset,
                            fp16=cfg.precision == Precision.fp16)
    t2 = time.perf_counter()
    # timm's parameter count (BatchNorm included), not the ONNX one (BatchNorm folded into convolutions).
    graph = replace(graph_stats(onnx.load(str(onnx_path))), params=params)
    t3 = time.perf_counter()
    prepared = target.prepare(model, onnx_path, shape, data)
    t4 = time.perf_counter()
    if lock is None:
        lock = lambda: host_lock(True, target.local)  # noqa: E731
    with lock():
        t5 = time.perf_counter()  # t5 - t4: waiting for the host lock (other workers' training or measuring)
        m = target.measure(prepared.path)
    details = {**prepared.details, **m.details}
    cache.put(arch.hash, fp, m.stats, {"graph": graph.__dict__, "arch": arch.to_dict(), "details": details})
    timings = {"build": t1 - t0, "export": t2 - t1, "graph": t3 - t2, "prepare": prepared.seconds,
               "wait_measure": t5 - t4, "measure": time.perf_counter() - t5, **m.timings}
    return ArchLatency(m.stats, graph, cached=False, timings=timings, details=details)
