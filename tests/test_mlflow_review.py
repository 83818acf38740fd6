"""Reviewing a search in MLflow and handing the winner over: after a tiny real search (real SQLite MLflow store),
the experiment opens on its runs, the front is one filter away, the winner is a registered MLflow Model that loads
with the PyTorch and ONNX flavours, and the bundle registers a timm name without this project's code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow.onnx
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from nas.core import names
from nas.core.arch import Arch
from nas.search_spaces.build import build_model
from tests.conftest import FAST, run_nas

BUDGET = 50
MODEL = f"nas-cpu-{BUDGET}ms"
TIMM = f"nas_cpu_{BUDGET}ms"
NUM_CLASSES = 10  # the digits


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    wd = tmp_path_factory.mktemp("review") / "wd"
    res = run_nas("search", f"workdir={wd}", f"budget_ms={BUDGET}", "study.n_trials=3", *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    uri = f"sqlite:///{wd / 'mlflow.db'}"
    return wd, MlflowClient(tracking_uri=uri, registry_uri=uri), res.stdout


@pytest.fixture(scope="module")
def registry(searched):
    """The registry's URI for the ``models:/`` loaders (they read the process-wide one), through the environment so
    that it is undone exactly: ``set_registry_uri(before)`` left the default pinned for the process's later tests, and a
    client built without ``registry_uri`` then read another store (test_fleet, when run after this file)."""
    wd, *_ = searched
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.setenv(key, f"sqlite:///{wd / 'mlflow.db'}")
        yield


def bundle_arch(wd: Path) -> Arch:
    return Arch.from_dict(json.loads((wd / "exports" / f"cpu-{BUDGET}ms" / "arch.json").read_text())["arch"])


def runs(client: MlflowClient, **kw):
    exp = client.get_experiment_by_name("nas")
    return client.search_runs([exp.experiment_id], **kw)


def test_the_experiment_opens_on_its_runs_and_says_how_to_filter(searched):
    _, c, stdout = searched
    exp = c.get_experiment_by_name("nas")
    # The printed link opens this study's front in the model-training view, whatever the browser's GenAI switch says.
    from urllib.parse import unquote_plus

    assert f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning&searchFilter=" in stdout
    assert 'tags.`nas.study` = "cpu-mbconv-digits-50ms" AND tags.pareto = "true"' in unquote_plus(stdout)
    assert exp.tags[names.EXPERIMENT_KIND] == "custom_model_development"  # MLflow 3's "Model training" view
    assert 'tags.pareto = "true"' in exp.tags[names.NOTE]
    parent = next(r for r in runs(c) if names.PARENT_RUN not in r.data.tags)
    note = parent.data.tags[names.NOTE]
    assert 'tags.pareto = "true"' in note and "latency_p90_ms" in note and "3 trial(s)" in note


def test_trial_runs_are_filterable_rows_with_stable_names(searched):
    _, c, _out = searched
    trials = [r for r in runs(c) if names.PARENT_RUN in r.data.tags]
    assert len(trials) == 3
    for r in trials:  # what a scatter of accuracy against latency in the chart view needs on every row
        assert {names.ACCURACY, "latency_p90_ms"} <= set(r.data.metrics)
        assert {"family", "width", "resolution", "s1_kernel"} <= set(r.data.params)
    front = runs(c, filter_string='tags.pareto = "true"')
    assert front and {r.info.run_id for r in front} == {r.info.run_id for r in trials
                                                       if r.data.tags[names.PARETO] == "true"}
    parent = next(r for r in runs(c) if names.PARENT_RUN not in r.data.tags)
    table = json.loads(Path(c.download_artifacts(parent.info.run_id, names.FRONT_TABLE)).read_text())
    assert sorted(row[table["columns"].index("run_id")] for row in table["data"]) == sorted(
        r.info.run_id for r in front)
    assert any(a.path.endswith(".png") for a in c.list_artifacts(parent.info.run_id, "pareto"))


def test_the_registered_model_loads_with_both_flavours_and_its_signature(searched, registry):
    wd, c, _out = searched
    card = json.loads((wd / "exports" / f"cpu-{BUDGET}ms" / "model_card.json").read_text())
    mv = c.get_model_version_by_alias(MODEL, names.CHAMPION)
    assert str(mv.version) == "1" and mv.tags[names.TIMM_NAME] == TIMM == card[names.TIMM_NAME]
    assert mv.tags[names.BUDGET_TAG] == str(BUDGET) and mv.tags[names.STATISTIC_TAG] == "p90"
    assert json.loads(mv.tags[names.FINGERPRINT_TAG]) == card["fingerprint"]
    assert "seeded initial weights" in mv.description and f"{card['accuracy']['mean']:.4f}" in mv.description
    winner = next(r for r in runs(c) if r.data.tags.get(names.TRIAL_TAG) == str(card["trial"])
                  and names.PARENT_RUN in r.data.tags)
    assert mv.run_id == winner.info.run_id  # the version links to the winning trial's run

    module = mlflow.pytorch.load_model(f"models:/{MODEL}/latest")
    assert isinstance(module, torch.nn.Module)
    expected = build_model(bundle_arch(wd), NUM_CLASSES, seed=0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(module(x), expected(x), atol=1e-5)  # the seeded weights, as model.onnx
    graph = mlflow.onnx.load_model(f"models:/{MODEL}@{names.CHAMPION}")
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]

    info = mlflow.models.get_model_info(f"models:/{MODEL}/1")
    spec = info.signature.inputs.inputs[0]
    assert spec.shape == (1, 3, 64, 64) and spec.type == np.dtype("float32")
    assert info.signature.outputs.inputs[0].shape == (1, NUM_CLASSES)
    out = mlflow.pyfunc.load_model(f"models:/{MODEL}/1").predict(np.zeros((1, 3, 64, 64), np.float32))
    assert np.asarray(next(iter(out.values())) if isinstance(out, dict) else out).shape == (1, NUM_CLASSES)


def test_a_reexport_moves_the_champion_alias(searched):
    wd, c, _out = searched
    res = run_nas("export", f"workdir={wd}", f"budget_ms={BUDGET}", *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    versions = c.search_model_versions(f"name='{MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert str(c.get_model_version_by_alias(MODEL, names.CHAMPION).version) == "2"
    assert c.get_registered_model(MODEL).description


def test_the_bundle_registers_a_timm_name_without_nas(searched, tmp_path):
    wd, _, _out = searched
    bundle = wd / "exports" / f"cpu-{BUDGET}ms"
    arch = bundle_arch(wd)
    # A clean interpreter: the bundle folder is all of PYTHONPATH and importing `nas` fails outright.
    code = ("import sys; sys.modules['nas'] = None\n"
            "import json, timm, timm_register\n"
            f"m = timm.create_model({TIMM!r}, num_classes=7)\n"
            "cfg = m.pretrained_cfg\n"
            f"print(json.dumps([repr(m), cfg['input_size'], {TIMM!r} in timm.list_models('nas_*'), "
            "[cfg['interpolation'], cfg['crop_pct'], list(cfg['mean']), list(cfg['std'])]]))")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(bundle), "PYTHONNOUSERSITE": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    model_repr, input_size, listed, pre = json.loads(res.stdout.strip().splitlines()[-1])
    assert model_repr == repr(build_model(arch, 7)) and input_size == [3, 64, 64] and listed
    # The card's preprocessing for the training team is what timm's pipeline will use for the registered name.
    card = json.loads((bundle / "model_card.json").read_text())["preprocessing"]
    assert pre == [card["interpolation"], card["crop_pct"], card["mean"], card["std"]]
    assert card["input_size"] == input_size
    assert "## Preprocessing" in (bundle / "model_card.md").read_text()


def test_timm_train_py_runs_through_the_bundle_module(searched, tmp_path):
    """timm's train.py takes only a name (--model); run as `python timm_register.py train.py ARGS`, the script sees
    the registered name. The stand-in script builds its model the way train.py does."""
    wd, _, _out = searched
    bundle = wd / "exports" / f"cpu-{BUDGET}ms"
    script = tmp_path / "train.py"
    script.write_text(
        "import argparse, json, sys\n"
        "from timm.models import create_model\n"
        "p = argparse.ArgumentParser(); p.add_argument('data_dir'); p.add_argument('--model')\n"
        "p.add_argument('--num-classes', type=int)\n"
        "if __name__ == '__main__':\n"
        "    args = p.parse_args()\n"
        "    m = create_model(args.model, num_classes=args.num_classes)\n"
        "    print(json.dumps([sys.argv[0], m.num_classes, 'nas' in sys.modules]))\n")
    res = subprocess.run([sys.executable, str(bundle / names.TIMM_MODULE), str(script), "data", "--model", TIMM,
                          "--num-classes", "3"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [str(script), 3, False]


def test_register_exports_registers_every_export_of_a_workdir(searched):
    import timm

    from nas.export.timm_models import register_exports

    wd, _, _out = searched
    assert list(register_exports(wd)) == [TIMM]
    assert repr(timm.create_model(TIMM)) == repr(build_model(bundle_arch(wd), NUM_CLASSES))
