"""Latency predictors: features, the two predictor kinds, the portable file, the CLI."""

import json
import warnings

import numpy as np
import onnx
import optuna
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nas.core.records import record_of
from nas.latency.block_latency import arch_parts
from nas.latency.onnx_export import export_onnx, graph_stats
from nas.predictors.base import PredictorError, load_predictor, save_predictor
from nas.predictors.features import FEATURE_NAMES, arch_features, features_matrix
from nas.predictors.kernel_sum import KernelSumPredictor
from nas.predictors.lut import LookupTablePredictor, entry_keys
from nas.predictors.sampling import sample_stratified
from nas.search_spaces.build import build_model
from nas.search_spaces.factorized import make_space
from nas.search_spaces.references import reference_archs
from tests.conftest import FAST, last_json, run_nas


def space(name="mnasnet", resolution=224):  # the wider space: every kernel feature varies
    with initialize_config_module(config_module="nas.conf", version_base=None):
        cfg = OmegaConf.to_object(compose("search", [f"search_space={name}",
                                                     f"search_space.resolution=[{resolution}]"]))
    return make_space(cfg.search_space)


@pytest.mark.parametrize("name", ["mobilenetv3_large_100", "efficientnet_b0"])
def test_analytic_macs_match_the_onnx_graph(tmp_path, name):
    arch = reference_archs()[name]
    path = export_onnx(build_model(arch, 10), (1, 3, 224, 224), tmp_path / "m.onnx")
    macs = graph_stats(onnx.load(str(path))).macs
    assert arch_features(arch, 10)[FEATURE_NAMES.index("macs")] * 1e6 == pytest.approx(macs, rel=1e-6)


def test_stratified_sampling_spans_the_macs_range():
    archs = sample_stratified(space(), 20, seed=0)
    assert len({a.hash for a in archs}) == 20
    macs = sorted(arch_features(a)[-1] for a in archs)
    pool = sorted(arch_features(a)[-1] for a in sample_stratified(space(), 200, seed=1))
    # stratified: the extremes of a much larger pool's range are reached, not just its middle
    assert macs[0] < np.percentile(pool, 10) and macs[-1] > np.percentile(pool, 90)
    held_out = sample_stratified(space(), 10, seed=5, exclude={a.hash for a in archs})
    assert not {a.hash for a in held_out} & {a.hash for a in archs}


def test_kernel_sum_recovers_an_additive_cost_model():
    archs = sample_stratified(space(), 60, seed=2)
    x = features_matrix(archs, 10)
    true_w = np.abs(np.random.default_rng(0).normal(size=x.shape[1])) / x.max(axis=0)
    y = x @ true_w + 0.5
    train, test = slice(0, 45), slice(45, 60)
    p = KernelSumPredictor(num_classes=10).fit(archs[train], y[train])
    mean, std = p.predict(archs[test])
    assert np.max(np.abs(mean - y[test]) / y[test]) < 0.02
    assert np.all(std >= 0)


def test_predictor_file_round_trip_and_warnings(tmp_path):
    archs = sample_stratified(space(), 20, seed=3)
    y = features_matrix(archs, 10)[:, -1] * 0.02 + 1.0
    p = KernelSumPredictor(num_classes=10).fit(archs, y)
    fp = {"target": "cpu", "threads": 1}
    path = save_predictor(p, tmp_path / "p.json", fp, 10)
    doc = json.loads(path.read_text())
    assert doc["kind"] == "kernel_sum" and doc["versions"]["numpy"] and doc["fingerprint"] == fp
    q, _ = load_predictor(path, fp)
    np.testing.assert_allclose(q.predict(archs)[0], p.predict(archs)[0])
    with pytest.warns(UserWarning, match="another target set-up"):
        load_predictor(path, {**fp, "threads": 2})
    doc["versions"] = {"numpy": "0.0.1", "scikit-learn": "0.1"}  # an old library: reported, never a crash
    path.write_text(json.dumps(doc))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, loaded = load_predictor(path, fp)
    assert loaded["version_changes"]["numpy"][0] == "0.0.1"
    path.write_text("{not json")
    with pytest.raises(PredictorError, match="cannot read predictor"):
        load_predictor(path, fp)


def test_lookup_table_parts_compose_to_the_whole_model():
    arch = sample_stratified(space(resolution=64), 1, seed=4)[0]
    parts = arch_parts(arch, 10)
    assert [k for k, _, _ in parts] == [k for k, _ in entry_keys(arch, 10)]
    x = torch.randn(1, 3, 64, 64)
    y = x
    with torch.no_grad():
        for _key, module, shape in parts:
            assert tuple(y.shape) == shape
            y = module.eval()(y)
        full = build_model(arch, 10).eval()(x)
    torch.testing.assert_close(y, full)


def test_lookup_table_fit_predict_save_load(tmp_path):
    archs = sample_stratified(space(resolution=64), 6, seed=6)
    calls = []

    def measure_entries(arch, keys):  # a deterministic cost per entry, so the test checks the bookkeeping
        calls.append(len(keys))
        return {k: 0.01 * (1 + len(k) % 7) for k in keys}

    y = np.array([sum(0.01 * (1 + len(k) % 7) for k, _ in entry_keys(a, 10)) * 1.2 + 0.3 for a in archs])
    p = LookupTablePredictor(num_classes=10).fit(archs, y, measure_entries)
    distinct = {k for a in archs for k, _ in entry_keys(a, 10)}
    assert len(p.table_) == len(distinct) and sum(calls) == len(distinct)  # each entry measured once
    mean, _ = p.predict(archs)
    np.testing.assert_allclose(mean, y, rtol=1e-6)
    path = save_predictor(p, tmp_path / "lut.json", {"target": "cpu"}, 10)
    q, _ = load_predictor(path, {"target": "cpu"})
    np.testing.assert_allclose(q.predict(archs)[0], mean)


