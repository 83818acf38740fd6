"""Read a timm MobileNet/EfficientNet-family model into an ``Arch``, checked by rebuilding it.

``arch_from_timm(name)`` builds timm's model (no weights), walks its stages and writes each block as a ``Block``
with the channels as built (``width=1.0``). Where timm's recipe left exact ratios (expansion, squeeze-excite) they
are kept when they rebuild the same channels; otherwise the simplest ratio that does is chosen. The result is then
built with ``build.build_model`` and compared with timm's model module by module (classes, conv shapes,
strides, groups, activations, residuals, parameter count): anything the ``Arch`` cannot say exactly is a
``ArchError`` with one line naming the model and the first thing that differs. Padding ('same' in tf_ models)
and batch-norm eps/momentum carry no parameters and are not compared.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from nas.core.arch import ACT_CODES, Arch, Block
from nas.core.errors import ArchError, first_line

_KINDS_READ = "nas reads ir, ds, er and cn blocks"

# timm / torch activation classes -> the Arch's names (others are kept as their class name and never match).
_ACT_NAMES = {
    "ReLU": "relu", "ReLU6": "relu6",
    "Hardswish": "hard_swish", "HardSwish": "hard_swish", "HardSwishMe": "hard_swish",
    "SiLU": "swish", "Swish": "swish", "SwishMe": "swish",
    "Sigmoid": "sigmoid", "Hardsigmoid": "hard_sigmoid", "HardSigmoid": "hard_sigmoid", "HardSigmoidMe": "hard_sigmoid",
    "GELU": "gelu", "Mish": "mish", "MishMe": "mish", "PReLU": "prelu", "Tanh": "tanh",
}
_ANY = "any"  # a block whose residual is impossible: skip=None and skip=False build the same thing


def arch_from_timm(name: str, resolution: int | None = None) -> Arch:
    """The ``Arch`` of timm model ``name`` (e.g. ``efficientnet_b1``), at ``resolution`` or timm's input size.

    Raises ``ArchError`` (one line) for an unknown name or a model the ``Arch`` cannot express exactly.
    """
    import timm
    import torch

    model, records = _create(name, timm, torch)
    family = {"EfficientNet": "efficientnet", "MobileNetV3": "mobilenetv3"}.get(type(model).__name__)
    if family is None or type(model).__module__ not in ("timm.models.efficientnet", "timm.models.mobilenetv3"):
        raise _cannot(name, f"it is a {type(model).__name__}, not a timm EfficientNet or MobileNetV3 ({_KINDS_READ})")
    arch = _read(name, model, family, records, resolution or _default_resolution(name, model, timm))
    _verify(name, model, arch, torch)
    return arch


# -- building timm's model --------------------------------------------------------------------------------------------
def _create(name: str, timm: Any, torch: Any) -> tuple[Any, list[dict] | None]:
    """timm's model (on 'meta': shapes only) and the block args its builder was given, one per block."""
    from timm.models import _efficientnet_builder as eb

    base = name.split(".", 1)[0] if isinstance(name, str) else ""
    if not base or not timm.is_model(base):
        known = timm.list_models()
        close = difflib.get_close_matches(base, known, n=3, cutoff=0.75)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ArchError(f"unknown timm model {name!r}: {hint}see timm.list_models('*efficientnet*')")

    records: list[dict] = []
    original = eb.EfficientNetBuilder._make_block

    def recording(self: Any, ba: dict, *args: Any, **kwargs: Any) -> Any:
        records.append(dict(ba))  # the recipe's own ratios (e.g. e2.3, se0.25), before the builder consumes them
        return original(self, ba, *args, **kwargs)

    eb.EfficientNetBuilder._make_block = recording
    try:
        try:
            with torch.device("meta"):  # shapes only: no memory, no weight init cost, never any download
                model = timm.create_model(name, pretrained=False)
        except Exception:  # a model that cannot be built on 'meta': build it for real
            records.clear()
            model = timm.create_model(name, pretrained=False)
    except Exception as e:  # timm's own failure, reported as one line
        raise ArchError(f"timm could not build model {name!r}: {first_line(e)}") from e
    finally:
        eb.EfficientNetBuilder._make_block = original
    n_blocks = sum(len(s) for s in getattr(model, "blocks", ()) if hasattr(s, "__len__"))
    return model, (records if len(records) == n_blocks else None)


