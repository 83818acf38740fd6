"""The datasets' loaders (torch): in memory (``ImageData``) or streamed from a folder (``FolderData``).

Imported only when a dataset is loaded; ``nas.data.datasets`` holds the light part (configs, registry, ``Splits``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nas.config import DatasetConfig
from nas.core.errors import DatasetError, first_line
from nas.data.configs import ElpvConfig, ImageFolderConfig

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TensorSplits:
    """Train/validation tensors (N, 3, H, W) float32 normalised, labels int64, at one resolution, in memory."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    name: str
    augment: bool = False  # flips and small shifts: for images where they keep the label (not digits)

    @property
    def resolution(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(len(self.y_train), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x = self.x_train[idx]
            yield (_augment(x, generator) if self.augment else x), self.y_train[idx]

    def val_batches(self, batch_size: int, part: str = "all") -> Iterator[Batch]:
        idx = torch.from_numpy(val_part(self.y_val.numpy(), part))
        for start in range(0, len(idx), batch_size):
            take = idx[start:start + batch_size]
            yield self.x_val[take], self.y_val[take]

    def calibration(self, n: int) -> np.ndarray:
        idx = balanced_sample(self.y_train.numpy(), n)
        return self.x_train[torch.from_numpy(idx)].numpy().astype(np.float32)

    def validation_arrays(self, limit: int | None = None, part: str = "select") -> tuple[np.ndarray, np.ndarray]:
        idx = torch.from_numpy(val_part(self.y_val.numpy(), part)[:limit])
        return self.x_val[idx].numpy().astype(np.float32), self.y_val[idx].numpy()


def val_part(labels: np.ndarray, part: str) -> np.ndarray:
    """Positions of the validation images in ``part``: ``select`` and ``report`` are two stratified halves
    (alternate images of each class), ``all`` is both. Choices are made on ``select``; ``report`` is what a card
    states, so that the figure reported is not the one the choice maximised."""
    if part == "all":
        return np.arange(len(labels))
    if part not in ("select", "report"):
        raise ValueError(f"validation part {part!r}: select, report or all")
    start = 0 if part == "select" else 1
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[start::2] for c in np.unique(labels)]))


