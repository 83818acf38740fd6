"""A new target, added through the public registry from outside the package, runs `nas measure` and `nas search`."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import FAST, last_json, run_nas

TOY = textwrap.dedent('''
    """A toy backend: its "device" takes ms_per_mb milliseconds per megabyte of model file."""
    from dataclasses import dataclass
    from pathlib import Path

    from nas.config import TargetConfig
    from nas.latency.targets import Measurement, Target, targets
    from nas.core.stats import LatencyStats


    @dataclass
    class ToyConfig(TargetConfig):
        name: str = "toy"
        backend: str = "toy"
        ms_per_mb: float = 1.0


    @targets.register("toy", ToyConfig)
    class ToyTarget(Target):
        agent_runtime = True  # `nas agent` serves it as runtime=toy

        def facts(self):
            return {"device": "toy device", "ms_per_mb": self.cfg.ms_per_mb}

        def measure(self, path: Path) -> Measurement:
            ms = path.stat().st_size / 1e6 * self.cfg.ms_per_mb
            return Measurement(LatencyStats.from_samples([ms] * self.cfg.repeats))
''')


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    (tmp_path / "toy_target.py").write_text(TOY)
    monkeypatch.setenv("NAS_PLUGINS", "toy_target")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return tmp_path


def test_a_plugin_target_measures(plugin_env):
    res = run_nas("measure", "arch=mobilenetv3_small_100", "target=toy", "target.ms_per_mb=2", "format=json",
                  "num_classes=10", f"workdir={plugin_env / 'wd'}", cwd=plugin_env)
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert out["fingerprint"]["device"] == "toy device" and out["fingerprint"]["ms_per_mb"] == 2.0
    assert out["fingerprint"]["target"] == "toy"
    # float32 weights: about 4 bytes per parameter, so ~2 ms per 0.25 M parameters
    assert out["latency_ms"]["p50"] == pytest.approx(out["params"] * 4 / 1e6 * 2, rel=0.1)


def test_a_plugin_target_drives_a_search(plugin_env):
    wd = plugin_env / "wd"
    res = run_nas("search", "target=toy", f"workdir={wd}", "study.n_trials=1", "search_space.enqueue_references=false",
                  "budget_ms=1000", "format=json", *[o for o in FAST if not o.startswith("target.")],
                  cwd=plugin_env)
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert out["complete"] == 1 and out["study"] == "toy-mbconv-digits-1000ms"
    card = json.loads((wd / "exports" / "toy-1000ms" / "model_card.json").read_text())
    assert card["target"] == "toy" and card["fingerprint"]["device"] == "toy device"  # the plugin's own set-up


def test_an_unknown_plugin_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_PLUGINS", "no_such_plugin_module")
    res = run_nas("measure", "arch=mobilenetv3_small_100", cwd=tmp_path)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "plugin 'no_such_plugin_module' cannot be imported" in lines[0]


def test_the_agent_serves_a_plugin_backend_from_the_registry(plugin_env):
    """The agent's runtimes come from the registry (``agent_runtime``): a new backend needs no edit to the agent."""
    code = ("from nas import builtins; builtins.register(); from nas.agent.server import agent_runtimes; "
            "print(agent_runtimes()); print(agent_runtimes(installed_only=True))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=plugin_env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    served, installed = (eval(line) for line in res.stdout.strip().splitlines()[-2:])
    assert served[0] == "onnxruntime" and {"litert", "edgetpu", "openvino", "toy"} <= set(served)
    assert "remote" not in served and "tvm" not in served  # a client of agents, and a compiler it does not serve
    assert "toy" in installed and "onnxruntime" in installed
