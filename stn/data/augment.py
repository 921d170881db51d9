"""Batched augmentation that runs where the data lives (CPU or GPU), one gather per batch.

A random crop of a padded image followed by an optional horizontal flip is a per-sample shift of
the pixel grid, so the whole batch is done by computing, for every output row and column, which
source row and column it reads, and gathering: no padded copy, no per-sample Python loop.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .loaders import Batch, to_float

#: how a random crop reads beyond the image (F.pad names; not the glimpse ops' PADDING_MODES)
CROP_PADDING_MODES = ("reflect", "zeros", "replicate")


def _source_index(
    offset: Tensor, size: int, padding: int, mode: str, flip: Optional[Tensor]
) -> Tuple[Tensor, Optional[Tensor]]:
    """Source coordinate (B, size) of each output coordinate, and where it falls outside (zeros)."""
    pos = torch.arange(size, device=offset.device) + (offset - padding)[:, None]
    if flip is not None:
        pos = torch.where(flip[:, None], pos.flip(-1), pos)
    valid = None
    if mode == "reflect":  # like F.pad(mode="reflect"): the edge pixel is not repeated
        pos = pos.abs()
        pos = torch.where(pos > size - 1, 2 * (size - 1) - pos, pos)
    else:
        if mode == "zeros":
            valid = (pos >= 0) & (pos < size)
        pos = pos.clamp(0, size - 1)
    return pos, valid


def random_crop_flip(
    images: Tensor,
    generator: Optional[torch.Generator] = None,
    *,
    padding: int = 4,
    padding_mode: str = "reflect",
    flip: bool = True,
    boxes: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Random crop of the padded images, back to their own size, and random horizontal flip.

    Equivalent to ``torchvision.transforms.RandomCrop(size, padding, padding_mode=...)`` followed
    by ``RandomHorizontalFlip()`` on every sample, with one offset and flip drawn per sample.

    Args:
        images: (B, C, H, W), any dtype (uint8 is cheapest).
        generator: source of randomness, on ``images.device``.
        padding: pixels padded on each side; shifts are uniform in ``[-padding, padding]``.
        padding_mode: ``"reflect"`` (mirror without repeating the edge), ``"zeros"`` or
            ``"replicate"``.
        flip: flip each sample left-right with probability 1/2.
        boxes: optional (B, 4) boxes ``(x1, y1, x2, y2)`` in pixels, moved with the image and
            clipped to it.

    Returns:
        (images, boxes): the new (B, C, H, W) images, same dtype, and the moved (B, 4) boxes or
        ``None``.

    Example:
        >>> x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
        >>> y, _ = random_crop_flip(x, torch.Generator().manual_seed(0), padding=1)
        >>> y.shape
        torch.Size([1, 1, 4, 4])
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if padding_mode not in CROP_PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {CROP_PADDING_MODES}, got {padding_mode!r}")
    b, c, h, w = images.shape
    if padding < 0 or (padding_mode == "reflect" and padding >= min(h, w)):
        raise ValueError(f"padding must be in [0, {min(h, w) - 1}] for {h}x{w} images, got {padding}")
    if boxes is not None and boxes.shape != (b, 4):
        raise ValueError(f"boxes must be ({b}, 4), got {tuple(boxes.shape)}")
    if b == 0 or (padding == 0 and not flip):
        return images, boxes
    dev = images.device
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    mirror = torch.rand(b, generator=generator, device=dev) < 0.5 if flip else None

    rows, row_ok = _source_index(dy, h, padding, padding_mode, None)
    cols, col_ok = _source_index(dx, w, padding, padding_mode, mirror)
    out = images.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    if padding_mode == "zeros":
        inside = row_ok[:, None, :, None] & col_ok[:, None, None, :]
        out = out.masked_fill(~inside, 0)

    if boxes is not None:
        shift = torch.stack([dx, dy, dx, dy], dim=1).to(boxes.dtype) - padding
        boxes = boxes - shift
        if mirror is not None:
            flipped = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
            boxes = torch.where(mirror[:, None], flipped, boxes)
        limit = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
    return out, boxes


class CropFlip:
    """Training transform: :func:`random_crop_flip` on the uint8 batch, then float in [0, 1].

    Args:
        padding, padding_mode, flip: as in :func:`random_crop_flip`; ``padding=0`` and
            ``flip=False`` is plain :func:`~stn.data.base.to_float`.
    """

    def __init__(self, padding: int = 4, padding_mode: str = "reflect", flip: bool = True) -> None:
        if padding_mode not in CROP_PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {CROP_PADDING_MODES}, got {padding_mode!r}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding, self.padding_mode, self.flip = padding, padding_mode, flip

    def __call__(self, batch: Batch, generator: Optional[torch.Generator] = None) -> Batch:
        out = dict(batch)
        out["image"], box = random_crop_flip(
            batch["image"],
            generator,
            padding=self.padding,
            padding_mode=self.padding_mode,
            flip=self.flip,
            boxes=batch.get("box"),
        )
        if box is not None:
            out["box"] = box
        return to_float(out, generator)

    def __repr__(self) -> str:
        return f"CropFlip(padding={self.padding}, padding_mode={self.padding_mode!r}, flip={self.flip})"
