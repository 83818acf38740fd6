"""Pick the target implementation for a target config."""

from __future__ import annotations

from nas.config import TargetConfig
from nas.errors import TargetError
from nas.targets.base import Target
from nas.targets.onnxruntime_cpu import OnnxRuntimeTarget


def make_target(cfg: TargetConfig) -> Target:
    """The target for ``cfg.runtime``: local ONNX Runtime, or a `nas agent` over HTTP."""
    if cfg.runtime == "agent":
        from nas.targets.remote import RemoteTarget

        target = RemoteTarget(cfg)
        target.info()  # fail now, with one line, when the agent is unreachable or refuses
        return target
    if cfg.runtime != "onnxruntime":
        raise TargetError(f"target.runtime={cfg.runtime} is not supported (use onnxruntime or agent)")
    return OnnxRuntimeTarget(cfg)
