"""A whole split held in memory: uint8 images, labels and optional true boxes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

__all__ = ["TensorSplit"]


@dataclass
class TensorSplit:
    """A whole split in memory: uint8 images (N, C, H, W), int64 labels (N,), optional boxes (N, 4)."""

    images: Tensor
    labels: Tensor
    boxes: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(self.labels.shape)}")
        if self.boxes is not None and self.boxes.shape != (n, 4):
            raise ValueError(f"boxes must have shape ({n}, 4), got {tuple(self.boxes.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "TensorSplit":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return TensorSplit(move(self.images), move(self.labels.long()), move(self.boxes))

    def subset(self, index: Tensor) -> "TensorSplit":
        return TensorSplit(
            self.images[index], self.labels[index], None if self.boxes is None else self.boxes[index]
        )

    def batch(self, index: Tensor) -> Dict[str, Tensor]:
        """The raw batch of samples ``index``: ``"image"``, ``"label"`` and, if any, ``"box"``.

        :class:`~stn.data.loaders.TensorLoader` asks its split only for this (and ``to``, ``len``),
        so a split that renders its samples on demand (:class:`stn.data.megapixel.CanvasSpecs`)
        loads the same way.
        """
        out = {"image": self.images[index], "label": self.labels[index]}
        if self.boxes is not None:
            out["box"] = self.boxes[index]
        return out