def _default_resolution(name: str, model: Any, timm: Any) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    if size is None:
        pcfg = timm.get_pretrained_cfg(name.split(".", 1)[0])
        size = getattr(pcfg, "input_size", None) if pcfg is not None else None
    return int(size[-1]) if size else 224


# -- reading ----------------------------------------------------------------------------------------------------------
def _read(name: str, model: Any, family: str, records: list[dict] | None, resolution: int) -> Arch:
    from timm.models import _efficientnet_blocks as B
    from timm.models._efficientnet_builder import round_channels

    kinds = {B.DepthwiseSeparableConv: "ds", B.InvertedResidual: "ir", B.EdgeResidual: "er", B.ConvBnAct: "cn"}

    stem = model.conv_stem
    if type(stem).__name__ not in ("Conv2d", "Conv2dSame") or stem.kernel_size != (3, 3) or stem.stride != (2, 2):
        raise _cannot(name, f"its stem is {_conv_text(stem)} (the Arch's stem is a 3x3 stride-2 conv)")
    if "BatchNorm" not in type(model.bn1).__name__:
        raise _cannot(name, f"its stem is normalised by {type(model.bn1).__name__} (the Arch builds BatchNorm)")
    act = _act_name(model.bn1)
    if act not in ACT_CODES:
        raise _cannot(name, f"its activation is {act} (the Arch has {', '.join(sorted(ACT_CODES))})")
    stem_size = _check_channels(name, "the stem", stem.out_channels, round_channels)
    head = getattr(model, "conv_head", None)
    if head is None or not hasattr(head, "out_channels"):
        raise _cannot(name, "it has no 1x1 head conv (the Arch's head width num_features must be > 0)")

    stages: list[tuple[Block, ...]] = []
    in_ch = stem_size
    k = 0
    for si, stage in enumerate(model.blocks):
        groups: list[list] = []  # [block, skip-or-_ANY]
        for bi, blk in enumerate(stage):
            where = f"block {si}.{bi}"
            kind = kinds.get(type(blk))
            if kind is None:
                raise _cannot(name, f"{where} is {type(blk).__name__} ({_KINDS_READ})")
            rec = records[k] if records is not None else {}
            k += 1
            block, skip = _read_block(name, where, blk, kind, family, act, in_ch, rec, round_channels)
            last = groups[-1] if groups else None
            if last is not None and _merges(last, block, skip):
                b0, s0 = last
                last[0] = replace(b0, repeats=b0.repeats + 1)
                last[1] = skip if s0 == _ANY else s0
            else:
                groups.append([block, skip])
            in_ch = block.channels
        if not groups:
            continue
        stages.append(tuple(replace(b, skip=None if s == _ANY else s) for b, s in groups))

    return Arch(
        family=family, stages=tuple(stages), stem_size=stem_size, num_features=int(head.out_channels), act=act,
        width=1.0, resolution=int(resolution), name=name,
    )


