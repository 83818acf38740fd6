"""Pick the target implementation for a target config."""

from __future__ import annotations

from nas.config import TargetConfig
from nas.errors import TargetError
from nas.targets.base import Target
from nas.targets.ort import OnnxRuntimeTarget


def make_target(cfg: TargetConfig) -> Target:
    """The target for ``cfg.runtime``: ONNX Runtime, LiteRT, the Edge TPU, or a `nas agent` over HTTP."""
    if cfg.runtime == "agent":
        from nas.targets.remote import RemoteTarget

        target = RemoteTarget(cfg)
        target.info()  # fail now, with one line, when the agent is unreachable or refuses
        return target
    if cfg.runtime == "litert":
        from nas.targets.litert import LiteRtTarget

        return LiteRtTarget(cfg)
    if cfg.runtime == "edgetpu":
        from nas.targets.edgetpu import EdgeTpuTarget

        return EdgeTpuTarget(cfg)
    if cfg.runtime != "onnxruntime":
        raise TargetError(f"target.runtime={cfg.runtime} is not supported")
    return OnnxRuntimeTarget(cfg)
