"""Training a candidate, by the book and rung by rung.

One ``Training`` is one seeded run of a candidate under a schedule that spans ``horizon`` epochs (the study's top
rung). ``advance_to(E)`` continues it to E epochs and evaluates it, so rung after rung costs only the epochs it adds
(a promoted candidate of rungs 1 and 3 trains 3 epochs, not 1 + 3), and "the figure at fidelity E" is always "E
epochs into a horizon-epoch schedule". ``train_run`` is one Training taken to its horizon: each seed of a
re-evaluation, and a trial's own top rung, are the same kind of run.

The parts are timm's and torch's own: ``create_optimizer_v2`` (AdamW, no weight decay on norms and biases),
``create_scheduler_v2`` (cosine with a linear warm-up, stepped per update), optionally ``ModelEmaV3``, and
``torch.optim.swa_utils.update_bn``, which recomputes BatchNorm's statistics from training batches before every
evaluation: after a few hundred steps the running averages still remember the first, untrained steps, and the
short-trained network would be judged on them.

Validation images are split in two stratified halves: ``select`` (what promotion, the ranking and the export's
choice read) and ``report`` (what the model card states), so the reported figure is not the maximum the choice was
made on. On CUDA a run uses mixed precision and channels-last memory; on the CPU it is the float32 loop.
"""

from __future__ import annotations

import copy
import itertools
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

BN_BATCHES = 20  # training batches that BatchNorm's statistics are recomputed from before an evaluation


@dataclass(frozen=True)
class Recipe:
    """How every candidate is trained (the study's settings)."""

    batch_size: int = 64
    lr: float = 0.01
    weight_decay: float = 1e-4  # on weights only: timm leaves norms and biases out
    warmup: float = 0.2  # fraction of the horizon spent warming the learning rate up
    ema_decay: float | None = None  # timm's ModelEmaV3 (with warm-up) evaluated instead of the raw weights
    threads: int = 1  # torch CPU threads
    device: str = "cpu"  # a resolved device: cpu, cuda, cuda:1


@dataclass(frozen=True)
class RunResult:
    top1: float  # validation top-1 at the end, on the selection half
    epochs: int
    seed: int
    train_seconds: float
    history: tuple[float, ...]  # selection top-1 after each evaluation (each rung reached)
    train_losses: tuple[float, ...]  # mean training loss of each epoch (summed: TSE, a convergence-speed figure)
    model: torch.nn.Module = field(compare=False, repr=False)  # trained, on the CPU (for the deployed form)
    top1_report: float | None = None  # the same network on the report half (never used to choose)


def resolve_device(name: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda`` without one is a one-line error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"study.device={name}: torch sees no CUDA GPU here (torch {torch.__version__}); "
                          "use study.device=auto or cpu")
    return name


def _failures(fn: Callable[[], object]) -> object:
    """A candidate whose training fails (a NaN loss, a shape its blocks cannot take, out of memory) raises
    ``CandidateFailed``."""
    try:
        return fn()
    except (RuntimeError, ValueError, MemoryError) as e:  # torch reports shape and memory failures this way
        if isinstance(e, CandidateFailed):
            raise
        raise CandidateFailed(f"{type(e).__name__}: {first_line(e)}") from e


