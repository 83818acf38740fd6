"""Coral Edge TPU backend (``target=edge_tpu``): measured on a reachable Edge TPU, else predicted by the calibrated
analytic model.

Which of the two is decided once, when the target is made (``target.edgetpu.mode``), and is part of the
fingerprint: predictions and measurements never share a cache entry or a predictor file.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from nas.config import Precision, Scope, TargetConfig, require
from nas.core.errors import CandidateFailed, TargetError, first_line
from nas.latency.targets.base import (
    LatencyStats,
    Measurement,
    Prepared,
    Target,
    deploy_shape,
    fingerprint_hash,
    targets,
)
from nas.latency.targets.edgetpu_device import EdgeTpuDevice, EdgeTpuUnavailable, probe
from nas.latency.targets.litert import TfliteFiles, litert_versions


class EdgeTpuClock(StrEnum):
    """Coral's runtime builds: libedgetpu1-std (the default install) or libedgetpu1-max (maximum frequency)."""

    std = "std"
    max = "max"


class EdgeTpuMode(StrEnum):
    auto = "auto"  # measure when an Edge TPU is reachable, else predict
    predict = "predict"
    measure = "measure"  # require a device


@dataclass
class EdgeTpuOptions:
    mode: EdgeTpuMode = EdgeTpuMode.auto
    compiler: str = "edgetpu_compiler"  # name on PATH, or a path
    library: str | None = None  # the Edge TPU runtime (libedgetpu.so.1 on Linux) when not the platform default


@dataclass
class EdgeTpuConfig(TargetConfig):
    backend: str = "edgetpu"
    precision: Precision = Precision.int8
    # The computer the accelerator is plugged into (its link streams the weights that do not fit on chip, its CPU
    # runs the ops that fall back): desktop_usb3, dev_board, rpi4_usb3, rpi4_usb2, rpi3_usb2.
    host: str = "desktop_usb3"
    clock: EdgeTpuClock = EdgeTpuClock.std
    edgetpu: EdgeTpuOptions = field(default_factory=EdgeTpuOptions)

    def __post_init__(self) -> None:
        super().__post_init__()
        from nas.predictors.edgetpu_model import known_hosts

        require(self.host in known_hosts(), f"target.host={self.host}: use one of {', '.join(known_hosts())}")
        require(self.precision == Precision.int8, f"target.precision={self.precision}: the Edge TPU runs int8 only")
        require(self.scope == Scope.model, f"target.scope={self.scope}: the Edge TPU target measures scope=model only")


