"""Datasets for the accuracy estimate: loaded once, then served at each candidate's training resolution.

A candidate trains at a resolution derived from its deployment resolution (``train_resolution``), so the searched
resolution changes accuracy as well as latency. A dataset is registered under a name with its config dataclass
(``datasets``) and loads into one of two forms, both served per resolution through ``Splits``:

- ``ImageData``: small datasets held in memory (digits, elpv), resized once per resolution (``ImageData.at``);
- ``FolderData``: a class-per-folder tree streamed from disk through a ``DataLoader`` with workers and train-time
  augmentation (random resized crop, flip), so a real dataset need not fit in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from nas.config import DatasetConfig
from nas.core.registry import datasets
from nas.data.configs import ElpvConfig, ImageFolderConfig

if TYPE_CHECKING:  # torch loads with a dataset, not with the configuration
    import numpy as np
    import torch

    from nas.data.images import FolderData, ImageData

    Batch = tuple[torch.Tensor, torch.Tensor]


class Splits(Protocol):
    """A dataset's train and validation splits at one resolution: what training and int8 evaluation read."""

    name: str
    num_classes: int

    @property
    def resolution(self) -> int: ...

    @property
    def n_train(self) -> int: ...

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch of shuffled (augmented where the dataset allows) training batches."""
        ...

    def val_batches(self, batch_size: int, part: str = "all") -> Iterator[Batch]:
        """Validation batches of ``part``: ``select`` or ``report`` (two stratified halves), or ``all``."""
        ...

    def calibration(self, n: int) -> np.ndarray:
        """Up to ``n`` training images (N, 3, H, W), normalised as for training, un-augmented (int8 calibration)."""
        ...

    def validation_arrays(self, limit: int | None = None, part: str = "select") -> tuple[np.ndarray, np.ndarray]:
        """The validation images and labels as arrays (a deployed int8 model is evaluated on them)."""
        ...


def train_resolution(deploy_resolution: int, proxy_scale: float, min_resolution: int) -> int:
    """The resolution a candidate is trained at: its deployment resolution scaled for the proxy, floored."""
    return max(min_resolution, round(deploy_resolution * proxy_scale))


# A dataset is a function (its config, the largest training resolution needed) -> ImageData or FolderData.


def load_dataset(cfg: DatasetConfig, resolution: int = 64) -> ImageData | FolderData:
    """The registered dataset ``cfg.name``; ``resolution`` is the largest training resolution a search needs."""
    return datasets.get(cfg.name).factory(cfg, resolution)


@datasets.register("digits", DatasetConfig, option=False)
def digits(cfg: DatasetConfig, resolution: int) -> ImageData:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes); ships with scikit-learn."""
    from nas.data import images

    return images.digits(cfg, resolution)


@datasets.register("elpv", ElpvConfig, option=False)
def elpv(cfg: ElpvConfig, resolution: int) -> ImageData:
    from nas.data import images

    return images.elpv(cfg, resolution)


@datasets.register("imagefolder", ImageFolderConfig, option=False)
def imagefolder(cfg: ImageFolderConfig, resolution: int) -> FolderData:
    from nas.data import images

    return images.imagefolder(cfg, resolution)
