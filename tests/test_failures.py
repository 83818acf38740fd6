"""Candidates that fail are recorded with their reason and the study goes on."""

import optuna

from tests.conftest import FAST, run_nas


def test_diverging_candidates_fail_and_the_study_goes_on(tmp_path):
    wd = tmp_path / "wd"
    # A learning rate this large drives the loss to NaN: a real training failure, not a mock.
    res = run_nas("search", f"workdir={wd}", "study.n_trials=2", "study.lr=1e12",
                  "search_space.enqueue_references=false", *FAST)
    assert res.returncode == 1  # nothing completed, so nothing to export
    assert "no completed trial" in res.stderr.strip().splitlines()[-1]
    study = optuna.load_study(study_name="cpu-mbconv-digits-10ms", storage=f"sqlite:///{wd / 'optuna.db'}")
    assert len(study.trials) == 2
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.FAIL
        assert t.user_attrs["fail_reason"].startswith("training: TrainingDiverged")
    assert "failed: training: TrainingDiverged" in res.stdout
    assert not (wd / "exports").exists() or not any((wd / "exports").iterdir())


def test_export_failure_is_a_failed_candidate(tmp_path):
    wd = tmp_path / "wd"
    res = run_nas("search", f"workdir={wd}", "study.n_trials=1", "target.opset=1",
                  "search_space.enqueue_references=false", *FAST)
    assert res.returncode == 1
    study = optuna.load_study(study_name="cpu-mbconv-digits-10ms", storage=f"sqlite:///{wd / 'optuna.db'}")
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.FAIL
    assert t.user_attrs["fail_reason"].startswith("latency:")