def _read_block(name: str, where: str, blk: Any, kind: str, family: str, model_act: str, in_ch: int,
                rec: dict, round_channels: Callable) -> tuple[Block, Any]:
    from timm.layers import make_divisible

    main = {"ds": "conv_dw", "ir": "conv_dw", "er": "conv_exp", "cn": "conv"}[kind]
    conv = getattr(blk, main)
    if type(conv).__name__ not in ("Conv2d", "Conv2dSame"):
        what = {"MixedConv2d": "mixed kernels", "CondConv2d": "CondConv experts"}.get(type(conv).__name__, "")
        raise _cannot(name, f"{where} uses {type(conv).__name__}{f' ({what})' if what else ''}, which the Arch lacks")
    if getattr(blk, "conv_s2d", None) is not None:
        raise _cannot(name, f"{where} starts with a space-to-depth conv, which the Arch lacks")
    first = blk.conv_pw if kind == "ir" else conv
    if first.in_channels != in_ch:
        raise _cannot(name, f"{where} takes {first.in_channels} channels after {in_ch} (a pruned or forced-in model)")
    if conv.kernel_size[0] != conv.kernel_size[1]:
        raise _cannot(name, f"{where} has a {conv.kernel_size} kernel (the Arch's kernels are square)")
    if conv.dilation != (1, 1):
        raise _cannot(name, f"{where} is dilated {conv.dilation}")
    kernel, stride = int(conv.kernel_size[0]), int(conv.stride[0])
    if type(getattr(blk, "aa", None)).__name__ not in ("Identity", "NoneType"):
        raise _cannot(name, f"{where} has anti-aliasing ({type(blk.aa).__name__}), which the Arch lacks")

    if kind == "ds" and type(getattr(blk.bn2, "act", None)).__name__ not in ("Identity", "NoneType"):
        raise _cannot(name, f"{where} has an activation after its pointwise conv (timm 'dsa'), which the Arch lacks")
    norm = blk.bn1
    if "BatchNorm" not in type(norm).__name__:
        raise _cannot(name, f"{where} is normalised by {type(norm).__name__} (the Arch builds BatchNorm)")
    act = _act_name(norm)
    if act not in ACT_CODES:
        raise _cannot(name, f"{where} uses activation {act} (the Arch has {', '.join(sorted(ACT_CODES))})")

    if kind == "cn":
        out_ch = conv.out_channels
        mid = None
    elif kind == "ds":
        out_ch = blk.conv_pw.out_channels
        mid = in_ch
    elif kind == "ir":
        out_ch, mid = blk.conv_pwl.out_channels, blk.conv_pw.out_channels
    else:
        out_ch, mid = blk.conv_pwl.out_channels, conv.out_channels
    out_ch = _check_channels(name, where, out_ch, round_channels)

    expansion = 1.0
    if kind in ("ir", "er"):
        recorded = rec.get("exp_ratio")
        e = _pick(mid / in_ch, [recorded], lambda v: make_divisible(in_ch * v) == mid)
        if e is None:
            raise _cannot(name, f"{where} expands {in_ch} to {mid} channels, which no expansion ratio rebuilds "
                                "(timm rounds to multiples of 8)")
        expansion = e

    se = 0.0
    se_mod = getattr(blk, "se", None)
    if se_mod is not None and type(se_mod).__name__ != "Identity":
        if type(se_mod).__name__ != "SqueezeExcite":
            raise _cannot(name, f"{where} has attention {type(se_mod).__name__} (the Arch has timm's SqueezeExcite)")
        gate, se_act = _act_name(se_mod.gate), _act_name(se_mod.act1)
        want_gate, want_act = ("hard_sigmoid", "relu") if family == "mobilenetv3" else ("sigmoid", act)
        if (gate, se_act) != (want_gate, want_act):
            raise _cannot(name, f"{where} has a {se_act}/{gate} squeeze-excite; the Arch's {family} family "
                                f"builds {want_act}/{want_gate}")
        c_se, rd = se_mod.conv_reduce.in_channels, se_mod.conv_reduce.out_channels

        def rebuilds(v: float) -> bool:
            if family == "mobilenetv3":  # se_from_exp, rounded to multiples of 8 (nas.search_spaces.build)
                return round_channels(c_se * v) == rd
            ratio = v
            ratio /= expansion if kind in ("ir", "er") else 1.0  # EfficientNet's SE reduces from block input
            return round(c_se * ratio) == rd

        target = rd / c_se if family == "mobilenetv3" else rd * (expansion if kind in ("ir", "er") else 1.0) / c_se
        se = _pick(target, [rec.get("se_ratio"), 0.25, 0.125, 0.0625, 0.5], rebuilds)
        if se is None:
            rounding = "to multiples of 8" if family == "mobilenetv3" else "to integers"
            raise _cannot(name, f"{where} squeezes {c_se} to {rd} channels, which no se ratio rebuilds in the "
                                f"{family} family (it rounds them {rounding})")

    # Residual: the Arch says 'timm decides' (None) or 'noskip' (False); a forced residual cannot be said.
    possible = stride == 1 and in_ch == out_ch
    if kind == "cn":
        if blk.has_skip:
            raise _cannot(name, f"{where} is a ConvBnAct with a residual ('skip'), which the Arch cannot express")
        skip: Any = _ANY
    elif not possible:
        skip = _ANY
    else:
        skip = None if blk.has_skip else False

    return Block(kind=kind, repeats=1, kernel=kernel, stride=stride, expansion=float(expansion), channels=out_ch,
                 se=float(se), act=None if act == model_act else act), skip


def _merges(last: list, block: Block, skip: Any) -> bool:
    b0, s0 = last
    if block.stride != 1:
        return False
    if replace(b0, repeats=1, stride=1, skip=None) != replace(block, skip=None):
        return False
    return s0 == skip or (s0 == _ANY and b0.repeats == 1) or skip == _ANY


