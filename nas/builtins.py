"""The one module that registers the built-in parts: targets, datasets, search spaces, predictors and samplers.

Each part registers itself under its name when its module is imported (``@targets.register("onnxruntime",
OrtConfig)``), so registering the built-ins is importing their modules. Only entry points import this module (the
CLI, ``nas.conf`` for Hydra, the test suite), which keeps ``nas.config`` free of implementations. These modules
import no torch, timm or MLflow at module level: a command that only reads its configuration stays fast.

Adding a target: its backend module (``nas/latency/targets/NAME.py``), its YAML (``conf/target/NAME.yaml``) and one
line here. A plugin outside the repo registers the same way and is named by ``NAS_PLUGINS`` or the ``nas.plugins``
entry-point group (``load_plugins``).
"""

from __future__ import annotations

_done = {"builtins": False, "plugins": False}


def register(plugins: bool = True) -> None:
    """Register the built-in parts, the command schemas and (unless ``plugins=False``) the plugins; idempotent."""
    if not _done["builtins"]:
        _register_builtins()
        _done["builtins"] = True
    if plugins and not _done["plugins"]:
        from nas.core.registry import load_plugins

        _done["plugins"] = True  # a plugin that fails is one line; a retry does not import the others twice
        load_plugins()


def _register_builtins() -> None:
    import nas.data.datasets
    import nas.latency.targets.edgetpu
    import nas.latency.targets.litert
    import nas.latency.targets.openvino
    import nas.latency.targets.ort
    import nas.latency.targets.remote
    import nas.latency.targets.tvm
    import nas.search.samplers
    import nas.search_spaces.factorized  # noqa: F401  (each import above registers its parts)
    from nas.config import register_schemas
    from nas.core.registry import predictors
    from nas.predictors.kernel_sum import KernelSumPredictor
    from nas.predictors.lut import LookupTablePredictor

    for cls in (KernelSumPredictor, LookupTablePredictor):
        if cls.kind not in predictors:
            predictors.register(cls.kind)(cls)
    register_schemas()
