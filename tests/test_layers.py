"""The import-layer contract (pyproject.toml, [tool.importlinter]) holds: each layer imports only the layers below
it, and no package has an import cycle."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_layers_are_kept():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "check_layers.py")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in res.stdout


def test_registering_the_built_ins_is_what_makes_them_known():
    """config imports no implementation: a fresh interpreter that imports only nas.config knows no target."""
    code = ("from nas.core.registry import targets\nimport nas.config\nprint(targets.names())\n"
            "from nas import builtins\nbuiltins.register(plugins=False)\nprint(targets.names())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    before, after = res.stdout.strip().splitlines()
    assert before == "[]"
    assert after == "['edgetpu', 'litert', 'onnxruntime', 'openvino', 'remote', 'tvm']"