def _pick(target: float, preferred: list, ok: Callable[[float], bool]) -> float | None:
    """The first of ``preferred``, then the shortest decimal near ``target``, that ``ok`` accepts as written."""
    for v in _candidates(target, preferred):
        if ok(v):
            return v
    return None


def _candidates(target: float, preferred: list) -> Iterator[float]:
    seen: set[float] = set()
    raw: list = list(preferred)
    for d in range(7):
        base = round(target, d)
        raw += [base, round(base + 10**-d, d), round(base - 10**-d, d)]
    for v in raw:
        if v is None:
            continue
        v = float(f"{float(v):g}")  # what Block.block_string writes and timm parses back
        if v > 0 and v not in seen:
            seen.add(v)
            yield v


def _check_channels(name: str, where: str, c: int, round_channels: Callable) -> int:
    if round_channels(c, 1.0) != c:
        raise _cannot(name, f"{where} has {c} channels, which timm's round_channels makes "
                            f"{round_channels(c, 1.0)} (the Arch keeps multiples of 8)")
    return int(c)


# -- verifying by construction ----------------------------------------------------------------------------------------
def _verify(name: str, model: Any, arch: Arch, torch: Any) -> None:
    from nas.search_spaces.build import build_model, count_params

    try:
        with torch.device("meta"):
            rebuilt = build_model(arch, num_classes=1000, seed=None)
    except Exception as e:
        raise _cannot(name, f"its Arch does not build ({first_line(e)})") from e
    theirs, ours = _signature(model), _signature(rebuilt)
    if theirs != ours:
        for (n1, s1), (n2, s2) in zip(theirs, ours, strict=False):
            if (n1, s1) != (n2, s2):
                raise _cannot(name, f"{_where(n1)} is {n1} {s1} in timm but {n2} {s2} in its Arch")
        longer, label = (theirs, "timm") if len(theirs) > len(ours) else (ours, "its Arch")
        n, s = longer[min(len(theirs), len(ours))]
        raise _cannot(name, f"{label} has an extra {n} {s}")
    p_theirs, p_ours = count_params(model), count_params(rebuilt)
    if p_theirs != p_ours:
        raise _cannot(name, f"its Arch rebuilds {p_ours:,} parameters, timm has {p_theirs:,}")


def _signature(model: Any) -> list[tuple[str, tuple]]:
    """What defines the network apart from padding and norm eps: one entry per meaningful module."""
    from torch import nn

    out = []
    for n, m in model.named_modules():
        cls = type(m).__name__
        if isinstance(m, nn.Conv2d):
            sig: tuple = ("conv", m.in_channels, m.out_channels, m.kernel_size, m.stride, m.groups, m.dilation,
                          m.bias is not None)
        elif isinstance(m, nn.Linear):
            sig = ("linear", m.in_features, m.out_features, m.bias is not None)
        elif isinstance(m, nn.BatchNorm2d):
            sig = ("batchnorm", m.num_features, m.affine)
        elif cls in _ACT_NAMES:
            sig = ("act", _ACT_NAMES[cls])
        elif cls in ("Identity", "Sequential", "Dropout", "DropPath", "Flatten", "SelectAdaptivePool2d",
                     "AdaptiveAvgPool2d", "EfficientNet", "MobileNetV3"):
            continue
        else:
            sig = (cls, bool(getattr(m, "has_skip", False)))
        out.append((n, sig))
    return out


def _where(module_name: str) -> str:
    parts = module_name.split(".")
    if len(parts) >= 3 and parts[0] == "blocks":
        return f"block {parts[1]}.{parts[2]}"
    return parts[0] or "the model"


# -- small helpers ----------------------------------------------------------------------------------------------------
def _act_name(m: Any) -> str:
    act = getattr(m, "act", m)
    cls = type(act).__name__
    return _ACT_NAMES.get(cls, cls)


def _conv_text(conv: Any) -> str:
    k, s = getattr(conv, "kernel_size", "?"), getattr(conv, "stride", "?")
    return f"{type(conv).__name__} kernel {k} stride {s}"


def _cannot(name: str, why: str) -> ArchError:
    return ArchError(f"timm model {name!r} cannot be expressed as an Arch: {why}")
