"""target=edge_tpu: measured on a reachable Edge TPU, else predicted by the calibrated analytic model.

Which of the two is decided once, when the target is made (``target.edgetpu.mode``), and is part of the
fingerprint: predictions and measurements never share a cache entry or a predictor file.
"""

from __future__ import annotations

import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nas.config import TargetConfig
from nas.errors import TargetError
from nas.targets.base import LatencyStats, fingerprint_hash
from nas.targets.edgetpu_device import EdgeTpuDevice, EdgeTpuUnavailable, probe
from nas.targets.litert import litert_versions


class EdgeTpuTarget:
    """``artifact`` is ``tflite`` (int8, to compile and run) with a device, ``onnx`` (to analyse) without."""

    def __init__(self, cfg: TargetConfig) -> None:
        from nas.predictors.edgetpu import EdgeTpuModel

        self.cfg = cfg
        self.name = cfg.name
        et = cfg.edgetpu
        self.reason = "target.edgetpu.mode=predict" if et.mode == "predict" else probe(et.compiler, et.library)
        if et.mode == "measure" and self.reason:
            raise EdgeTpuUnavailable(self.reason)
        self.device = EdgeTpuDevice(cfg, et.compiler, et.library) if self.reason is None else None
        self.model = EdgeTpuModel.load(et.device)
        self.predicted = self.device is None
        self.artifact = "onnx" if self.predicted else "tflite"
        self.last_timings: dict[str, float] = {}
        self.last_estimate: Any = None  # the analytic estimate behind the last predicted latency
        self.last_compile: Any = None  # the compiler's report behind the last measured latency

    @property
    def latency_source(self) -> str:
        return "predicted" if self.predicted else "measured"

    def warning(self) -> str | None:
        """The line a user must see before trusting any figure, when latencies are predicted."""
        if not self.predicted:
            return None
        return (f"WARNING: no Edge TPU measurement ({self.reason}); every {self.name} latency is PREDICTED by the "
                f"analytic Edge TPU model ({self.cfg.edgetpu.device}; leave-one-out error on Coral's published "
                f"figures: median {self.model.rel_error_cached:.0%} for models whose int8 parameters fit the on-chip "
                f"cache, {self.model.rel_error_streaming:.0%} for those that stream, {self.model.rel_error_cpu:.0%} "
                f"for time spent in ops that fall back to the host CPU), not measured")

    def fingerprint(self) -> dict[str, Any]:
        import torch

        fp: dict[str, Any] = {"target": self.cfg.name, "precision": "int8", "batch": self.cfg.input_shape[0],
                              "latency_source": self.latency_source, "edgetpu_device": self.cfg.edgetpu.device}
        if self.predicted:
            fp.update(model=f"analytic Edge TPU model, constants {fingerprint_hash(self.model.to_dict())}",
                      exporter=f"torch {torch.__version__.split('+')[0]} {self.cfg.exporter} opset{self.cfg.opset}")
        else:
            v = litert_versions()
            fp.update(host=platform.machine(), runtime=f"ai-edge-litert {v['ai-edge-litert']} + libedgetpu",
                      converter=f"litert-torch {v['litert-torch']} ai-edge-quantizer {v['ai-edge-quantizer']}",
                      threads=self.cfg.threads, warmup=self.cfg.warmup, repeats=self.cfg.repeats,
                      rounds=self.cfg.rounds)
        return fp

    def measure(self, model_path: Path) -> LatencyStats:
        if model_path.suffix == ".onnx":
            return self.predict(model_path)
        if self.device is None:
            raise TargetError(f"{model_path.name}: a TFLite model needs an Edge TPU to run on ({self.reason}); "
                              "give the ONNX model to get the analytic prediction")
        stats = self.device.measure(model_path)
        self.last_compile = self.device.last_compile
        onnx_twin = model_path.with_suffix(".onnx")  # measure_arch writes both; the prior's error is learned
        self.last_estimate = self._estimate(onnx_twin) if onnx_twin.exists() else None
        return stats

    def prior_ms(self, arch: Any, num_classes: int) -> float:
        """The analytic model's latency for ``arch``: the prior the device's measurements correct."""
        import tempfile

        from nas.build import build_model
        from nas.latency import deploy_shape
        from nas.onnx_export import export_onnx

        with tempfile.TemporaryDirectory(prefix="nas-prior-") as tmp:
            path = export_onnx(build_model(arch, num_classes=num_classes), deploy_shape(self.cfg, arch),
                               Path(tmp) / "prior.onnx", self.cfg.exporter, self.cfg.opset)
            return self._estimate(path).ms

    def predict(self, onnx_path: Path) -> LatencyStats:
        est = self.last_estimate = self._estimate(onnx_path)
        return LatencyStats.predicted(est.ms, est.rel_error)

    def _estimate(self, onnx_path: Path) -> Any:
        from nas.predictors.edgetpu import features_of

        try:
            return self.model.predict(features_of(onnx_path))
        except Exception as e:  # shape inference fails on corrupt or exotic graphs
            raise TargetError(f"cannot analyse {onnx_path.name} for the Edge TPU model: "
                              f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None

    def estimate_dict(self) -> dict[str, Any] | None:
        return asdict(self.last_estimate) if self.last_estimate is not None else None

    def compile_dict(self) -> dict[str, Any] | None:
        if self.last_compile is None:
            return None
        return {k: v for k, v in self.last_compile.to_dict().items() if k not in ("log", "path")}
