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


def test_two_exports_to_one_budget_take_turns(tmp_path):
    """Bundles swapped into one folder at once (two `nas export` runs, two workers): every swap completes, and the
    folder ends as one whole bundle (the old swap shared one `.old-*` folder, and the second rename failed)."""
    import threading

    from nas.export.bundle import swap_in

    out = tmp_path / "exports" / "cpu-10ms"
    errors: list[BaseException] = []

    def export(i: int) -> None:
        new = tmp_path / "exports" / f".tmp-{i}"
        new.mkdir(parents=True)
        for name in ("model.onnx", "arch.json", "model_card.md"):
            (new / name).write_text(str(i))
        try:
            swap_in(new, out)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=export, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    contents = {p.read_text() for p in out.iterdir()}
    assert len(contents) == 1 and sorted(p.name for p in out.iterdir()) == ["arch.json", "model.onnx", "model_card.md"]
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.endswith(".lock")) == ["cpu-10ms"]


def test_a_failed_reevaluation_seed_is_recorded_and_the_export_goes_on(tmp_path, monkeypatch):
    """A seed of the re-evaluation whose training fails (a NaN loss) is recorded and left out of the mean; the
    search still exports (it used to end with exit 1 and no bundle)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import nas.accuracy.reeval as reeval
    from nas.core.errors import CandidateFailed
    from nas.search.loop import run_search

    real = reeval.train_run

    def flaky(arch, data, epochs, seed, recipe):  # the fault: seed 1 diverges, as a NaN loss does
        if seed == 1:
            raise CandidateFailed("TrainingDiverged: loss is nan at epoch 1")
        return real(arch, data, epochs, seed, recipe)

    monkeypatch.setattr(reeval, "train_run", flaky)
    overrides = [*(o for o in FAST if not o.startswith("study.reeval_top_k")), "study.reeval_top_k=1",
                 "study.reeval_seeds=3", "study.n_trials=1", "search_space.enqueue_references=false",
                 f"workdir={tmp_path / 'wd'}", "budget_ms=500"]
    with initialize_config_module(config_module="nas.conf", version_base=None):
        cfg = OmegaConf.to_object(compose("search", overrides))
    cfg.overrides = overrides
    lines: list[str] = []
    summary = run_search(cfg, log=lines.append)
    assert summary.export_error is None and summary.export is not None
    acc = summary.export.card["accuracy"]
    assert acc["seeds"] == [0, 2] and list(acc["failed_seeds"]) == ["1"]
    assert any("seed 1: FAILED" in ln and "left out of its mean" in ln for ln in lines)
