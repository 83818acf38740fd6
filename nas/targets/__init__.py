"""Target backends: importing this package registers the built-in ones (``nas.targets.base.targets``)."""

from nas.targets import edgetpu, litert, openvino, ort, remote, tvm  # noqa: F401
from nas.targets.base import Measurement, Prepared, Target, make_target, targets

__all__ = ["Measurement", "Prepared", "Target", "make_target", "targets"]
