"""Training by the book: rungs that continue one run, timm's optimizer and schedule, BatchNorm recalibrated before
an evaluation, choices on one half of the validation images and reports on the other, the ImageNet prior as rung 0
where successive halving has no peers yet, and a training resolution that keeps the last stage's map."""

from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nas.accuracy.train import BN_BATCHES, Recipe, Training, recalibrate_bn, top1, train_run
from nas.config import DatasetConfig
from nas.core import names
from nas.data.configs import LAST_STAGE_3X3, ElpvConfig, ImageFolderConfig
from nas.data.datasets import load_dataset, train_resolution
from nas.data.images import val_part
from nas.search.samplers import make_sampler
from nas.search.trial import MIN_PEERS, promoted_at
from nas.search_spaces.build import build_model
from nas.search_spaces.references import reference_archs

ARCH = reference_archs(resolution=32)["mobilenetv3_small_100"]


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DatasetConfig(max_images=600), 32).at(32)


def test_a_rung_continues_the_previous_one(digits):
    """Rungs 1 and 3 of one Training cost 3 epochs and end where one 3-epoch run ends, to the last digit (the
    rung-1 evaluation, BatchNorm recalibration included, changes nothing that training reads)."""
    run = Training(ARCH, digits, 3, 0, Recipe(batch_size=32))
    first = run.advance_to(1)
    assert run.epochs_done == 1 and 0.0 <= first <= 1.0
    run.advance_to(3)
    assert run.epochs_done == 3 and len(run.train_losses) == 3  # 3 epochs trained in all, not 1 + 3
    whole = train_run(ARCH, digits, 3, 0, Recipe(batch_size=32))
    assert run.result().top1 == whole.top1 and run.result().top1_report == whole.top1_report
    with pytest.raises(ValueError, match="cannot advance from 3 to 2"):
        run.advance_to(2)


def test_no_weight_decay_on_norms_and_biases_and_a_warm_cosine_schedule(digits):
    run = Training(ARCH, digits, 3, 0, Recipe(batch_size=32, lr=0.01))
    decayed = {id(p) for g in run.opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in run.model.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1), name  # conv and linear weights only
    lrs = []
    for u in range(3 * run.per_epoch):
        run.sched.step_update(u)
        lrs.append(run.opt.param_groups[0]["lr"])
    peak = int(np.argmax(lrs))
    assert 0 < peak < len(lrs) // 2 and lrs[0] < 0.1 * max(lrs) and lrs[-1] < 0.1 * max(lrs)  # warm-up, then down


def test_batchnorm_is_recalibrated_from_training_batches(digits):
    model = build_model(ARCH, num_classes=10, seed=0)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.all(bn.running_mean == 0)  # as built
    recalibrate_bn(model, digits, 32, 0, torch.device("cpu"))
    first = bn.running_mean.clone()
    assert not torch.all(first == 0) and int(bn.num_batches_tracked) == min(BN_BATCHES, digits.n_train // 32)
    recalibrate_bn(model, digits, 32, 0, torch.device("cpu"))
    assert torch.equal(first, bn.running_mean)  # a plain average over the same batches, not a moving one


def test_choices_and_reports_use_disjoint_stratified_halves(digits):
    y = digits.y_val.numpy()
    select, report = val_part(y, "select"), val_part(y, "report")
    assert set(select).isdisjoint(report) and sorted([*select, *report]) == list(range(len(y)))
    counts = np.bincount(y[select], minlength=10) - np.bincount(y[report], minlength=10)
    assert np.abs(counts).max() <= 1  # every class in both halves
    result = train_run(ARCH, digits, 1, 0, Recipe(batch_size=32))
    assert result.top1 == top1(result.model, digits, 32, part="select")  # what choices read
    assert result.top1_report == top1(result.model, digits, 32, part="report")  # what a card states


def test_without_peers_promotion_asks_the_imagenet_prior(tmp_path):
    """The first candidates of a class have no peers at their rung: arrival order used to promote them all. Now
    the prior (rung 0) decides among the class's candidates; with enough peers, the trained figures decide."""
    with initialize_config_module(config_module="nas.conf", version_base=None):
        cfg = OmegaConf.to_object(compose("search", ["accuracy=train", "budget_ms=10", "study.rungs=[1,3]"]))
    study = optuna.create_study(directions=["maximize", "minimize"])
    for prior in (70.0, 75.0, 78.0):  # three measured candidates of class 0 (under half the budget), untrained
        study.add_trial(optuna.trial.create_trial(values=[0.5, 3.0], user_attrs={
            names.PRIOR_TOP1: prior, names.LATENCY_MS: 3.0}))
    ctx = SimpleNamespace(cfg=cfg)
    weak, strong = study.ask(), study.ask()
    for trial, prior in ((weak, 60.0), (strong, 79.0)):
        trial.set_user_attr(names.PRIOR_TOP1, prior)
        trial.set_user_attr(names.LATENCY_MS, 3.0)
        trial.set_user_attr(names.RUNG_TOP1, {"1": 0.9})
    assert not promoted_at(SimpleNamespace(trial=weak), ctx, 1, 0)  # the worst prior of five
    assert promoted_at(SimpleNamespace(trial=strong), ctx, 1, 0)  # the best
    for acc in [0.2] * MIN_PEERS:  # peers trained at rung 1: now the trained figure decides, not the prior
        study.add_trial(optuna.trial.create_trial(values=[acc, 3.0], user_attrs={
            names.RUNG_TOP1: {"1": acc}, names.LATENCY_MS: 3.0, names.PRIOR_TOP1: 90.0}))
    assert promoted_at(SimpleNamespace(trial=weak), ctx, 1, 0)  # 0.9 beats the trained peers' 0.2


def test_nsga2_population_follows_the_trial_count():
    with initialize_config_module(config_module="nas.conf", version_base=None):
        for n, population in ((16, 4), (64, 16), (1000, 50)):
            cfg = OmegaConf.to_object(compose("search", [f"study.n_trials={n}"]))
            assert make_sampler(cfg.study)._population_size == population
        cfg = OmegaConf.to_object(compose("search", ["study.population=12"]))
        assert make_sampler(cfg.study)._population_size == 12


def test_elpv_and_image_folders_train_where_the_last_stage_keeps_a_3x3_map():
    for cfg in (ElpvConfig(), ImageFolderConfig()):
        res = train_resolution(224, cfg.proxy_scale, cfg.min_resolution)
        assert res == LAST_STAGE_3X3 == 96  # 224 x 0.25 = 56 px used to leave 1x1 or 2x2
    model = build_model(reference_archs(resolution=96)["mobilenetv2_100"], num_classes=4).eval()
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 3, 96, 96)).shape[-2:] == (3, 3)
