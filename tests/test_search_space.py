import optuna
import pytest
from hydra import compose, initialize_config_module
from nas.search_spaces.factorized import make_space
from omegaconf import OmegaConf

from nas.build import build_model
from nas.config import SearchConfig


def space_cfg(name: str):
    with initialize_config_module(config_module="nas.conf", version_base=None):
        cfg: SearchConfig = OmegaConf.to_object(compose("search", overrides=[f"search_space={name}"]))
    return cfg.search_space


def test_default_space_expresses_three_references_exactly():
    space = make_space(space_cfg("mbconv"))
    fits = sorted(n for n, a in space.references().items() if space.contains(a))
    assert fits == ["efficientnet_b0", "mnasnet_100", "mobilenetv2_100"]


@pytest.mark.parametrize("name", ["mbconv", "mnv3"])
def test_sampled_archs_are_contained_and_reproducible_from_params(name):
    space = make_space(space_cfg(name))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(8):
        trial = study.ask()
        arch = space.sample(trial)
        assert space.contains(arch)
        assert space.params_of(arch) == trial.params
        study.tell(trial, 0.0)


def test_sampled_arch_builds_with_timm():
    space = make_space(space_cfg("mnv3"))
    arch = space.sample(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask())
    model = build_model(arch, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert model.num_classes == 10


def test_space_rejects_an_arch_outside_its_choices():
    mnv3 = make_space(space_cfg("mnv3"))
    assert not mnv3.contains(mnv3.references()["efficientnet_b0"])
