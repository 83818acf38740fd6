"""A tiny real search end to end: Optuna storage, MLflow runs, the export bundle, resume, `nas export`."""

import json
from pathlib import Path

import onnxruntime as ort
import optuna
import pytest
from mlflow.tracking import MlflowClient

from nas.accuracy.reeval import ranked
from nas.core.records import best_under_budget, record_of
from tests.conftest import FAST, last_json, run_nas

STUDY = "cpu-mbconv-digits-50ms"
# Two rungs (1 and 2 epochs) and a re-evaluation of the top 2 with 2 seeds: the accuracy machinery, kept small.
RUNGS = [*(o for o in FAST if not o.startswith(("study.epochs", "study.reeval"))), "study.rungs=[1,2]",
         "study.reeval_top_k=2", "study.reeval_seeds=2"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    wd = tmp_path_factory.mktemp("search") / "wd"
    res = run_nas("search", f"workdir={wd}", "budget_ms=50", "study.n_trials=4", "format=json", *RUNGS)
    assert res.returncode == 0, res.stderr[-3000:]
    return wd, res


def client(wd: Path) -> MlflowClient:
    uri = f"sqlite:///{wd / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def trials(wd: Path):
    storage = f"sqlite:///{wd / 'optuna.db'}"
    return optuna.load_study(study_name=STUDY, storage=storage).trials


def test_optuna_storage_holds_every_trial(searched):
    wd, res = searched
    ts = trials(wd)
    assert len(ts) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ts)
    for t in ts:  # every candidate ran the first rung; the fidelity reached is recorded with each rung's top-1
        rungs = t.user_attrs["rung_top1"]
        assert "1" in rungs and t.user_attrs["fidelity_epochs"] == max(int(k) for k in rungs)
        # The objective the front compares is the first rung's figure, which every trained trial has.
        assert t.values[0] == pytest.approx(rungs["1"])
    # The references that fit the space run first, then sampled candidates.
    assert [t.user_attrs.get("reference") for t in ts[:3]] == ["efficientnet_b0", "mnasnet_100", "mobilenetv2_100"]
    for t in ts:
        _acc, lat = t.values
        assert t.user_attrs["latency"]["p90"] == pytest.approx(lat)
        assert t.system_attrs["constraints:latency"] == pytest.approx(lat - 50)
    out = last_json(res.stdout)
    assert out["complete"] == 4 and out["study"] == STUDY


def test_mlflow_parent_and_nested_trial_runs(searched):
    wd, _ = searched
    c = client(wd)
    exp = c.get_experiment_by_name("nas")
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    for r in children:
        assert {"accuracy", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "params", "macs",
                "train_seconds", "measure_seconds"} <= set(r.data.metrics)
        assert r.data.tags["feasible"] in ("true", "false") and r.data.tags["pareto"] in ("true", "false")
        assert "s1_kernel" in r.data.params and "arch_hash" in r.data.params
        assert "arch.json" in [a.path for a in c.list_artifacts(r.info.run_id)]
    # The Pareto tags agree with the stored objectives.
    recs = [record_of(STUDY, t) for t in trials(wd)]
    pareto_runs = {r.info.run_id for r in children if r.data.tags["pareto"] == "true"}
    assert pareto_runs
    best = best_under_budget(recs, 50)
    assert best.run_id in pareto_runs
    plots = [a.path for a in c.list_artifacts(parent.info.run_id, "pareto")]
    assert any(p.endswith(".png") for p in plots) and any(p.endswith(".html") for p in plots)


def test_export_bundle_is_complete_and_runs(searched):
    wd, _ = searched
    bundle = wd / "exports" / "cpu-50ms"
    assert {p.name for p in bundle.iterdir()} == {"model.onnx", "arch.json", "model_card.json", "model_card.md",
                                               "timm_register.py"}
    card = json.loads((bundle / "model_card.json").read_text())
    recs = [record_of(STUDY, t) for t in trials(wd)]
    # The export is the re-evaluated winner among the 2 best feasible trials (highest fidelity first), with its
    # mean and spread over 2 seeds at the top rung; ties within one standard error go to the faster.
    top2 = [r.number for r in ranked(recs, 50)[:2]]
    acc = card["accuracy"]
    assert acc["figure"] == "re-evaluated" and acc["seeds"] == [0, 1] and acc["epochs"] == 2
    assert card["trial"] in top2 and [c["trial"] for c in acc["candidates"]] == top2
    import statistics

    winner = next(c for c in acc["candidates"] if c["trial"] == card["trial"])
    mine = winner["top1"].values()
    # Chosen on the selection half of the validation images, reported on the other half.
    assert acc["report_mean"] == pytest.approx(statistics.fmean(winner["report"].values()))
    assert "never used to choose" in (wd / "exports" / "cpu-50ms" / "model_card.md").read_text()
    assert acc["mean"] == pytest.approx(statistics.fmean(mine)) and acc["std"] == pytest.approx(statistics.stdev(mine))
    winner = min(acc["tied"], key=lambda t: t["latency_ms"])
    assert winner["trial"] == card["trial"]
    text = (bundle / "model_card.md").read_text()
    assert "±" in text and "95% interval" in text and " rounds, rounds spread " in text  # the latency's uncertainty
    best = next(r for r in recs if r.number == card["trial"])
    assert card["meets_budget"] is True and card["train_resolution"] == 16
    assert card["latency_ms"]["p90"] <= 50 and card["latency_source"] == "measured"
    assert "build_model" in card["build"] and card["reproduce"].startswith("nas search ")
    arch = json.loads((bundle / "arch.json").read_text())
    assert arch["hash"] == best.arch.hash and arch["timm_block_strings"]
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [1, 3, 64, 64]
    versions = client(wd).search_model_versions("name='nas-cpu-50ms'")
    assert len(versions) == 1


