"""Check the import-layer contract of ``nas`` (pyproject.toml, ``[tool.importlinter]``) with import-linter.

The installed package maps the repo's top-level ``predictors/`` and ``search_spaces/`` into ``nas`` (one import
namespace), but import-linter reads a package from one folder. So this assembles the package as it installs (the
three folders, copied into a temporary ``nas/``) and runs ``lint-imports`` on that copy. Run from .ci/run:

    python tools/check_layers.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="nas-layers-") as tmp:
        pkg = Path(tmp) / "nas"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.csv", "*.json")
        shutil.copytree(ROOT / "nas", pkg, ignore=ignore)
        for sub in ("predictors", "search_spaces"):
            shutil.copytree(ROOT / sub, pkg / sub, ignore=ignore)
        env = {**os.environ, "PYTHONPATH": tmp}
        lint = Path(sys.executable).with_name("lint-imports")
        return subprocess.call([str(lint), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tmp, env=env)


if __name__ == "__main__":
    sys.exit(main())
