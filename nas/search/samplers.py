"""Optuna samplers by name (``study.sampler``). Each honours the latency constraint that trials record with
``trial.set_constraint`` (Optuna 5 reads it from the trial; no ``constraints_func`` is needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nas.core.registry import samplers

if TYPE_CHECKING:
    from nas.config import StudyConfig



@samplers.register("nsga2")
def nsga2(cfg: StudyConfig) -> Any:
    import optuna

    # A population of a quarter of the run's trials gives four generations (a fixed 8 gave two in 16 trials).
    population = cfg.population or min(50, max(4, cfg.n_trials // 4))
    return optuna.samplers.NSGAIISampler(seed=cfg.seed, population_size=population)


@samplers.register("tpe")
def tpe(cfg: StudyConfig) -> Any:
    import optuna

    # The constant liar keeps parallel workers from proposing the same point while a trial is running.
    return optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True, constant_liar=True)


@samplers.register("random")
def random(cfg: StudyConfig) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=cfg.seed)


def make_sampler(cfg: StudyConfig) -> Any:
    return samplers.get(cfg.sampler).factory(cfg)
