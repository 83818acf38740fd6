"""The accuracy proxy: a short, seeded training run and top-1 on the held-out split."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nas.accuracy.datasets import TensorSplits
from nas.arch import Arch
from nas.build import build_model


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the candidate is recorded as failed."""


@dataclass(frozen=True)
class AccuracyResult:
    top1: float
    epochs: int
    train_seconds: float
    final_loss: float
    history: tuple[float, ...]  # validation top-1 after each epoch
    cut_off: bool = False  # stopped early by the epoch callback
    top1_fp32: float | None = None  # with int8: the float model's top-1 (``top1`` is the quantized model's)


def evaluate_accuracy(arch: Arch, data: TensorSplits, epochs: int, batch_size: int, lr: float, seed: int,
                      threads: int, on_epoch: Callable[[int, float], bool] | None = None,
                      precision: str = "fp32", int8_runtime: str = "onnxruntime") -> AccuracyResult:
    """Train ``arch`` from scratch for ``epochs`` and return validation top-1.

    ``on_epoch(epoch, top1)`` is called after each epoch; returning ``True`` cuts the run short (the last
    accuracy is kept and ``cut_off`` set), so hopeless candidates stop early. With ``precision=int8`` the
    reported top-1 is the quantized model's, run as deployed: ONNX Runtime QDQ, or the int8 TFLite file
    (``int8_runtime=litert``).
    """
    torch.set_num_threads(threads)
    model = build_model(arch, num_classes=data.num_classes, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(data.y_train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    history: list[float] = []
    loss_value = float("nan")
    cut = False
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(data.y_train), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} in epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_value = loss.item()
        history.append(top1(model, data.x_val, data.y_val, batch_size))
        if on_epoch is not None and epoch + 1 < epochs and on_epoch(epoch + 1, history[-1]):
            cut = True
            break
    if precision == "int8" and not cut:
        if int8_runtime == "litert":
            from nas.tflite_convert import tflite_top1

            q = tflite_top1(model, data)[0]
        else:
            from nas.quantize import int8_top1

            q = int8_top1(model, data, batch_size)
        return AccuracyResult(q, len(history), time.perf_counter() - t0, loss_value, tuple(history), cut, history[-1])
    return AccuracyResult(history[-1], len(history), time.perf_counter() - t0, loss_value, tuple(history), cut)


@torch.no_grad()
def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size * 4):
        logits = model(x[start:start + batch_size * 4])
        correct += int((logits.argmax(1) == y[start:start + batch_size * 4]).sum())
    return correct / len(y)
