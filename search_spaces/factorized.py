"""A factorized, MnasNet-style search space: a fixed skeleton of stages, independent choices per stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from nas.config import SearchSpaceConfig
from nas.core.arch import Arch, Block
from nas.core.errors import ConfigError
from nas.core.registry import spaces
from nas.search_spaces.references import reference_archs


class Suggester(Protocol):
    """The part of ``optuna.Trial`` a space needs (a ``FixedTrial`` works too)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class _Stage:
    kind: str
    stride: int
    channels: tuple[int, ...]
    depth: tuple[int, ...]
    kernel: tuple[int, ...]
    expansion: tuple[float, ...]
    se: tuple[float, ...]
    act: tuple[str, ...]


# A search space is a class built from its config: ``sample(trial)``, ``references()``, ``contains(arch)``.


@spaces.register("factorized")
class FactorizedSpace:
    """``sample(trial) -> Arch``, ``references()``, ``contains(arch)``, ``params_of(arch)``."""

    def __init__(self, cfg: SearchSpaceConfig) -> None:
        if not cfg.stages:
            raise ConfigError(f"search_space={cfg.name} lists no stages")
        self.name = cfg.name
        self.family = cfg.family
        self.stem_size = cfg.stem_size
        self.num_features = cfg.num_features
        self.acts = tuple(cfg.act)
        self.widths = tuple(float(w) for w in cfg.width)
        self.resolutions = tuple(int(r) for r in cfg.resolution)
        c = cfg.choices
        self.stages = tuple(
            _Stage(
                kind=st.kind,
                stride=st.stride,
                channels=tuple(st.channels),
                depth=tuple(st.depth or c.depth),
                kernel=tuple(st.kernel or c.kernel),
                expansion=(1.0,) if st.kind in ("ds", "cn") else tuple(float(e) for e in (st.expansion or c.expansion)),
                se=tuple(float(s) for s in (st.se if st.se is not None else c.se)),
                act=tuple(st.act or c.act),
            )
            for st in cfg.stages
        )

    # -- sampling ---------------------------------------------------------------------------------------------
    def sample(self, trial: Suggester) -> Arch:
        def pick(name: str, choices: tuple) -> Any:
            # Single-valued choices are fixed: no Optuna parameter, so enqueued params stay minimal.
            return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))

        act = pick("act", self.acts)
        stages = []
        for i, st in enumerate(self.stages):
            repeats, kernel = pick(f"s{i}_depth", st.depth), pick(f"s{i}_kernel", st.kernel)
            expansion = pick(f"s{i}_expansion", st.expansion)
            stages.append((Block(
                kind=_kind(st.kind, expansion),
                repeats=repeats,
                kernel=kernel,
                stride=st.stride,
                expansion=expansion,
                channels=pick(f"s{i}_channels", st.channels),
                se=pick(f"s{i}_se", st.se),
                act=pick(f"s{i}_act", st.act),
            ),))
        return Arch(
            family=self.family, stages=tuple(stages), stem_size=self.stem_size, num_features=self.num_features,
            act=act, width=pick("width", self.widths), resolution=pick("resolution", self.resolutions),
        ).canonical()

    def choices(self) -> dict[str, tuple]:
        """Every Optuna parameter of the space with its choices (single-valued choices are no parameter)."""
        seen = _Recorder()
        self.sample(seen)
        return seen.choices

    def arch_of(self, params: dict[str, Any]) -> Arch:
        """The arch ``sample`` returns for these parameter values."""
        return self.sample(_Fixed(params))

    def extremes(self) -> tuple[Arch, Arch]:
        """The space's smallest and largest networks: every choice at its minimum, then at its maximum."""
        return self.sample(_Extreme(min)), self.sample(_Extreme(max))

    # -- references -------------------------------------------------------------------------------------------
    def references(self) -> dict[str, Arch]:
        """timm's networks of the space's family at their native width (1.0) and resolution (224 px, or the space's
        nearest). The study measures each, whether or not the space can express it."""
        res = min(self.resolutions, key=lambda r: (abs(r - 224), -r))
        return {k: a for k, a in reference_archs(resolution=res).items() if a.family == self.family}

    def nearest_params(self, arch: Arch) -> dict[str, Any]:
        """The space's parameters closest to ``arch`` (exact when the space contains it): what the sampler is told
        about a reference it cannot express, so its trial still carries every parameter of the space."""
        exact = self.params_of(arch)
        if exact is not None:
            return exact
        def near(value: Any, choices: tuple) -> Any:
            if isinstance(value, str) or isinstance(choices[0], str):
                return value if value in choices else choices[0]
            return min(choices, key=lambda c: abs(float(c) - float(value)))

        values: dict[str, Any] = {"act": arch.act, "width": arch.width, "resolution": arch.resolution}
        stages = [s for s in arch.stages if s[0].kind != "cn"] or list(arch.stages)
        for i in range(len(self.stages)):
            stage = stages[min(i, len(stages) - 1)]
            b = stage[0]
            values.update({f"s{i}_depth": sum(x.repeats for x in stage), f"s{i}_kernel": b.kernel,
                           f"s{i}_expansion": b.expansion, f"s{i}_channels": b.channels, f"s{i}_se": b.se,
                           f"s{i}_act": b.act or arch.act})
        return {name: near(values[name], choices) for name, choices in self.choices().items()}

    def params_of(self, arch: Arch) -> dict[str, Any] | None:
        """The Optuna params that make ``sample`` return ``arch``, or None when the space cannot express it."""
        if (arch.family, arch.stem_size, arch.num_features) != (self.family, self.stem_size, self.num_features):
            return None
        if len(arch.stages) != len(self.stages) or any(len(s) != 1 for s in arch.stages):
            return None
        values: dict[str, tuple[Any, tuple]] = {
            "act": (arch.act, self.acts),
            "width": (float(arch.width), self.widths),
            "resolution": (arch.resolution, self.resolutions),
        }
        for i, ((b,), st) in enumerate(zip(arch.stages, self.stages, strict=True)):
            if (b.kind, b.stride) != (_kind(st.kind, b.expansion), st.stride):
                return None
            values.update({
                f"s{i}_depth": (b.repeats, st.depth),
                f"s{i}_kernel": (b.kernel, st.kernel),
                f"s{i}_expansion": (1.0 if b.kind in ("ds", "cn") else float(b.expansion), st.expansion),
                f"s{i}_channels": (b.channels, st.channels),
                f"s{i}_se": (float(b.se), st.se),
                f"s{i}_act": (b.act or arch.act, st.act),
            })
        if any(v not in choices for v, choices in values.values()):
            return None
        params = {k: v for k, (v, choices) in values.items() if len(choices) > 1}
        # The inverse must be exact: re-sampling from the params gives the same network.
        if self.sample(_Fixed(params)).hash != arch.hash:
            return None
        return params

    def contains(self, arch: Arch) -> bool:
        return self.params_of(arch) is not None


def _kind(kind: str, expansion: float) -> str:
    """Expansion 1 is EfficientNet's MBConv without its expansion conv: timm's depthwise-separable block."""
    return "ds" if kind == "ir" and float(expansion) == 1.0 else kind


class _Recorder:
    def __init__(self) -> None:
        self.choices: dict[str, tuple] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.choices[name] = tuple(choices)
        return choices[0]


class _Fixed:
    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.params[name]


class _Extreme:
    def __init__(self, pick: Any) -> None:
        self.pick = pick

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        if name.endswith("act") or name == "act":
            return choices[0]  # activations have no order; the first is the space's default
        return self.pick(choices)


def make_space(cfg: SearchSpaceConfig) -> FactorizedSpace:
    """The registered space implementation ``cfg.kind`` (the factorized one for the shipped YAMLs)."""
    return spaces.get(cfg.kind).factory(cfg)
