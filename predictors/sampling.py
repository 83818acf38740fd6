"""Diverse archs for fitting and evaluating predictors: stratified over MACs, not the sampler's favourites."""

from __future__ import annotations

from typing import Any

import numpy as np

from nas.core.arch import Arch
from nas.predictors.features import arch_features
from nas.search_spaces.factorized import FactorizedSpace

_MACS = -1  # index of total MACs in the feature vector


class _RandomChoices:
    """Uniform random choices in place of an Optuna trial."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return choices[int(self.rng.integers(len(choices)))]


def sample_stratified(space: FactorizedSpace, n: int, seed: int, exclude: set[str] = frozenset(),
                      pool_factor: int = 20) -> list[Arch]:
    """``n`` distinct archs, one from each of ``n`` equal-count MACs bins of a large uniform pool."""
    rng = np.random.default_rng(seed)
    pool: dict[str, Arch] = {}
    for _ in range(n * pool_factor):
        arch = space.sample(_RandomChoices(rng))
        if arch.hash not in exclude:
            pool.setdefault(arch.hash, arch)
    archs = list(pool.values())
    if len(archs) <= n:
        return archs
    macs = np.array([arch_features(a)[_MACS] for a in archs])
    order = np.argsort(macs)
    bins = np.array_split(order, n)
    return [archs[int(rng.choice(b))] for b in bins]
