"""The whole-pipeline budget scope: JPEG decode, resize, normalise before the model; softmax and top-5 after."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class Pipeline:
    """Pre- and postprocessing as an application would run them around the model, on a seeded JPEG."""

    def __init__(self, shape: tuple[int, ...], source_size: tuple[int, int], seed: int = 0,
                 dtype: type = np.float32) -> None:
        self.batch, _, self.h, self.w = shape
        self.dtype = dtype  # the model input's: an fp16 model takes half-precision pixels
        rng = np.random.default_rng(seed)
        # A smooth image compresses like a photo does (noise would make decoding unrealistically slow).
        base = rng.integers(0, 255, (source_size[0] // 16 + 1, source_size[1] // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((source_size[1], source_size[0]), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        self.jpeg = buf.getvalue()

    def preprocess(self) -> np.ndarray:
        out = np.empty((self.batch, 3, self.h, self.w), dtype=np.float32)
        for i in range(self.batch):
            img = Image.open(io.BytesIO(self.jpeg)).convert("RGB").resize((self.w, self.h), Image.BILINEAR)
            a = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
            out[i] = a.transpose(2, 0, 1)
        return out if self.dtype == np.float32 else out.astype(self.dtype)

    @staticmethod
    def postprocess(logits: np.ndarray, k: int = 5) -> np.ndarray:
        logits = logits.astype(np.float32, copy=False)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        return np.argsort(-p, axis=1)[:, :k]
