"""The config dataclasses of the built-in datasets (Hydra schemas: ``dataset=elpv``, ``dataset=imagefolder``)."""

from __future__ import annotations

from dataclasses import dataclass

from nas.config import DatasetConfig

LAST_STAGE_3X3 = 3 * 32  # the smallest training resolution at which a stride-32 network ends on a 3x3 map


@dataclass
class ElpvConfig(DatasetConfig):
    """elpv: 2,624 electroluminescence images (300x300, grayscale) of solar cells, 4 classes by the experts' defect
    probability (0, 1/3, 2/3, 1). From the elpv-dataset package (CC BY-NC-SA 4.0): pip install 'nas[elpv]'."""

    name: str = "elpv"
    proxy_scale: float = 0.25
    # Its images are 300 px: train at 96 px at least, where the network's last stage (stride 32) still sees a 3x3
    # map and its kernel and squeeze-excite choices can change accuracy (at 56 px it saw 1x1 or 2x2).
    min_resolution: int = LAST_STAGE_3X3


@dataclass
class ImageFolderConfig(DatasetConfig):
    """Your own images, one sub-folder per class, streamed from disk."""

    name: str = "imagefolder"
    proxy_scale: float = 0.25
    min_resolution: int = LAST_STAGE_3X3  # the last stage keeps a 3x3 map (images smaller than this are upscaled)
    path: str | None = None
    workers: int | None = None  # DataLoader worker processes (None: min(4, CPU cores))
