"""``import nas.timm_models`` registers every exported model of a workdir with timm (``nas_cpu_10ms``, ...).

The workdir is ``$NAS_WORKDIR``, else ``./nas-workdir`` (the search's default). Each export bundle's
``timm_register.py`` is imported by path; the bundles themselves need no ``nas`` (see nas/timm_module.py).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from nas import names


def register_exports(workdir: Path) -> dict[str, ModuleType]:
    """Import each bundle's registration module under ``workdir/exports``; returns them by timm name."""
    out = {}
    for path in sorted((workdir / "exports").glob(f"*/{names.TIMM_MODULE}")):
        module_name = f"nas_timm_{path.parent.name.replace('-', '_').replace('.', 'p')}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # timm's register_model looks the entry point's module up there
        spec.loader.exec_module(module)
        out[module.NAME] = module
    return out


registered = register_exports(Path(os.environ.get("NAS_WORKDIR", "nas-workdir")).expanduser())
