"""Predictors screen, the device confirms (Once-for-All's lesson): evolution over thousands of candidates scored
in microseconds on the accuracy model and a latency predictor, then only a few are measured.

Each round fits the latency predictor on every latency this set-up has measured (a fitted predictor file wins when
one exists), evolves a population under the budget, and picks candidates by how sure the predictor is that they
meet it: the most accurate predicted to meet the budget at several confidence levels (mean, mean + std, ...), so a
predictor that is wrong in either direction still leaves the round something useful to measure and learn from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.core.arch import Arch
from nas.predictors.kernel_sum import KernelSumPredictor

# (archs) -> (mean ms, std ms)
LatencyModel = Callable[[list[Arch]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Pick:
    arch: Arch
    params: dict[str, Any]
    top1: float
    latency_ms: float
    latency_std_ms: float
    z: float  # picked as the best with predicted latency + z * std within the budget


@dataclass(frozen=True)
class Screening:
    picks: list[Pick]
    screened: int  # distinct candidates scored on the predictors


def latency_model(archs: list[Arch], latencies_ms: np.ndarray, num_classes: int) -> LatencyModel:
    """The screening's latency predictor from the set-up's few latencies so far: a kernel-sum fit whose uncertainty
    is never tighter than a few measurements allow. (Scaling it by its error on the nearest measured archs was tried:
    fewer Edge TPU picks over budget in one search, but median regret 1.25 against 1.00 on the FPGA benchmark.)"""
    model = KernelSumPredictor(num_classes=num_classes).fit(archs, np.asarray(latencies_ms, dtype=np.float64))
    floor = max(0.05, 0.5 / np.sqrt(len(archs)))

    def predict(batch: list[Arch]) -> tuple[np.ndarray, np.ndarray]:
        mean, std = model.predict(batch)
        return mean, np.maximum(std, floor * mean)

    return predict


def evolve(space: Any, top1: Callable[[list[Arch]], np.ndarray], latency: LatencyModel, budget_ms: float,
           n_pick: int, exclude: set[str], rng: np.random.Generator, population: int = 100,
           generations: int = 20) -> Screening:
    """Regularised evolution on the space's parameters (OFA's: keep the best quarter, refill by mutation and
    crossover); fitness is predicted top-1, less a steep penalty per unit of predicted latency over the budget."""
    choices = space.choices()
    names = list(choices)
    archive: dict[str, tuple[dict[str, Any], Arch, float, float, float]] = {}
    hash_of: dict[tuple, str] = {}  # params -> arch hash: building an Arch costs more than scoring it

    def score(pop: list[dict[str, Any]]) -> list[float]:
        new = []
        for p in pop:
            key = tuple(p[n] for n in names)
            if key in hash_of:
                continue
            arch = space.arch_of(p)
            hash_of[key] = arch.hash
            if arch.hash not in archive:
                new.append((p, arch))
        if new:
            archs = [a for _, a in new]
            acc = top1(archs)
            mean, std = latency(archs)
            for (p, a), t, m, s in zip(new, acc, mean, std, strict=True):
                archive[a.hash] = (p, a, float(t), float(m), float(s))
        return [_fitness(archive[hash_of[tuple(p[n] for n in names)]], budget_ms) for p in pop]

    def random_params() -> dict[str, Any]:
        return {n: choices[n][rng.integers(len(choices[n]))] for n in names}

    def mutate(p: dict[str, Any], rate: float = 0.15) -> dict[str, Any]:
        return {n: (choices[n][rng.integers(len(choices[n]))] if rng.random() < rate else v) for n, v in p.items()}

    def cross(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {n: (a[n] if rng.random() < 0.5 else b[n]) for n in names}

    pop = [random_params() for _ in range(population)]
    fit = score(pop)
    n_parents = max(2, population // 4)
    for _ in range(generations):
        order = np.argsort(fit)[::-1]
        parents = [pop[i] for i in order[:n_parents]]
        children = [mutate(parents[rng.integers(n_parents)]) for _ in range(population // 2)]
        children += [cross(parents[rng.integers(n_parents)], parents[rng.integers(n_parents)])
                     for _ in range(population - n_parents - len(children))]
        pop = parents + children
        fit = score(pop)
    return Screening(_pick(list(archive.values()), budget_ms, n_pick, exclude), len(archive))


def _fitness(entry: tuple[dict[str, Any], Arch, float, float, float], budget_ms: float) -> float:
    _, _, top1, mean, _ = entry
    over = max(0.0, mean / budget_ms - 1.0)
    return top1 - 100.0 * over


def _pick(entries: list[tuple[dict[str, Any], Arch, float, float, float]], budget_ms: float, n_pick: int,
          exclude: set[str]) -> list[Pick]:
    """For z = 0, then increasingly cautious levels: the most accurate candidate not yet taken with
    mean + z * std <= budget."""
    zs = np.linspace(0.0, 2.0, n_pick) if n_pick > 1 else np.array([0.5])
    taken = set(exclude)
    picks = []
    for z in zs:
        ok = [e for e in entries if e[1].hash not in taken and e[3] + z * e[4] <= budget_ms]
        if not ok:
            continue
        p, arch, t, m, s = max(ok, key=lambda e: (e[2], -e[3]))
        taken.add(arch.hash)
        picks.append(Pick(arch, p, t, m, s, float(z)))
    return picks
