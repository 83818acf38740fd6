"""One training run of a candidate: seeded, from scratch, a complete one-cycle schedule over its epochs.

A run of E epochs is the accuracy "at fidelity E": each rung of the search and each seed of a re-evaluation is
such a run, so figures of one fidelity are always the same kind of figure. On CUDA the run uses mixed precision
and channels-last memory; on the CPU it is exactly the float32 loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nas.core.arch import Arch
from nas.core.errors import CandidateFailed, ConfigError, TrainingDiverged, first_line
from nas.data.datasets import Splits
from nas.search_spaces.build import build_model


@dataclass(frozen=True)
class Recipe:
    """How every candidate is trained (the study's settings)."""

    batch_size: int = 64
    lr: float = 0.01
    weight_decay: float = 1e-4
    threads: int = 1  # torch CPU threads
    device: str = "cpu"  # a resolved device: cpu, cuda, cuda:1


@dataclass(frozen=True)
class RunResult:
    top1: float  # validation top-1 at the end
    epochs: int
    seed: int
    train_seconds: float
    history: tuple[float, ...]  # validation top-1 after each epoch
    train_losses: tuple[float, ...]  # mean training loss of each epoch (summed: TSE, a convergence-speed figure)
    model: torch.nn.Module = field(compare=False, repr=False)  # trained, on the CPU (for the deployed form)


def resolve_device(name: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda`` without one is a one-line error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"study.device={name}: torch sees no CUDA GPU here (torch {torch.__version__}); "
                          "use study.device=auto or cpu")
    return name


def train_run(arch: Arch, data: Splits, epochs: int, seed: int, recipe: Recipe,
              on_epoch: Callable[[int, float], None] | None = None) -> RunResult:
    """Train ``arch`` from scratch for ``epochs`` at ``data``'s resolution and return validation top-1.

    ``on_epoch(epoch, top1)`` reports progress. A candidate whose training fails (a NaN loss, a shape its blocks
    cannot take, out of memory) raises ``CandidateFailed``.
    """
    try:
        return _run(arch, data, epochs, seed, recipe, on_epoch)
    except (RuntimeError, ValueError, MemoryError) as e:  # torch reports shape and memory failures this way
        if isinstance(e, CandidateFailed):
            raise
        raise CandidateFailed(f"{type(e).__name__}: {first_line(e)}") from e


def _run(arch: Arch, data: Splits, epochs: int, seed: int, recipe: Recipe,
         on_epoch: Callable[[int, float], None] | None) -> RunResult:
    torch.set_num_threads(recipe.threads)
    device = torch.device(recipe.device)
    cuda = device.type == "cuda"
    model = build_model(arch, num_classes=data.num_classes, seed=seed).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    # At most this many steps (a streamed dataset drops its last partial batch: a step short is harmless).
    steps = epochs * math.ceil(data.n_train / recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.2)
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    history: list[float] = []
    train_losses: list[float] = []
    for epoch in range(epochs):
        model.train()
        loss_sum, n_steps = torch.zeros((), device=device), 0
        for x, y in data.train_batches(recipe.batch_size, gen):
            x, y = _to(x, device, cuda), y.to(device, non_blocking=cuda)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=cuda):
                loss = F.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} in epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += loss.detach().float()
            n_steps += 1
        train_losses.append(float(loss_sum) / max(n_steps, 1))  # one sync per epoch, not per step
        history.append(top1(model, data, recipe.batch_size, device))
        if on_epoch is not None:
            on_epoch(epoch + 1, history[-1])
    model = model.cpu().float().to(memory_format=torch.contiguous_format).eval()
    return RunResult(history[-1], epochs, seed, time.perf_counter() - t0, tuple(history), tuple(train_losses),
                     model)


def _to(x: torch.Tensor, device: torch.device, cuda: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=cuda)
    return x.contiguous(memory_format=torch.channels_last) if cuda else x


@torch.no_grad()
def top1(model: torch.nn.Module, data: Splits, batch_size: int, device: torch.device | None = None) -> float:
    model.eval()
    device = device or torch.device("cpu")
    cuda = device.type == "cuda"
    correct = total = 0
    for x, y in data.val_batches(batch_size * 4):
        with torch.autocast(device.type, enabled=cuda):
            logits = model(_to(x, device, cuda))
        correct += int((logits.argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)
