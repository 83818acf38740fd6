"""The architecture value that travels through the whole pipeline.

An ``Arch`` is immutable, JSON-serialisable and has a stable hash: it is the key of the measurement cache and the
predictor's training set, so two equal networks must hash equally however they were produced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

FAMILIES = ("mobilenetv3", "efficientnet")
BLOCK_KINDS = ("ds", "ir", "er", "cn")
# timm block-string codes for a per-block activation override.
ACT_CODES = {"relu": "re", "relu6": "r6", "hard_swish": "hs", "swish": "sw"}


@dataclass(frozen=True)
class Block:
    """One timm block-string: ``repeats`` identical blocks, the first with ``stride``."""

    kind: str
    repeats: int
    kernel: int
    stride: int
    expansion: float
    channels: int
    se: float = 0.0
    act: str | None = None  # None: the model's activation
    skip: bool | None = None  # None: timm decides (residual when shapes allow); False: never

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"block kind must be one of {BLOCK_KINDS}, got {self.kind!r}")
        if self.act is not None and self.act not in ACT_CODES:
            raise ValueError(f"block act must be one of {sorted(ACT_CODES)}, got {self.act!r}")
        if self.repeats < 1 or self.kernel < 1 or self.stride not in (1, 2) or self.channels < 1:
            raise ValueError(f"invalid block {self}")

    def block_string(self) -> str:
        """The timm block string, e.g. ``ir_r2_k5_s2_e6_c40_se0.25_nsw``."""
        parts = [self.kind, f"r{self.repeats}", f"k{self.kernel}", f"s{self.stride}"]
        if self.kind != "cn":
            parts.append(f"e{_num(self.expansion)}")
        parts.append(f"c{self.channels}")
        if self.se:
            parts.append(f"se{_num(self.se)}")
        if self.act is not None:
            parts.append(f"n{ACT_CODES[self.act]}")
        if self.skip is False:
            parts.append("noskip")
        return "_".join(parts)


@dataclass(frozen=True)
class Arch:
    """A MobileNet/EfficientNet-style network: stem, stages of blocks, head.

    ``family`` picks timm's class: ``mobilenetv3`` (efficient head: pool, then 1x1 conv; hard-sigmoid SE) or
    ``efficientnet`` (1x1 conv + BN head, then pool; sigmoid SE). Channels are base channels scaled by ``width``
    with timm's ``round_channels``; ``num_features`` is the head width as built.
    """

    family: str
    stages: tuple[tuple[Block, ...], ...]
    stem_size: int
    num_features: int
    act: str
    width: float = 1.0
    resolution: int = 224
    name: str | None = field(default=None, compare=False)  # a reference's timm name, for labels only

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.act not in ACT_CODES:
            raise ValueError(f"act must be one of {sorted(ACT_CODES)}, got {self.act!r}")
        if not self.stages or any(not s for s in self.stages):
            raise ValueError("an Arch needs at least one non-empty stage")

    # -- identity -------------------------------------------------------------------------------------------
    def canonical(self) -> Arch:
        """The same network with no-op options dropped, so equal networks compare and hash equal."""
        stages = []
        in_ch = round_channels(self.stem_size, self.width)
        for stage in self.stages:
            blocks = []
            for b in stage:
                out_ch = round_channels(b.channels, self.width)
                skip = b.skip
                if skip is False and b.repeats == 1 and (b.stride != 1 or in_ch != out_ch or b.kind == "cn"):
                    skip = None  # a residual was impossible anyway
                act = None if b.act == self.act else b.act
                expansion = 1.0 if b.kind in ("ds", "cn") else float(b.expansion)
                blocks.append(replace(b, skip=skip, act=act, expansion=expansion, se=float(b.se)))
                in_ch = out_ch
            stages.append(tuple(blocks))
        return replace(self, stages=tuple(stages), width=float(self.width), name=None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = [[asdict(b) for b in stage] for stage in self.stages]
        if self.name is None:
            d.pop("name")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Arch:
        d = dict(d)
        d["stages"] = tuple(tuple(Block(**b) for b in stage) for stage in d["stages"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Arch:
        return cls.from_dict(json.loads(text))

    @property
    def hash(self) -> str:
        """Stable 16-hex-digit identity of the network (name and no-op options ignored)."""
        payload = json.dumps(self.canonical().to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    # -- timm view --------------------------------------------------------------------------------------------
    def block_strings(self) -> list[list[str]]:
        return [[b.block_string() for b in stage] for stage in self.stages]

    @property
    def depth(self) -> int:
        return sum(b.repeats for stage in self.stages for b in stage)

    def summary(self, label: str | None = None) -> str:
        """A short one-line description for progress output."""
        parts = []
        for stage in self.stages:
            b = stage[0]
            se = "se" if b.se else ""
            parts.append(f"{sum(x.repeats for x in stage)}{b.kind[0]}k{b.kernel}e{_num(b.expansion)}{se}")
        return f"{label or self.name or self.hash[:8]} w{_num(self.width)} r{self.resolution} " + " ".join(parts)


# timm's own channel rounding (so an Arch builds exactly what timm builds), imported on first use: timm loads torch,
# and reading or checking a configuration must not.
def round_channels(channels: float, multiplier: float = 1.0, divisor: int = 8, channel_min: int | None = None,
                   round_limit: float = 0.9) -> int:
    from timm.models._efficientnet_builder import round_channels as timm_round_channels

    return timm_round_channels(channels, multiplier, divisor, channel_min, round_limit)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    from timm.layers import make_divisible as timm_make_divisible

    return timm_make_divisible(v, divisor, min_value, round_limit)


def _num(x: float) -> str:
    return f"{x:g}"
