"""Features of an ``Arch`` at the deployment shape, computed analytically (no model is built).

Per block: kind, kernel, expansion, in/mid/out channels, stride, squeeze-excite, activation, spatial size, MACs.
Per arch: those summed per kernel category (the nn-Meter view: a network's latency is the sum of its kernels'),
plus totals such as MACs, params, activation and weight bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nas.core.arch import Arch, make_divisible, round_channels

ACT_GROUP = {"relu": "relu", "relu6": "relu", "hard_swish": "hswish", "swish": "swish"}


@dataclass(frozen=True)
class BlockFeatures:
    kind: str
    kernel: int
    expansion: float
    in_ch: int
    mid_ch: int
    out_ch: int
    stride: int
    se_ch: int  # squeeze-excite reduced channels, 0 without SE
    act: str
    h_in: int
    h_out: int
    residual: bool
    pw_macs: int  # 1x1 expansion + projection
    dw_macs: int
    se_macs: int

    @property
    def macs(self) -> int:
        return self.pw_macs + self.dw_macs + self.se_macs

    @property
    def key(self) -> tuple:
        """Everything that fixes the block's cost: the lookup-table key."""
        return (self.kind, self.kernel, self.expansion, self.in_ch, self.out_ch, self.stride, self.se_ch, self.act,
                self.h_in, self.residual)


def _out(h: int, k: int, s: int) -> int:
    pad = ((s - 1) + (k - 1)) // 2  # timm's symmetric 'same'-style padding
    return (h + 2 * pad - k) // s + 1


def block_features(arch: Arch) -> tuple[list[BlockFeatures], dict[str, int]]:
    """Per-block features, and the stem/head figures, for ``arch`` at its deployment resolution."""
    h = _out(arch.resolution, 3, 2)
    stem = round_channels(arch.stem_size, arch.width)
    stem_macs = h * h * 3 * 9 * stem
    blocks: list[BlockFeatures] = []
    in_ch = stem
    for stage in arch.stages:
        for b in stage:
            out_ch = round_channels(b.channels, arch.width)
            act = b.act or arch.act
            for r in range(b.repeats):
                stride = b.stride if r == 0 else 1
                h_out = _out(h, b.kernel, stride)
                residual = stride == 1 and in_ch == out_ch and b.skip is not False and b.kind != "cn"
                if b.kind == "ir":
                    mid = make_divisible(in_ch * b.expansion)
                    pw = h * h * in_ch * mid + h_out * h_out * mid * out_ch
                    dw = h_out * h_out * mid * b.kernel * b.kernel
                    se_from = mid
                elif b.kind == "er":
                    mid = make_divisible(in_ch * b.expansion)
                    pw = h_out * h_out * mid * out_ch
                    dw = h_out * h_out * in_ch * mid * b.kernel * b.kernel  # a full conv, counted here
                    se_from = mid
                elif b.kind == "ds":
                    mid = in_ch
                    pw = h_out * h_out * in_ch * out_ch
                    dw = h_out * h_out * in_ch * b.kernel * b.kernel
                    se_from = in_ch
                else:  # cn: a plain conv-bn-act
                    mid = in_ch
                    pw = h_out * h_out * in_ch * out_ch * b.kernel * b.kernel
                    dw = 0
                    se_from = in_ch
                se_ch = 0
                if b.se:
                    if arch.family == "mobilenetv3":
                        se_ch = round_channels(se_from * b.se)
                    else:  # EfficientNet: the ratio applies to the block's input channels
                        se_ch = max(1, int(in_ch * b.se))
                se_macs = 2 * se_from * se_ch if se_ch else 0
                blocks.append(BlockFeatures(b.kind, b.kernel, float(b.expansion), in_ch, mid, out_ch, stride, se_ch,
                                            act, h, h_out, residual, pw, dw, se_macs))
                in_ch, h = out_ch, h_out
    if arch.family == "mobilenetv3":
        head_macs = in_ch * arch.num_features
    else:
        head_macs = h * h * in_ch * arch.num_features
    return blocks, {"stem_macs": stem_macs, "head_macs": head_macs, "last_ch": in_ch, "last_h": h}


# The arch-level feature vector: sums over kernel categories, then totals.
FEATURE_NAMES = (
    "stem_macs", "head_macs", "pw_macs", "dw3_macs", "dw5_macs", "dw7_macs", "se_macs",
    "pw_bytes", "dw_bytes", "act_relu", "act_hswish", "act_swish", "residual_elems",
    "n_blocks", "n_se", "n_residual", "weights", "macs",
)


def arch_features(arch: Arch, num_classes: int = 1000) -> np.ndarray:
    """One row of ``FEATURE_NAMES`` for ``arch`` (MACs in millions, bytes in MB, counts as they are)."""
    blocks, fixed = block_features(arch)
    f = dict.fromkeys(FEATURE_NAMES, 0.0)
    f["stem_macs"] = fixed["stem_macs"]
    f["head_macs"] = fixed["head_macs"] + arch.num_features * num_classes
    weights = 27 * round_channels(arch.stem_size, arch.width) + fixed["last_ch"] * arch.num_features
    weights += arch.num_features * num_classes
    for b in blocks:
        f["pw_macs"] += b.pw_macs
        if b.kernel in (3, 5, 7) and b.dw_macs:
            f[f"dw{b.kernel}_macs"] += b.dw_macs
        elif b.dw_macs:
            f["pw_macs"] += b.dw_macs
        f["se_macs"] += b.se_macs
        # Bytes the convolutions read and write (float32): memory traffic, which dominates depthwise layers.
        f["pw_bytes"] += 4 * (b.h_in ** 2 * b.in_ch + b.h_out ** 2 * (2 * b.mid_ch + b.out_ch))
        f["dw_bytes"] += 4 * (b.h_in ** 2 * b.mid_ch + b.h_out ** 2 * b.mid_ch)
        elems = b.h_in ** 2 * b.mid_ch + b.h_out ** 2 * b.mid_ch
        f[f"act_{ACT_GROUP[b.act]}"] += elems
        f["n_blocks"] += 1
        f["n_se"] += b.se_ch > 0
        f["n_residual"] += b.residual
        f["residual_elems"] += b.h_out ** 2 * b.out_ch if b.residual else 0
        weights += b.pw_macs // max(1, b.h_out ** 2) + b.dw_macs // max(1, b.h_out ** 2) + b.se_macs
    f["weights"] = weights
    f["macs"] = (f["stem_macs"] + f["head_macs"] + f["pw_macs"] + f["dw3_macs"] + f["dw5_macs"] + f["dw7_macs"]
                 + f["se_macs"])
    scale = {k: 1e-6 for k in FEATURE_NAMES if k.endswith(("_macs", "_bytes", "_elems")) or k.startswith("act_")}
    scale.update(weights=1e-6, macs=1e-6)
    return np.array([f[k] * scale.get(k, 1.0) for k in FEATURE_NAMES], dtype=np.float64)


def features_matrix(archs: list[Arch], num_classes: int = 1000) -> np.ndarray:
    return np.stack([arch_features(a, num_classes) for a in archs]) if archs else np.zeros((0, len(FEATURE_NAMES)))