class Training:
    """One seeded training of ``arch`` on ``data`` under a ``horizon``-epoch schedule, advanced rung by rung."""

    def __init__(self, arch: Arch, data: Splits, horizon: int, seed: int, recipe: Recipe,
                 on_epoch: Callable[[int, float], None] | None = None) -> None:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        self.arch, self.data, self.horizon, self.seed, self.recipe, self.on_epoch = \
            arch, data, horizon, seed, recipe, on_epoch
        torch.set_num_threads(recipe.threads)
        self.device = torch.device(recipe.device)
        self.cuda = self.device.type == "cuda"
        model = _failures(lambda: build_model(arch, num_classes=data.num_classes, seed=seed).to(self.device))
        assert isinstance(model, torch.nn.Module)
        self.model = model.to(memory_format=torch.channels_last) if self.cuda else model
        self.opt = create_optimizer_v2(self.model, "adamw", lr=recipe.lr, weight_decay=recipe.weight_decay)
        # At most this many steps per epoch (a streamed dataset drops its last partial batch: harmless).
        self.per_epoch = math.ceil(data.n_train / recipe.batch_size)
        self.sched, _ = create_scheduler_v2(self.opt, "cosine", num_epochs=horizon,
                                            warmup_epochs=recipe.warmup * horizon, warmup_lr=recipe.lr * 0.01,
                                            min_lr=recipe.lr * 0.01, step_on_epochs=False,
                                            updates_per_epoch=self.per_epoch)
        self.ema = None
        if recipe.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=recipe.ema_decay, use_warmup=True)
        self.amp_dtype = torch.bfloat16 if self.cuda and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda and self.amp_dtype == torch.float16)
        self.gen = torch.Generator().manual_seed(seed)
        self.epochs_done, self.updates, self.seconds = 0, 0, 0.0
        self.history: list[float] = []
        self.train_losses: list[float] = []

    @property
    def evaluated(self) -> torch.nn.Module:
        """The network that is evaluated and deployed: the EMA of the weights when the recipe keeps one."""
        return self.ema.module if self.ema is not None else self.model

    def advance_to(self, epochs: int) -> float:
        """Continue to ``epochs`` (at most the horizon), then recalibrate BatchNorm and return selection top-1."""
        if not self.epochs_done < epochs <= self.horizon:
            raise ValueError(f"cannot advance from {self.epochs_done} to {epochs} epochs (horizon {self.horizon})")
        return float(_failures(lambda: self._advance(epochs)))  # type: ignore[arg-type]

    def _advance(self, epochs: int) -> float:
        t0 = time.perf_counter()
        for epoch in range(self.epochs_done, epochs):
            self.model.train()
            loss_sum, n_steps = torch.zeros((), device=self.device), 0
            for x, y in self.data.train_batches(self.recipe.batch_size, self.gen):
                x, y = _to(x, self.device, self.cuda), y.to(self.device, non_blocking=self.cuda)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.cuda):
                    loss = F.cross_entropy(self.model(x), y)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"loss became {loss.item()} in epoch {epoch + 1}")
                self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
                self.updates += 1
                self.sched.step_update(self.updates)
                if self.ema is not None:
                    self.ema.update(self.model, step=self.updates)
                loss_sum += loss.detach().float()
                n_steps += 1
            self.train_losses.append(float(loss_sum) / max(n_steps, 1))  # one sync per epoch, not per step
            self.epochs_done = epoch + 1
        recalibrate_bn(self.evaluated, self.data, self.recipe.batch_size, self.seed, self.device, self.cuda)
        acc = top1(self.evaluated, self.data, self.recipe.batch_size, self.device, part="select")
        self.seconds += time.perf_counter() - t0
        self.history.append(acc)
        if self.on_epoch is not None:
            self.on_epoch(epochs, acc)
        return acc

    def snapshot(self) -> torch.nn.Module:
        """A CPU float32 copy of the evaluated network as it stands (for its deployed form)."""
        return copy.deepcopy(self.evaluated).cpu().float().to(memory_format=torch.contiguous_format).eval()

    def result(self) -> RunResult:
        """The run as it stands: its figures (the report half evaluated once, here), and ``snapshot()``."""
        report = top1(self.evaluated, self.data, self.recipe.batch_size, self.device, part="report")
        model = self.snapshot()
        return RunResult(self.history[-1], self.epochs_done, self.seed, self.seconds, tuple(self.history),
                         tuple(self.train_losses), model, report)


def train_run(arch: Arch, data: Splits, epochs: int, seed: int, recipe: Recipe,
              on_epoch: Callable[[int, float], None] | None = None) -> RunResult:
    """Train ``arch`` from scratch for ``epochs`` (its own horizon) and return its figures; ``CandidateFailed`` when
    the training fails."""
    run = Training(arch, data, epochs, seed, recipe, on_epoch)
    run.advance_to(epochs)
    return run.result()


def _to(x: torch.Tensor, device: torch.device, cuda: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=cuda)
    return x.contiguous(memory_format=torch.channels_last) if cuda else x


def recalibrate_bn(model: torch.nn.Module, data: Splits, batch_size: int, seed: int, device: torch.device,
                   cuda: bool = False) -> None:
    """BatchNorm's running statistics recomputed (a plain average) over ``BN_BATCHES`` training batches, drawn by
    a generator of their own so that the training's sequence of batches is unchanged."""
    gen = torch.Generator().manual_seed(seed + 7_919)
    batches = itertools.islice(data.train_batches(batch_size, gen), BN_BATCHES)
    torch.optim.swa_utils.update_bn((_to(x, device, cuda) for x, _ in batches), model)


@torch.no_grad()
def top1(model: torch.nn.Module, data: Splits, batch_size: int, device: torch.device | None = None,
         part: str = "select") -> float:
    """Top-1 on a half of the validation images (``select`` or ``report``), or all of them (``all``)."""
    model.eval()
    device = device or torch.device("cpu")
    cuda = device.type == "cuda"
    correct = total = 0
    for x, y in data.val_batches(batch_size * 4, part):
        with torch.autocast(device.type, enabled=cuda):
            logits = model(_to(x, device, cuda))
        correct += int((logits.argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)
