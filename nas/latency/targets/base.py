"""A target is one backend: a device and a runtime, and everything about them.

It owns which file it runs (ONNX, int8 QDQ ONNX, TFLite), how a built model becomes that file (``prepare``), how
that file is timed (``measure -> Measurement``), whether its latencies are measured or predicted, the warning a
user must see, its analytic prior, how an int8 model's accuracy is evaluated as deployed, and which files an
export bundle gets. Backends register under a name with their config dataclass (``@targets.register``); adding a
device means one backend file, its config and its YAML.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nas.config import Precision, Scope, TargetConfig
from nas.core.errors import TargetError
from nas.core.registry import targets
from nas.core.stats import LatencyStats, fingerprint_hash  # noqa: F401  (backends import it from here)

if TYPE_CHECKING:
    import torch

    from nas.core.arch import Arch
    from nas.data.datasets import Splits


@dataclass(frozen=True)
class Measurement:
    """What a target returns for one model file: the statistics, how they were obtained, and where time went."""

    stats: LatencyStats
    details: dict[str, Any] = field(default_factory=dict)  # conversion check, Edge TPU estimate, compile report
    timings: dict[str, float] = field(default_factory=dict)  # seconds: session, compile, measure, ...


@dataclass(frozen=True)
class Prepared:
    """The file a target runs, made from a built model, and what making it found out."""

    path: Path
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Target(ABC):
    """Base class of every target backend (as Optuna's ``BaseSampler`` is of samplers)."""

    file_format: ClassVar[str] = "onnx"  # what ``measure`` runs: onnx or tflite
    predicted: bool = False  # True: latencies come from a model of the device, none ran it
    local: bool = True  # timed on this machine's CPU, so other workers' load here would skew it
    # Served by `nas agent` as ``runtime=<registered name>``; `installed()` says whether this machine can run it.
    agent_runtime: ClassVar[bool] = False

    @classmethod
    def installed(cls) -> bool:
        """Whether the packages this backend imports are present (the agent lists only those in ``/info``)."""
        return True

    def __init__(self, cfg: TargetConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name

    # -- identity -----------------------------------------------------------------------------------------------
    @abstractmethod
    def facts(self) -> dict[str, Any]:
        """What identifies the device and runtime (device, runtime and versions, providers, ...)."""

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes a measurement: ``facts()`` and the shared measuring protocol."""
        return {"target": self.cfg.name, **self.facts(), **protocol(self.cfg, exporter=self.file_format == "onnx")}

    @property
    def latency_source(self) -> str:
        return "predicted" if self.predicted else "measured"

    def warning(self) -> str | None:
        """A line every command prints before any figure (e.g. that latencies are predicted)."""
        return None

    # -- the file it runs ---------------------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module, onnx_path: Path, shape: tuple[int, int, int, int],
                data: Splits | None) -> Prepared:
        """The file to measure, from the built ``model`` and its ONNX export at ``shape``. The default runs the
        ONNX file itself, statically quantized to int8 QDQ first with ``precision=int8`` (calibrated on ``data``)."""
        if self.cfg.precision != Precision.int8:
            return Prepared(onnx_path)
        import time

        from nas.latency.quantize import calibration_batches, quantize_int8

        t0 = time.perf_counter()
        path = quantize_int8(onnx_path, onnx_path.with_name("int8-" + onnx_path.name), calibration_batches(shape, data))
        return Prepared(path, seconds=time.perf_counter() - t0)

    def accepts(self, path: Path) -> None:
        """Raise ``TargetError`` with what to give instead when ``nas measure model=path`` cannot be run here."""
        if path.suffix != f".{self.file_format}":
            raise TargetError(f"model={path}: target {self.name} runs {self.file_format.upper()} files "
                              f"(give a .{self.file_format} file, or arch=NAME to convert one of our candidates)")

    @abstractmethod
    def measure(self, path: Path) -> Measurement:
        """Latency of the file ``prepare`` made (or a user's file of the same format)."""

    # -- what else a backend knows ------------------------------------------------------------------------------
    def prior_ms(self, arch: Arch, num_classes: int) -> float | None:
        """An analytic latency for ``arch`` that measurements correct (the search's gate uses it); None: none."""
        return None

    prior_error: float = 0.0  # the prior's typical relative error

    @property
    def has_prior(self) -> bool:
        return False

    @classmethod
    def deployed_top1(cls, cfg: TargetConfig, model: torch.nn.Module, data: Splits, batch_size: int) -> float | None:
        """Top-1 of the trained model as this target deploys it (int8), or None when that is the float model."""
        if cfg.precision != Precision.int8:
            return None
        from nas.latency.quantize import int8_top1

        return int8_top1(model, data, batch_size)

    # Class methods (also deployed_top1): `nas export` re-evaluates and writes bundles from the stored set-up,
    # without reaching the device.
    @classmethod
    def bundle_files(cls, cfg: TargetConfig, model: torch.nn.Module, shape: tuple[int, int, int, int],
                     out: Path) -> dict[str, Any]:
        """Extra deployable files for the export bundle (written into ``out``); their description for the card."""
        return {}

    @classmethod
    def deploy_note(cls, cfg: TargetConfig) -> str:
        """What the training team must do to deploy the trained model in the form whose latency was measured."""
        if cfg.precision == Precision.int8:
            return ("; the latency was measured on its int8 QDQ form (ONNX Runtime static quantization), so quantize "
                    "the trained model the same way")
        return ""


def protocol(cfg: TargetConfig, exporter: bool = True) -> dict[str, Any]:
    """The measuring protocol every target's fingerprint shares: two set-ups that differ here never share a figure."""
    import torch

    fp: dict[str, Any] = {
        "threads": cfg.threads, "precision": str(cfg.precision), "batch": cfg.input_shape[0],
        "warmup": cfg.warmup, "repeats": cfg.repeats, "rounds": cfg.rounds,
        "stopping": f"{cfg.statistic} within ±{cfg.tolerance:g}, <= {cfg.max_rounds} rounds, <= {cfg.time_limit_s:g} s",
        "scope": str(cfg.scope) if cfg.scope == Scope.model else f"pipeline from {list(cfg.source_size)} JPEG",
    }
    if exporter:
        fp["exporter"] = f"torch {torch.__version__.split('+')[0]} {cfg.exporter} opset{cfg.opset}"
    return fp




def make_target(cfg: TargetConfig) -> Target:
    """The registered backend ``cfg.backend``, built from its config (it may fail here, in one line)."""
    return targets.get(cfg.backend).factory(cfg)


def deploy_shape(cfg: TargetConfig, arch: Arch) -> tuple[int, int, int, int]:
    """The target's batch and channels at the arch's resolution."""
    return (cfg.input_shape[0], cfg.input_shape[1], arch.resolution, arch.resolution)
