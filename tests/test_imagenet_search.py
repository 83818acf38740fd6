"""The default search, accuracy=imagenet: candidates screened on the predictors, the promising ones measured, and an
export whose card states its predicted ImageNet top-1 and its margin over the best reference within the budget."""

import json

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import last_json, run_nas

# A real protocol, shortened; the space narrowed so that measurements stay cheap on 2 cores.
QUICK = ["target.warmup=2", "target.repeats=10", "target.rounds=2", "target.round_pause_s=0", "target.tolerance=0",
         "target.drift_tolerance=0", "card_runtimes=[]", "search_space.resolution=[128,160]",
         "search_space.width=[0.5,0.75]", "accuracy.population=40", "accuracy.generations=5"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    wd = tmp_path_factory.mktemp("imagenet") / "wd"
    # A budget every reference meets: the card's reference is then the most accurate of the three.
    res = run_nas("search", f"workdir={wd}", "budget_ms=1000", "study.n_trials=7", "format=json", *QUICK)
    assert res.returncode == 0, res.stderr[-3000:]
    return wd, res


def test_screening_measures_only_picks_and_says_so(searched):
    wd, res = searched
    assert "accuracy: predicted ImageNet" in res.stderr
    screened = [ln for ln in res.stderr.splitlines() if ln.startswith("screened ")]
    assert screened and all("candidates on the predictors" in ln for ln in screened)
    study = optuna.load_study(study_name="cpu-mbconv-imagenet-1000ms", storage=f"sqlite:///{wd / 'optuna.db'}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    refs = sorted(t.user_attrs["reference"] for t in trials if "reference" in t.user_attrs)
    assert refs == ["efficientnet_b0", "mnasnet_100", "mobilenetv2_100"]  # measured in every study
    picked = [t for t in trials if "screened" in t.user_attrs]
    assert len(picked) == 4 and all(t.user_attrs["screened"]["round_candidates"] > 40 for t in picked)
    for t in trials:
        assert t.user_attrs["accuracy_domain"] in ("accel_nasbench", "scaled", "extrapolated")
        assert t.user_attrs["accuracy_std"] > 0 and 40 < t.values[0] < 90  # ImageNet top-1, %
        assert "train_resolution" not in t.user_attrs  # nothing was trained
    assert {t.user_attrs["accuracy_domain"] for t in picked} == {"scaled"}  # the space's blocks are in domain
    # The references lie outside the default space: each was measured as itself.
    ref = next(t for t in trials if t.user_attrs.get("reference") == "mobilenetv2_100")
    assert ref.user_attrs["arch"]["act"] == "relu6" and ref.user_attrs["accuracy_domain"] == "extrapolated"


def test_card_states_predicted_top1_and_margin_over_the_best_reference(searched):
    wd, res = searched
    out = last_json(res.stdout)
    card = json.loads((wd / "exports" / "cpu-1000ms" / "model_card.json").read_text())
    acc = card["accuracy"]
    study = optuna.load_study(study_name="cpu-mbconv-imagenet-1000ms", storage=f"sqlite:///{wd / 'optuna.db'}")
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    refs = {t.user_attrs["reference"]: t for t in done if "reference" in t.user_attrs}
    best_ref = max(refs.values(), key=lambda t: t.values[0])
    assert acc["reference"] == {"name": best_ref.user_attrs["reference"], "top1": best_ref.values[0],
                                "std": best_ref.user_attrs["accuracy_std"], "latency_ms": best_ref.values[1]}
    assert acc["top1"] == max(t.values[0] for t in done)  # every trial meets 1000 ms: the best predicted wins
    assert acc["margin"] == pytest.approx(acc["top1"] - best_ref.values[0])
    assert acc["std"] > 0 and acc["domain"] in ("accel_nasbench", "scaled", "extrapolated")
    assert "Accel-NASBench" in acc["source"] and "Kendall" in acc["source"] and acc["unit"]
    assert card["num_classes"] == 1000 and card["latency_source"] == "measured"
    md = (wd / "exports" / "cpu-1000ms" / "model_card.md").read_text()
    assert f"points over `{best_ref.user_attrs['reference']}`" in md
    assert out["export"]["accuracy"] == acc["top1"]
    # The MLflow parent run and the registered model carry the same claim.
    client = MlflowClient(f"sqlite:///{wd / 'mlflow.db'}")
    parent = client.get_run(out["mlflow_run_id"]).data.metrics
    assert parent["margin_over_reference"] == pytest.approx(acc["margin"])
    version = client.get_latest_versions("nas-cpu-1000ms")[0]
    assert version.tags["accuracy_reference"] == best_ref.user_attrs["reference"]
    assert float(version.tags["margin_over_reference"]) == pytest.approx(acc["margin"], abs=0.01)


def test_export_for_another_budget_names_the_reference_that_meets_it_or_none(searched):
    """`nas export` answers another budget from the stored trials. At the fastest trial's own latency only that trial
    meets the budget: if it is a reference, it is both the export and the reference (margin 0); otherwise no
    reference meets the budget and the card says so (null)."""
    wd, _ = searched
    study = optuna.load_study(study_name="cpu-mbconv-imagenet-1000ms", storage=f"sqlite:///{wd / 'optuna.db'}")
    fastest = min(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.values[1])
    budget = fastest.values[1]
    res = run_nas("export", f"workdir={wd}", f"budget_ms={budget!r}", "format=json", *QUICK)
    assert res.returncode == 0, res.stderr[-2000:]
    acc = json.loads((wd / "exports" / f"cpu-{budget:g}ms" / "model_card.json").read_text())["accuracy"]
    assert acc["top1"] == fastest.values[0]
    if "reference" in fastest.user_attrs:
        assert acc["reference"]["name"] == fastest.user_attrs["reference"] and acc["margin"] == 0.0
    else:
        assert acc["reference"] is None and acc["margin"] is None


def test_edge_tpu_search_exports_a_predicted_top1_and_a_predicted_latency(tmp_path):
    wd = tmp_path / "wd"
    res = run_nas("search", "target=edge_tpu", "budget_ms=10", f"workdir={wd}", "study.n_trials=4",
                  "format=json", *QUICK)
    assert res.returncode == 0, res.stderr[-3000:]
    card = json.loads((wd / "exports" / "edge_tpu-10ms" / "model_card.json").read_text())
    assert card["latency_source"] == "predicted" and card["accuracy"]["figure"] == "predicted"
    assert {"top1", "std", "source", "reference"} <= set(card["accuracy"])


def test_the_cards_build_snippet_runs_as_written(searched):
    """The model card's `build` code, pasted into Python beside the bundle's files, builds the exported network both
    ways (by its timm name, and through nas) with the card's parameter count."""
    import subprocess
    import sys

    wd, _ = searched
    bundle = wd / "exports" / "cpu-1000ms"
    card = json.loads((bundle / "model_card.json").read_text())
    code = card["build"]
    code += "\nprint(sum(p.numel() for p in model.parameters()))"
    res = subprocess.run([sys.executable, "-c", code], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert int(res.stdout.split()[-1]) == card["params"]
    first = card["build"].split("# or with nas:")[0] + "\nprint(sum(p.numel() for p in model.parameters()))"
    res = subprocess.run([sys.executable, "-c", first], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert int(res.stdout.split()[-1]) == card["params"]


def test_a_quoted_tilde_workdir_is_the_home_folder(tmp_path):
    """`workdir='~/w'` (quoted, or from a YAML, so no shell expands it) is the user's home, for the study and the
    export alike: nothing under a literal ./~ folder."""
    import os
    import subprocess

    from tests.conftest import nas_bin

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    res = subprocess.run([nas_bin(), "search", "workdir='~/w'", "budget_ms=1000", "study.n_trials=1", *QUICK],
                         cwd=cwd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HOME": str(home), "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert (home / "w" / "exports" / "cpu-1000ms" / "model_card.json").is_file()
    assert (home / "w" / "optuna.db").is_file() and list(cwd.iterdir()) == []
