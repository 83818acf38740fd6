"""Build an ``Arch`` into a timm ``nn.Module`` with timm's own decoder and model classes."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import get_act_layer
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from torch import nn

from nas.core.arch import Arch


def build_model(arch: Arch, num_classes: int = 1000, seed: int | None = 0) -> nn.Module:
    """The timm model for ``arch``; ``seed`` fixes the initial weights so an export is reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    common = dict(
        block_args=decode_arch_def(arch.block_strings()),
        num_classes=num_classes,
        stem_size=arch.stem_size,
        num_features=arch.num_features,
        round_chs_fn=partial(round_channels, multiplier=arch.width),
        act_layer=get_act_layer(arch.act),
    )
    if arch.family == "mobilenetv3":
        se_layer = partial(
            SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=round_channels
        )
        model = MobileNetV3(**common, se_layer=se_layer)
    else:
        model = EfficientNet(**common)
    return model.eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
