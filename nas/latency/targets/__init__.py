"""Target backends, one module each; ``nas.builtins`` imports the built-in ones, which registers them."""

from nas.latency.targets.base import Measurement, Prepared, Target, make_target, targets

__all__ = ["Measurement", "Prepared", "Target", "make_target", "targets"]