def balanced_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` positions of ``labels``, seeded, as even across classes as they allow (round-robin over classes
    in a seeded order): int8 calibration must see every class, not the first folder's images."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    out: list[int] = []
    for i in range(max((len(p) for p in per_class), default=0)):
        out += [int(p[i]) for p in per_class if i < len(p)]
        if len(out) >= n:
            break
    return np.array(sorted(out[:n]), dtype=np.int64)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random horizontal flip per image and one random shift (up to 1/8 of the side, reflected) per batch."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = max(1, x.shape[-1] // 8)
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]].contiguous()


@dataclass(frozen=True)
class ImageData:
    """A stratified split of images in [0, 1] at their stored resolution (1 or 3 channels), in memory."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    name: str
    augment: bool = False
    _cache: dict[int, TensorSplits] = field(default_factory=dict, compare=False, repr=False)

    def at(self, resolution: int) -> TensorSplits:
        """Both splits resized to ``resolution``, 3 channels, normalised with the training split's statistics."""
        if resolution not in self._cache:
            tr, va = _resize(self.x_train, resolution), _resize(self.x_val, resolution)
            mean = tr.mean(dim=(0, 2, 3), keepdim=True)
            std = tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
            self._cache[resolution] = TensorSplits(((tr - mean) / std).contiguous(), self.y_train,
                                                   ((va - mean) / std).contiguous(), self.y_val,
                                                   self.num_classes, self.name, self.augment)
        return self._cache[resolution]


def digits(cfg: DatasetConfig, resolution: int) -> ImageData:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes); ships with scikit-learn."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N,1,8,8) in [0,1]
    return split(x, torch.from_numpy(d.target.astype(np.int64)), cfg, augment=False)


def elpv(cfg: ElpvConfig, resolution: int) -> ImageData:
    try:
        from elpv_dataset.utils import load_dataset as load_elpv
    except ImportError:
        raise DatasetError("dataset=elpv needs the elpv-dataset package (its images are licensed CC BY-NC-SA 4.0, "
                           "so it is an extra): pip install 'nas[elpv]'") from None
    images, probs, _types = load_elpv()
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)  # (N,1,300,300) uint8
    # Shrunk once to the largest training resolution a search needs: 2,624 x 300^2 floats would be 0.9 GB.
    side = max(resolution, cfg.min_resolution)
    x = torch.cat([_resize(x[i:i + 256].float() / 255.0, side, rgb=False) for i in range(0, len(x), 256)])
    y = torch.from_numpy(np.rint(probs * 3).astype(np.int64))  # 0, 1/3, 2/3, 1 -> 0..3
    return split(x, y, cfg, augment=True)


def imagefolder(cfg: ImageFolderConfig, resolution: int) -> FolderData:
    return FolderData.open(cfg)


class FolderData:
    """A class-per-folder image tree, checked at load, streamed per resolution through DataLoaders."""

    def __init__(self, root: Path, samples: list[tuple[str, int]], classes: list[str], train_idx: np.ndarray,
                 val_idx: np.ndarray, mean: list[float], std: list[float], workers: int) -> None:
        self.root, self.samples, self.classes = root, samples, classes
        self.train_idx, self.val_idx = train_idx, val_idx
        self.mean, self.std, self.workers = mean, std, workers
        self.num_classes, self.name = len(classes), "imagefolder"
        self._cache: dict[int, FolderSplits] = {}

    @classmethod
    def open(cls, cfg: ImageFolderConfig) -> FolderData:
        if not cfg.path:
            raise DatasetError("dataset=imagefolder needs dataset.path=DIR (one sub-folder of images per class)")
        root = Path(cfg.path).expanduser()
        if not root.is_dir():
            raise DatasetError(f"dataset.path={cfg.path} is not a directory (expected one sub-folder of images per "
                               "class)")
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        try:
            classes, index = find_classes(str(root))
            samples = make_dataset(str(root), index, extensions=IMG_EXTENSIONS)
        except (FileNotFoundError, RuntimeError) as e:
            raise DatasetError(f"dataset.path={cfg.path}: {first_line(e)}") from None
        if len(classes) < 2:
            raise DatasetError(f"dataset.path={cfg.path} has {len(classes)} class folder(s) with images; need at "
                               "least 2")
        samples = [samples[i] for i in _subset(len(samples), cfg)]
        _check_readable(samples)
        labels = np.array([label for _, label in samples])
        train_idx, val_idx = _stratified(labels, cfg.val_fraction, cfg.seed, "imagefolder")
        mean, std = _folder_stats(samples, train_idx)
        workers = cfg.workers if cfg.workers is not None else min(4, os.cpu_count() or 1)
        return cls(root, samples, classes, train_idx, val_idx, mean, std, workers)

    def at(self, resolution: int) -> FolderSplits:
        if resolution not in self._cache:
            self._cache[resolution] = FolderSplits(self, resolution)
        return self._cache[resolution]


class _Files(torch.utils.data.Dataset):
    """Images by path; a file that cannot be decoded names itself."""

    def __init__(self, samples: list[tuple[str, int]], transform: Any) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                return self.transform(img.convert("RGB")), label
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read {path}: {first_line(e)}") from None


class FolderSplits:
    """``Splits`` of an image folder at one resolution: random resized crops and flips for training, a centre
    crop for validation (the usual torchvision recipe)."""

    def __init__(self, data: FolderData, resolution: int) -> None:
        from timm.data import create_transform

        self.data, self._resolution = data, resolution
        self.name, self.num_classes = data.name, data.num_classes
        # timm's own pipelines: random-resized crop and flip for training (no colour jitter: the dataset's images
        # may be grayscale or calibrated), resize to res / 0.875 and centre crop for validation.
        stats = {"mean": tuple(data.mean), "std": tuple(data.std), "interpolation": "bilinear"}
        self.train_tf = create_transform(resolution, is_training=True, scale=(0.35, 1.0), hflip=0.5,
                                         color_jitter=0.0, **stats)
        self.val_tf = create_transform(resolution, is_training=False, crop_pct=0.875, **stats)

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def n_train(self) -> int:
        return len(self.data.train_idx)

    def _loader(self, idx: np.ndarray, transform: Any, batch_size: int, shuffle: bool,
                generator: torch.Generator | None = None) -> Any:
        files = _Files([self.data.samples[i] for i in idx], transform)
        return torch.utils.data.DataLoader(files, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                           num_workers=self.data.workers, drop_last=shuffle and len(files) > batch_size,
                                           persistent_workers=False)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        yield from _reraise(self._loader(self.data.train_idx, self.train_tf, batch_size, True, generator))

    def val_batches(self, batch_size: int, part: str = "all") -> Iterator[Batch]:
        labels = np.array([self.data.samples[i][1] for i in self.data.val_idx])
        idx = self.data.val_idx[val_part(labels, part)]
        yield from _reraise(self._loader(idx, self.val_tf, batch_size, False))

    def calibration(self, n: int) -> np.ndarray:
        labels = np.array([self.data.samples[i][1] for i in self.data.train_idx])
        picked = self.data.train_idx[balanced_sample(labels, n)]
        files = _Files([self.data.samples[i] for i in picked], self.val_tf)
        return torch.stack([files[i][0] for i in range(len(files))]).numpy()

    def validation_arrays(self, limit: int | None = 2000, part: str = "select") -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for x, y in self.val_batches(256, part):
            xs.append(x)
            ys.append(y)
            if limit is not None and sum(len(v) for v in ys) >= limit:
                break
        return torch.cat(xs)[:limit].numpy(), torch.cat(ys)[:limit].numpy()


def _reraise(loader: Any) -> Iterator[Batch]:
    """Batches of ``loader``; a DataLoader worker's DatasetError reaches the user as itself, in one line."""
    try:
        yield from loader
    except DatasetError:
        raise
    except Exception as e:
        text = str(e)
        if "DatasetError" not in text:
            raise
        line = next((ln for ln in reversed(text.splitlines()) if ln.startswith("nas.core.errors.DatasetError")), text)
        raise DatasetError(line.split(":", 1)[-1].strip()) from None


def _check_readable(samples: list[tuple[str, int]]) -> None:
    """Every file opens as an image (its header: fast); one that does not is named."""
    from PIL import Image, UnidentifiedImageError

    for path, _ in samples:
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018  (parsing the header is the check)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DatasetError(f"cannot read {path}: {first_line(e)}") from None


def _folder_stats(samples: list[tuple[str, int]], train_idx: np.ndarray, n: int = 256) -> tuple[list, list]:
    """Per-channel mean and std of up to ``n`` training images (at 64 px: enough for normalisation)."""
    from PIL import Image

    pick = train_idx[np.linspace(0, len(train_idx) - 1, min(n, len(train_idx))).astype(int)]
    px = []
    for i in pick:
        try:
            with Image.open(samples[i][0]) as img:
                px.append(np.asarray(img.convert("RGB").resize((64, 64)), dtype=np.float32) / 255.0)
        except OSError as e:
            raise DatasetError(f"cannot read {samples[i][0]}: {first_line(e)}") from None
    arr = np.stack(px)
    return arr.mean(axis=(0, 1, 2)).tolist(), np.maximum(arr.std(axis=(0, 1, 2)), 1e-6).tolist()


def _resize(x: torch.Tensor, resolution: int, rgb: bool = True) -> torch.Tensor:
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        # Antialiased when shrinking, so a low training resolution sees what a camera at that resolution would.
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=resolution < x.shape[-1])
    return x.expand(-1, 3, -1, -1) if rgb and x.shape[1] == 1 else x


def _stratified(labels: np.ndarray, val_fraction: float, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified split: every class appears in both parts in proportion."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(len(idx) * val_fraction))
        if len(idx) - n_val < 1:
            raise DatasetError(f"class {c} of dataset {name!r} has {len(idx)} image(s); need at least 2")
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])
    return np.sort(np.array(train_idx)), np.sort(np.array(val_idx))


def split(x: torch.Tensor, y: torch.Tensor, cfg: DatasetConfig, augment: bool) -> ImageData:
    """An in-memory dataset (``cfg.max_images`` of it), split stratified (``cfg.val_fraction``, ``cfg.seed``)."""
    keep = torch.from_numpy(_subset(len(y), cfg))
    x, y = x[keep], y[keep]
    tr, va = _stratified(y.numpy(), cfg.val_fraction, cfg.seed, cfg.name)
    return ImageData(x[tr], y[tr], x[va], y[va], int(y.max()) + 1, cfg.name, augment)


def _subset(n: int, cfg: DatasetConfig) -> np.ndarray:
    """Sorted indices of the ``cfg.max_images`` images kept (a seeded random subset), or of all ``n``."""
    if cfg.max_images is None or n <= cfg.max_images:
        return np.arange(n)
    return np.sort(np.random.default_rng(cfg.seed).permutation(n)[:cfg.max_images])
