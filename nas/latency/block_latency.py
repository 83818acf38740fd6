"""Latency of an arch's parts (stem, each block, head) measured in isolation: the lookup table's entries."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nas.core.arch import Arch
from nas.latency.onnx_export import export_onnx
from nas.latency.targets.base import Target
from nas.predictors.lut import EntryMeasure, entry_keys
from nas.search_spaces.build import build_model


class _Head(nn.Module):
    """What follows the blocks: conv head (+BN) and pooling in the family's order, then the classifier."""

    def __init__(self, model: nn.Module, family: str) -> None:
        super().__init__()
        self.model, self.family = model, family

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.family == "efficientnet":
            x = self.model.bn2(self.model.conv_head(x))
        return self.model.forward_head(x)


def arch_parts(arch: Arch, num_classes: int) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(table key, module, input shape) for the stem, every block and the head, as timm builds them."""
    model = build_model(arch, num_classes=num_classes)
    blocks = [blk for stage in model.blocks for blk in stage]
    shapes: list[tuple[int, ...]] = []
    hooks = [b.register_forward_pre_hook(lambda _m, inp: shapes.append(tuple(inp[0].shape))) for b in blocks]
    head_in: list[tuple[int, ...]] = []
    last = model.blocks[-1]
    hooks.append(last.register_forward_hook(lambda _m, _i, out: head_in.append(tuple(out.shape))))
    with torch.no_grad():
        model(torch.zeros(1, 3, arch.resolution, arch.resolution))
    for h in hooks:
        h.remove()
    keys = [k for k, _ in entry_keys(arch, num_classes)]
    if len(keys) != len(blocks) + 2:
        raise RuntimeError(f"arch {arch.hash}: {len(blocks)} timm blocks but {len(keys) - 2} feature blocks")
    stem = nn.Sequential(model.conv_stem, model.bn1)
    parts = [(keys[0], stem, (1, 3, arch.resolution, arch.resolution))]
    parts += [(k, b, s) for k, b, s in zip(keys[1:-1], blocks, shapes, strict=True)]
    parts.append((keys[-1], _Head(model, arch.family), head_in[0]))
    return parts


def make_entry_measure(target: Target, scratch: Path, num_classes: int) -> EntryMeasure:
    """A ``measure_entries`` function for the lookup table, measuring on ``target``."""
    cfg = target.cfg

    def measure_entries(arch: Arch, keys: list[str]) -> dict[str, float]:
        wanted = set(keys)
        out: dict[str, float] = {}
        for key, module, shape in arch_parts(arch, num_classes):
            if key in wanted and key not in out:
                path = export_onnx(module.eval(), shape, scratch / "entry.onnx", str(cfg.exporter), cfg.opset)
                out[key] = target.measure(path).stats.value(str(cfg.statistic))
        return out

    return measure_entries
