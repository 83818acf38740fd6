"""Datasets for the accuracy proxy: loaded once, then resized to each candidate's training resolution.

A candidate is trained at a resolution derived from its deployment resolution (``train_resolution``), so the
searched resolution changes accuracy as well as latency. The loaded images are kept at their stored resolution
(``ImageData``); ``ImageData.at(r)`` gives normalised, 3-channel splits at ``r`` pixels, computed once per ``r``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nas.errors import DatasetError


@dataclass(frozen=True)
class TensorSplits:
    """Train/validation tensors (N, 3, H, W) float32 normalised, labels int64, at one resolution."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    name: str

    @property
    def resolution(self) -> int:
        return int(self.x_train.shape[-1])


@dataclass(frozen=True)
class ImageData:
    """A stratified split of images in [0, 1] at their stored resolution (1 or 3 channels)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    name: str
    _cache: dict[int, TensorSplits] = field(default_factory=dict, compare=False, repr=False)

    @property
    def stored_resolution(self) -> int:
        return int(self.x_train.shape[-1])

    def at(self, resolution: int) -> TensorSplits:
        """Both splits resized to ``resolution``, 3 channels, normalised with the training split's statistics."""
        if resolution not in self._cache:
            tr, va = _resize(self.x_train, resolution), _resize(self.x_val, resolution)
            mean = tr.mean(dim=(0, 2, 3), keepdim=True)
            std = tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
            self._cache[resolution] = TensorSplits(((tr - mean) / std).contiguous(), self.y_train,
                                                   ((va - mean) / std).contiguous(), self.y_val,
                                                   self.num_classes, self.name)
        return self._cache[resolution]


def train_resolution(deploy_resolution: int, proxy_scale: float, min_resolution: int) -> int:
    """The resolution a candidate is trained at: its deployment resolution scaled for the proxy, floored."""
    return max(min_resolution, round(deploy_resolution * proxy_scale))


def load_dataset(name: str, val_fraction: float, seed: int, path: str | None = None,
                 max_images: int | None = None, resolution: int | None = None) -> ImageData:
    """Load ``digits`` (scikit-learn's, shipped with the package) or an ``imagefolder`` at ``path``.

    ``resolution`` is the largest training resolution needed: an image folder is decoded at it, once.
    """
    if name == "digits":
        x, y = _digits()
    elif name == "imagefolder":
        x, y = _imagefolder(path, resolution or 64, max_images)
    else:
        raise DatasetError(f"unknown dataset {name!r}: use dataset=digits or dataset=imagefolder")
    return _split(x, y, val_fraction, seed, name)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N,1,8,8) in [0,1]
    return x, torch.from_numpy(d.target.astype(np.int64))


def _imagefolder(path: str | None, resolution: int, max_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if not path:
        raise DatasetError("dataset=imagefolder needs dataset.path=DIR (one sub-folder of images per class)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset.path={path} is not a directory (expected one sub-folder of images per class)")
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2 as T

    transform = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True),
                           T.Resize((resolution, resolution), antialias=True)])
    try:
        folder = ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise DatasetError(f"dataset.path={path}: {e}") from None
    if len(folder.classes) < 2:
        raise DatasetError(f"dataset.path={path} has {len(folder.classes)} class folder(s); need at least 2")
    n = len(folder) if max_images is None else min(len(folder), max_images)
    order = np.random.default_rng(0).permutation(len(folder))[:n]
    xs, ys = [], []
    for i in order:
        try:
            img, label = folder[int(i)]
        except Exception as e:  # a corrupt image names itself
            raise DatasetError(f"cannot read {folder.samples[int(i)][0]}: {e}") from None
        xs.append(img[:3] if img.shape[0] >= 3 else img[:1])
        ys.append(label)
    x = torch.stack([t if t.shape[0] == 3 else t.expand(3, -1, -1) for t in xs])
    return x, torch.tensor(ys, dtype=torch.int64)


def _resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        # Antialiased when shrinking, so a low training resolution sees what a camera at that resolution would.
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=resolution < x.shape[-1])
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int, name: str) -> ImageData:
    """A stratified split: every class appears in both parts in proportion."""
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(len(idx) * val_fraction))
        if len(idx) - n_val < 1:
            raise DatasetError(f"class {c} of dataset {name!r} has {len(idx)} image(s); need at least 2")
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])
    tr, va = torch.tensor(np.sort(train_idx)), torch.tensor(np.sort(val_idx))
    return ImageData(x[tr], y[tr], x[va], y[va], int(labels.max()) + 1, name)
