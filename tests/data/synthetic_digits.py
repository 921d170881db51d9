"""Tiny MNIST files for the synthetic-set tests: rectangles of ink in the real IDX format.

Every pixel of a rectangle is nonzero, so a digit's tight box is its rectangle. Values are 1..127
in the training file and 128..255 in the test file: a canvas's pixel values tell which split its
clutter came from.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

N_TRAIN, N_TEST, VAL = 240, 60, 40
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def rect_digits(n: int, low: int, high: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 rectangles of ink in [low, high] within the central 20x20, and their boxes."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        w, h = rng.integers(3, 15, size=2)
        x, y = rng.integers(4, 24 - w + 1), rng.integers(4, 24 - h + 1)
        images[i, y : y + h, x : x + w] = rng.integers(low, high + 1, size=(h, w))
        boxes[i] = (x, y, x + w, y + h)
    return images, boxes


def write_rect_mnist(root: Path) -> Path:
    """Write train/t10k IDX files of rectangles under ``root/MNIST/raw``; returns ``root``."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, (low, high), seed in (("train", N_TRAIN, (1, 127), 1), ("t10k", N_TEST, (128, 255), 2)):
        images, _ = rect_digits(n, low, high, seed)
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def digits(n: int = 16, seed: int = 0, low: int = 1, high: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 28, 28) uint8 rectangles of ink and their (n, 4) boxes (x1, y1, x2, y2) in pixels."""
    images, boxes = rect_digits(n, low, high, seed)
    return torch.from_numpy(images)[:, None], torch.from_numpy(boxes)


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def make(cls, root, **kw):
    kw.setdefault("val_size", VAL)
    kw.setdefault("batch_size", 32)
    kw.setdefault("device", "cpu")
    return cls(str(root), download=False, **kw)