@targets.register("edgetpu", EdgeTpuConfig, option=False)
class EdgeTpuTarget(TfliteFiles, Target):
    """Runs int8 TFLite files (compiled) with a device; analyses the ONNX file without one."""

    cfg: EdgeTpuConfig

    def __init__(self, cfg: EdgeTpuConfig) -> None:
        super().__init__(cfg)
        from nas.predictors.edgetpu_model import EdgeTpuModel

        et = cfg.edgetpu
        self.reason = "target.edgetpu.mode=predict" if et.mode == EdgeTpuMode.predict else probe(et.compiler,
                                                                                                  et.library)
        if et.mode == EdgeTpuMode.measure and self.reason:
            raise EdgeTpuUnavailable(self.reason)
        self.device = EdgeTpuDevice(cfg, et.compiler, et.library) if self.reason is None else None
        self.model = EdgeTpuModel.load(cfg.host, str(cfg.clock))
        self.predicted = self.device is None
        self.local = not self.predicted  # a prediction takes no timing
        self.file_format = "onnx" if self.predicted else "tflite"  # type: ignore[misc]  (decided per instance)
        self.prior_error = self.model.rel_error

    def warning(self) -> str | None:
        if not self.predicted:
            return None
        m, host = self.model, self.model.facts
        thin = f"; {host.warning()}" if host.warning() else ""
        return (f"WARNING: no Edge TPU measurement ({self.reason}); every {self.name} latency is PREDICTED by the "
                f"analytic Edge TPU model for host {self.cfg.host}, {self.cfg.clock} clock (leave-one-architecture-"
                f"out error on published Coral timings: median {m.rel_error:.0%} over {host.rows} rows of this "
                f"host; {m.rel_error_cpu:.0%} for time in ops that fall back to the host CPU){thin}, not measured")

    def facts(self) -> dict[str, Any]:
        if self.predicted:
            return {"latency_source": "predicted", "host": self.cfg.host, "clock": str(self.cfg.clock),
                    "model": f"analytic Edge TPU model, constants {fingerprint_hash(self.model.to_dict())}"}
        v = litert_versions()
        return {"latency_source": "measured", "host_computer": self.cfg.host, "clock": str(self.cfg.clock),
                "host": platform.machine(), "runtime": f"ai-edge-litert {v['ai-edge-litert']} + libedgetpu",
                "converter": f"litert-torch {v['litert-torch']} ai-edge-quantizer {v['ai-edge-quantizer']}",
                **self.device.facts()}

    def fingerprint(self) -> dict[str, Any]:
        if not self.predicted:
            return super().fingerprint()
        import torch

        # A prediction has no timing protocol; it depends on the graph, hence the exporter.
        return {"target": self.cfg.name, "precision": "int8", "batch": self.cfg.input_shape[0], **self.facts(),
                "exporter": f"torch {torch.__version__.split('+')[0]} {self.cfg.exporter} opset{self.cfg.opset}"}

    def prepare(self, model: Any, onnx_path: Path, shape: tuple[int, int, int, int], data: Any) -> Prepared:
        if self.predicted:
            return Prepared(onnx_path)  # the analytic model reads the ONNX graph
        return super().prepare(model, onnx_path, shape, data)

    def accepts(self, path: Path) -> None:
        if path.suffix == ".tflite" and self.device is None:
            raise TargetError(f"{path.name}: a TFLite model needs an Edge TPU to run on ({self.reason}); give the "
                              "ONNX model to get the analytic prediction")
        if path.suffix not in (".onnx", ".tflite"):
            raise TargetError(f"model={path}: target {self.name} takes .onnx (predicted) or .tflite (on a device)")

    def measure(self, path: Path) -> Measurement:
        if path.suffix == ".onnx":
            est = self._estimate(path)
            return Measurement(LatencyStats.predicted(est.ms, est.rel_error), {"estimate": asdict(est)})
        assert self.device is not None
        m = self.device.measure(path)
        onnx_twin = path.with_suffix(".onnx")  # measure_arch writes both; the prior's error is learned from it
        if onnx_twin.exists():
            m.details["estimate"] = asdict(self._estimate(onnx_twin))
        return m

    @property
    def has_prior(self) -> bool:
        return not self.predicted

    def prior_ms(self, arch: Any, num_classes: int) -> float | None:
        """With a device: the analytic model's latency for ``arch``, which the device's measurements correct."""
        if self.predicted:
            return None
        import tempfile

        from nas.latency.onnx_export import export_onnx
        from nas.search_spaces.build import build_model

        with tempfile.TemporaryDirectory(prefix="nas-prior-") as tmp:
            path = export_onnx(build_model(arch, num_classes=num_classes), deploy_shape(self.cfg, arch),
                               Path(tmp) / "prior.onnx", str(self.cfg.exporter), self.cfg.opset)
            return self._estimate(path).ms

    def _estimate(self, onnx_path: Path) -> Any:
        from nas.predictors.edgetpu_model import features_of

        try:
            return self.model.predict(features_of(onnx_path))
        except Exception as e:  # shape inference fails on corrupt or exotic graphs
            raise CandidateFailed(f"cannot analyse {onnx_path.name} for the Edge TPU model: {first_line(e)[:200]}"
                                  ) from None

    @classmethod
    def bundle_files(cls, cfg: TargetConfig, model: Any, shape: tuple[int, int, int, int],
                     out: Path) -> dict[str, Any]:
        from nas.latency.targets.edgetpu_device import compile_model, find_compiler

        doc = super().bundle_files(cfg, model, shape, out)
        name = doc["tflite"]["file"]
        try:
            report = compile_model(out / name, out, find_compiler(cfg.edgetpu.compiler))
            doc["edgetpu_compile"] = {k: v for k, v in report.to_dict().items() if k != "log"}
            doc["edgetpu_compile"]["path"] = report.path.name
        except EdgeTpuUnavailable as e:
            doc["edgetpu_compile"] = f"not compiled here ({e}); on a machine with the compiler: edgetpu_compiler {name}"
        return doc
