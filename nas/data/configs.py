"""The config dataclasses of the built-in datasets (Hydra schemas: ``dataset=elpv``, ``dataset=imagefolder``)."""

from __future__ import annotations

from dataclasses import dataclass

from nas.config import DatasetConfig


@dataclass
class ElpvConfig(DatasetConfig):
    """elpv: 2,624 electroluminescence images (300x300, grayscale) of solar cells, 4 classes by the experts' defect
    probability (0, 1/3, 2/3, 1). From the elpv-dataset package (CC BY-NC-SA 4.0): pip install 'nas[elpv]'."""

    name: str = "elpv"
    proxy_scale: float = 0.25  # 224 px deployment -> 56 px training


@dataclass
class ImageFolderConfig(DatasetConfig):
    """Your own images, one sub-folder per class, streamed from disk."""

    name: str = "imagefolder"
    proxy_scale: float = 0.25
    path: str | None = None
    workers: int | None = None  # DataLoader worker processes (None: min(4, CPU cores))