def test_predictor_fit_and_eval_commands(tmp_path):
    small = [o for o in FAST if o.startswith(("target.", "search_space."))]
    fit = run_nas("predictor", "fit", "n_samples=12", f"workdir={tmp_path}", "format=json", *small)
    assert fit.returncode == 0, fit.stderr[-2000:]
    out = last_json(fit.stdout)
    assert out["n_fit"] == 12 and out["fit_seconds"] < 10
    ev = run_nas("predictor", "eval", "n_samples=6", "noise_repeats=3", f"workdir={tmp_path}", "format=json", *small)
    assert ev.returncode == 0, ev.stderr[-2000:]
    m = last_json(ev.stdout)
    assert {"rmse_ms", "mape", "within_5", "within_10", "kendall_tau", "noise_floor"} <= set(m)
    assert m["n"] == 6 and m["noise_floor"]["n"] == 3
    assert m["mape"] < 0.5  # a broken predictor is far off; the real goals are measured in benchmarks/
    from PIL import Image

    with Image.open(tmp_path / "plots" / "predictor-cpu-kernel_sum.png") as img:  # a real figure, not a stub file
        assert img.format == "PNG" and min(img.size) >= 300


def test_eval_without_a_predictor_is_one_line(tmp_path):
    res = run_nas("predictor", "eval", f"workdir={tmp_path}")
    assert res.returncode == 1
    assert "run `nas predictor fit target=cpu` first" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_search_uses_the_fitted_predictor_to_skip_candidates_over_budget(tmp_path):
    wd = tmp_path / "wd"
    small = [o for o in FAST if o.startswith(("target.", "search_space."))]
    fit = run_nas("predictor", "fit", "n_samples=12", f"workdir={wd}", *small)
    assert fit.returncode == 0, fit.stderr[-2000:]
    res = run_nas("search", f"workdir={wd}", "budget_ms=0.01", "study.n_trials=5", *FAST)
    assert "latency predictor: fitted" in res.stdout  # found in workdir for this target set-up, used by default
    assert res.returncode == 1  # nothing can meet 0.01 ms
    assert "no trial meets budget_ms=0.01" in res.stderr.strip().splitlines()[-1]
    study = optuna.load_study(study_name="cpu-mbconv-digits-0.01ms", storage=f"sqlite:///{wd / 'optuna.db'}")
    skipped = [t for t in study.trials if "skipped" in t.user_attrs]
    assert skipped, res.stdout
    # COMPLETE (NSGA-II, the default sampler, reads completed trials only) at the predicted latency, with the
    # latency constraint violated: that is what steers the sampler away from the region.
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in skipped)
    assert all(t.values[1] == t.user_attrs["predicted_ms"] and max(t.constraints.values()) > 0 for t in skipped)
    assert all(record_of(study.study_name, t).state == "skipped" for t in skipped)
    assert all(t.user_attrs["predicted_ms"] - 2 * t.user_attrs["predicted_std_ms"] > 0.01 for t in skipped)
    assert all(not t.user_attrs.get("reference") for t in skipped)  # references are always measured
    assert "skipped" in res.stdout and "saved" in res.stdout


def test_a_predictor_that_disagrees_with_the_measurements_is_not_used_to_skip(tmp_path):
    """A predictor fitted beside other work (every latency 10x too slow here) would skip good candidates as
    "surely over budget". After three predictions that the measurements contradict, it skips nothing; the
    summary says why."""
    from nas.config import PredictorSearchConfig
    from nas.latency.cache import MeasurementCache
    from nas.latency.gate import PredictorGate
    from nas.latency.targets import make_target
    from nas.latency.targets.ort import OrtConfig
    from nas.search_spaces.factorized import make_space as space_of

    with initialize_config_module(config_module="nas.conf", version_base=None):
        cfg = OmegaConf.to_object(compose("search", ["search_space.resolution=[64]"]))
    archs = sample_stratified(space_of(cfg.search_space), 12, seed=0)
    quiet = np.array([a.width * a.resolution / 40 for a in archs])  # a stand-in "quiet machine" latency, ms
    target = make_target(OrtConfig(input_shape=[1, 3, 64, 64]))
    path = tmp_path / "p.json"
    save_predictor(KernelSumPredictor(num_classes=10).fit(archs, 10 * quiet), path, target.fingerprint(), 10)
    gate = PredictorGate(PredictorSearchConfig(), "p90", float(np.median(quiet)) * 2, target,
                         MeasurementCache(tmp_path / "m.db"), 10, path)
    assert gate.source.startswith("fitted")
    preds = [gate.predict(a) for a in archs]
    assert any(p.skip for p in preds)  # the poisoned predictor would skip candidates the budget admits
    for p, q in list(zip(preds, quiet, strict=True))[:3]:
        gate.observe(p, float(q), cached=True)  # what this machine measures now
    assert not any(gate.predict(a).skip for a in archs)
    assert "disagrees with this machine's measurements" in gate.summary()
