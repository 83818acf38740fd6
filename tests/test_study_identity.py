"""A study's identity covers what changes a latency; the model card reproduces the search that was run; library
failures reach the user as one line."""

import json

import optuna

from tests.conftest import FAST, last_json, run_nas

NO_REFS = "search_space.enqueue_references=false"


def studies(wd):
    return sorted(s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{wd / 'optuna.db'}"))


def test_int8_opens_its_own_study_and_export_keeps_them_apart(tmp_path):
    wd = tmp_path / "wd"
    fp32 = run_nas("search", f"workdir={wd}", "study.n_trials=1", NO_REFS, "budget_ms=1000", *FAST)
    assert fp32.returncode == 0, fp32.stderr[-2000:]
    int8 = run_nas("search", f"workdir={wd}", "study.n_trials=1", NO_REFS, "budget_ms=1000",
                   "target.precision=int8", *FAST)
    assert int8.returncode == 0, int8.stderr[-2000:]
    assert "0 trial(s) stored" in int8.stdout  # not the fp32 study resumed
    assert studies(wd) == ["cpu-int8-mbconv-digits-1000ms", "cpu-mbconv-digits-1000ms"]
    for precision, study in (("int8", "cpu-int8-mbconv-digits-1000ms"), ("fp32", "cpu-mbconv-digits-1000ms")):
        res = run_nas("export", f"workdir={wd}", "budget_ms=1000", f"target.precision={precision}", "format=json",
                      *FAST)
        assert res.returncode == 0, res.stderr[-2000:]
        assert last_json(res.stdout)["study"] == study
        card = json.loads((wd / "exports" / "cpu-1000ms" / "model_card.json").read_text())
        assert card["precision"] == precision and card["fingerprint"]["precision"] == precision
        # The reproduce line is the search's own command, not the export's defaults.
        assert card["reproduce"].startswith("nas search ") and "search_space.resolution=[64]" in card["reproduce"]
        assert ("target.precision=int8" in card["reproduce"]) == (precision == "int8")
        assert "study.epochs=3" not in card["reproduce"]


def test_resuming_on_another_setup_is_refused_in_one_line(tmp_path):
    wd = tmp_path / "wd"
    first = run_nas("search", f"workdir={wd}", "study.n_trials=1", NO_REFS, "budget_ms=1000", *FAST)
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_nas("search", f"workdir={wd}", "study.n_trials=1", NO_REFS, "budget_ms=1000", *FAST,
                    "target.repeats=12")
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "measured on another set-up" in lines[0] and "repeats: 10 -> 12" in lines[0]
    study = optuna.load_study(study_name="cpu-mbconv-digits-1000ms", storage=f"sqlite:///{wd / 'optuna.db'}")
    assert len(study.trials) == 1  # nothing added


def test_a_model_the_runtime_cannot_load_is_one_line(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    res = run_nas("measure", f"model={bad}", "target=tflite_cpu", f"workdir={tmp_path / 'wd'}")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "LiteRT cannot load" in lines[0], res.stderr[-2000:]


def test_an_unusable_fitted_predictor_is_named_once(tmp_path):
    wd = tmp_path / "wd"
    target = [o for o in FAST if o.startswith(("target.", "search_space."))]
    fit = run_nas("predictor", "fit", f"workdir={wd}", "n_samples=5", "num_classes=1000", *target)
    assert fit.returncode == 0, fit.stderr[-2000:]
    res = run_nas("search", f"workdir={wd}", "study.n_trials=1", NO_REFS, "budget_ms=1000", *FAST)
    assert res.returncode == 0, res.stderr[-2000:]
    said = [ln for ln in res.stdout.splitlines() if "not used" in ln]
    assert len(said) == 1 and "fitted for 1000 classes, this search has 10" in said[0]


def test_a_worker_with_another_mlflow_store_is_refused_in_one_line(tmp_path):
    # One study storage, two workdirs: the second worker's default MLflow store (its workdir's mlflow.db) does not
    # hold the study's runs, so its trials could never join the study's parent run.
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    first = run_nas("search", f"study.storage={storage}", f"workdir={tmp_path / 'a'}", "study.n_trials=1", NO_REFS,
                    *FAST)
    assert first.returncode == 0, first.stderr[-2000:]
    other = run_nas("search", f"study.storage={storage}", f"workdir={tmp_path / 'b'}", "study.n_trials=1", NO_REFS,
                    *FAST)
    assert other.returncode == 1
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and "keeps its MLflow runs in" in lines[0] and str(tmp_path / "a" / "mlflow.db") in lines[0]
    assert "tracking.uri" in lines[0]
    [summary] = optuna.get_all_study_summaries(storage)
    assert summary.n_trials == 1  # nothing added by the refused worker
    again = run_nas("search", f"study.storage={storage}", f"workdir={tmp_path / 'a'}", "study.n_trials=1", NO_REFS,
                    *FAST)
    assert again.returncode == 0, again.stderr[-2000:]  # the first workdir resumes as before
