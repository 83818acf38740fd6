"""Register every exported model of a workdir with timm (``nas_cpu_10ms``, ...), on request; nothing on import:

    from nas.export.timm_models import register_exports
    register_exports("nas-workdir")  # then timm.create_model("nas_cpu_10ms")

Each export bundle's ``timm_register.py`` is imported by path; the bundles themselves need no ``nas`` (see
search_spaces/timm_module.py).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from nas.core import names


def register_exports(workdir: str | Path = "nas-workdir") -> dict[str, ModuleType]:
    """Import each bundle's registration module under ``workdir/exports``; returns them by timm name."""
    out = {}
    for path in sorted((Path(workdir).expanduser() / "exports").glob(f"*/{names.TIMM_MODULE}")):
        module_name = f"nas_timm_{path.parent.name.replace('-', '_').replace('.', 'p')}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # timm's register_model looks the entry point's module up there
        spec.loader.exec_module(module)
        out[module.NAME] = module
    return out