def test_export_answers_other_budgets_without_searching(searched):
    wd, _ = searched
    recs = [record_of(STUDY, t) for t in trials(wd)]
    lats = sorted(r.latency_ms for r in recs)
    for budget in (lats[0] * 1.001, lats[1] * 1.001, lats[-1] * 1.001):
        res = run_nas("export", f"workdir={wd}", f"budget_ms={budget}", "format=json", *FAST)
        assert res.returncode == 0, res.stderr
        out = last_json(res.stdout)
        assert out["trial"] == ranked(recs, budget)[0].number  # no re-evaluation asked for: the ranking's best
        assert Path(out["path"]).is_dir()
    assert len(trials(wd)) == 4  # nothing was searched


def test_export_with_an_impossible_budget_says_so_and_writes_nothing(searched):
    wd, _ = searched
    res = run_nas("export", f"workdir={wd}", "budget_ms=0.001", *FAST)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no trial meets budget_ms=0.001" in lines[0] and "fastest is trial" in lines[0]
    assert not (wd / "exports" / "cpu-0.001ms").exists()


def test_rerun_resumes_the_same_study(searched):
    wd, _ = searched
    res = run_nas("search", f"workdir={wd}", "budget_ms=50", "study.n_trials=2", *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    ts = trials(wd)
    assert len(ts) == 6  # the 4 kept, 2 added; references not enqueued twice
    assert sum(1 for t in ts if t.user_attrs.get("reference")) == 3
    c = client(wd)
    runs = c.search_runs([c.get_experiment_by_name("nas").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1  # the study's parent run was reused
    # One run per trial (a proposed duplicate arch is pruned at once and gets none), none twice.
    assert sorted(int(r.data.tags["nas.trial"]) for r in children) == \
        [t.number for t in ts if "duplicate_of" not in t.user_attrs]


def test_duplicates_are_named_and_do_not_use_up_the_trials(tmp_path):
    """A space of 4 archs, 4 trials asked: the sampler proposes archs the study already has; each is reported as
    a duplicate (not as a predictor skip), and replaced, so all 4 archs are measured and trained."""
    small = ["search_space.width=[0.5]", "search_space.choices.depth=[1]", "search_space.choices.kernel=[3]",
             "search_space.choices.expansion=[6.0]", "search_space.choices.se=[0.0]",
             "search_space.enqueue_references=false", "study.sampler=random", "predictor.enabled=false"]
    res = run_nas("search", *FAST, *small, f"workdir={tmp_path / 'wd'}", "budget_ms=500", "study.n_trials=4",
                  "format=json")
    assert res.returncode == 0, res.stderr[-3000:]
    out = last_json(res.stdout)
    assert out["complete"] == 4 and out["skipped"] == 0 and out["duplicates"] >= 1
    dup_lines = [ln for ln in res.stderr.splitlines() + res.stdout.splitlines() if "duplicate of trial" in ln]
    assert len(dup_lines) == out["duplicates"] and all(ln.startswith("[dup/4]") for ln in dup_lines)
    assert "surely over budget" not in res.stdout + res.stderr
    assert f"{4 + out['duplicates']} trials: 4 complete, 0 failed, {out['duplicates']} duplicates" in \
        res.stdout + res.stderr
    # The MLflow line: a UI command with the port its link uses, and a link filtered to this study's front.
    from urllib.parse import unquote_plus

    ui = next(ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("MLflow UI:"))
    assert "ui --port 5000 --backend-store-uri" in ui and "http://127.0.0.1:5000/" in ui
    assert f'tags.`nas.study` = "{out["study"]}" AND tags.pareto = "true"' in unquote_plus(ui)
