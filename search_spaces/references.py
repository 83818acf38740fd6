"""timm reference networks written as ``Arch`` values (the same block strings as timm's generators)."""

from __future__ import annotations

from nas.core.arch import Arch, Block


def _stages(defs: list[list[str]]) -> tuple[tuple[Block, ...], ...]:
    return tuple(tuple(_parse(s) for s in stage) for stage in defs)


def _parse(block_string: str) -> Block:
    """Parse the subset of timm's block-string grammar that ``Block.block_string`` writes."""
    kind, *ops = block_string.split("_")
    kw: dict = {"kind": kind, "expansion": 1.0, "se": 0.0, "act": None, "skip": None}
    codes = {"re": "relu", "r6": "relu6", "hs": "hard_swish", "sw": "swish"}
    for op in ops:
        if op == "noskip":
            kw["skip"] = False
        elif op.startswith("se"):
            kw["se"] = float(op[2:])
        elif op.startswith("n"):
            kw["act"] = codes[op[1:]]
        else:
            key = {"r": "repeats", "k": "kernel", "s": "stride", "e": "expansion", "c": "channels"}[op[0]]
            kw[key] = float(op[1:]) if key == "expansion" else int(op[1:])
    return Block(**kw)


REFERENCE_DEFS: dict[str, dict] = {
    "mobilenetv3_large_100": dict(
        family="mobilenetv3", stem_size=16, num_features=1280, act="hard_swish",
        stages=[
            ["ds_r1_k3_s1_e1_c16_nre"],
            ["ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"],
            ["ir_r3_k5_s2_e3_c40_se0.25_nre"],
            ["ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"],
            ["ir_r2_k3_s1_e6_c112_se0.25"],
            ["ir_r3_k5_s2_e6_c160_se0.25"],
            ["cn_r1_k1_s1_c960"],
        ],
    ),
    "mobilenetv3_small_100": dict(
        family="mobilenetv3", stem_size=16, num_features=1024, act="hard_swish",
        stages=[
            ["ds_r1_k3_s2_e1_c16_se0.25_nre"],
            ["ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"],
            ["ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"],
            ["ir_r2_k5_s1_e3_c48_se0.25"],
            ["ir_r3_k5_s2_e6_c96_se0.25"],
            ["cn_r1_k1_s1_c576"],
        ],
    ),
    "efficientnet_b0": dict(
        family="efficientnet", stem_size=32, num_features=1280, act="swish",
        stages=[
            ["ds_r1_k3_s1_e1_c16_se0.25"],
            ["ir_r2_k3_s2_e6_c24_se0.25"],
            ["ir_r2_k5_s2_e6_c40_se0.25"],
            ["ir_r3_k3_s2_e6_c80_se0.25"],
            ["ir_r3_k5_s1_e6_c112_se0.25"],
            ["ir_r4_k5_s2_e6_c192_se0.25"],
            ["ir_r1_k3_s1_e6_c320_se0.25"],
        ],
    ),
    "mnasnet_100": dict(
        family="efficientnet", stem_size=32, num_features=1280, act="relu",
        stages=[
            ["ds_r1_k3_s1_c16_noskip"],
            ["ir_r3_k3_s2_e3_c24"],
            ["ir_r3_k5_s2_e3_c40"],
            ["ir_r3_k5_s2_e6_c80"],
            ["ir_r2_k3_s1_e6_c96"],
            ["ir_r4_k5_s2_e6_c192"],
            ["ir_r1_k3_s1_e6_c320_noskip"],
        ],
    ),
    "mobilenetv2_100": dict(
        family="efficientnet", stem_size=32, num_features=1280, act="relu6",
        stages=[
            ["ds_r1_k3_s1_c16"],
            ["ir_r2_k3_s2_e6_c24"],
            ["ir_r3_k3_s2_e6_c32"],
            ["ir_r4_k3_s2_e6_c64"],
            ["ir_r3_k3_s1_e6_c96"],
            ["ir_r3_k3_s2_e6_c160"],
            ["ir_r1_k3_s1_e6_c320"],
        ],
    ),
}


def reference_archs(resolution: int = 224) -> dict[str, Arch]:
    """All reference networks, at the given deployment resolution."""
    return {
        name: Arch(name=name, resolution=resolution, **{**d, "stages": _stages(d["stages"])})
        for name, d in REFERENCE_DEFS.items()
    }
