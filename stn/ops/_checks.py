"""Input validation shared by the ops: one place for the error messages users see."""

from __future__ import annotations

import operator
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

Size2 = Union[int, Sequence[int]]


def check_images(images: Tensor, name: str = "images") -> None:
    """Require a floating point (B, C, H, W) tensor."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must be 4-d (B, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(
            f"{name} must be floating point, got dtype {images.dtype}; "
            "convert integer images first, e.g. images.float() / 255"
        )


def _as_int(value) -> int:
    """An integer (int, numpy integer, 0-d integer tensor) as int; bool and floats are refused."""
    if isinstance(value, bool):
        raise TypeError("bool is not a size")
    return operator.index(value)


def check_size(size: Size2, name: str = "size") -> Tuple[int, int]:
    """Turn an int or (h, w) into a pair of positive ints."""
    try:
        if isinstance(size, (Sequence, Tensor)) and not (isinstance(size, Tensor) and size.dim() == 0):
            h, w = (_as_int(s) for s in size)
        else:
            h = w = _as_int(size)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair (h, w) of ints, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    return h, w


def check_box_tensor(boxes: Tensor, name: str = "boxes") -> None:
    """Require a floating point tensor whose last dimension is 4."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() == 0 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{name} must have last dimension 4 (x1, y1, x2, y2), got shape {tuple(boxes.shape)}"
        )
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {boxes.dtype}")


def check_indices(images: Tensor, indices: Tensor, items: Tensor, name: str, noun: str) -> Tensor:
    """Validate an (N,) image index for the N leading entries of ``items`` (boxes, thetas, ...).

    Returns the index as int64. Raises TypeError for a non-integer tensor, ValueError for a wrong
    shape, IndexError for values outside ``[0, B)``.
    """
    if not isinstance(indices, Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"indices must be an integer (long) tensor, got dtype {indices.dtype}")
    if indices.dim() != 1 or indices.shape[0] != items.shape[0]:
        raise ValueError(
            f"indices must be 1-d with one entry per {noun}: {name} has shape {tuple(items.shape)}, "
            f"indices has shape {tuple(indices.shape)}"
        )
    batch = images.shape[0]
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= batch):
        raise IndexError(
            f"indices must lie in [0, {batch}) for images of shape {tuple(images.shape)}, "
            f"got values in [{int(indices.min())}, {int(indices.max())}]"
        )
    return indices.long()


def flatten_boxes(
    images: Tensor, boxes: Tensor, indices: Optional[Tensor], name: str = "boxes"
) -> Tuple[Tensor, Tensor, Tuple[int, ...]]:
    """Resolve the three box layouts to a flat (N, 4) tensor and an (N,) image index.

    Args:
        images: (B, C, H, W).
        boxes: (B, 4), (B, K, 4), or (N, 4) together with ``indices``.
        indices: None, or (N,) long tensor of image indices in [0, B).

    Returns:
        flat boxes (N, 4), indices (N,) long on the boxes' device, and the leading output shape
        (``(B,)``, ``(B, K)`` or ``(N,)``) that the caller reshapes its (N, ...) result to.
    """
    check_box_tensor(boxes, name)
    batch = images.shape[0]
    if indices is not None:
        if boxes.dim() != 2:
            raise ValueError(f"with indices, {name} must be (N, 4), got shape {tuple(boxes.shape)}")
        idx = check_indices(images, indices, boxes, name, "box")
        return boxes, idx.to(device=boxes.device), (boxes.shape[0],)
    if boxes.dim() == 2:
        if boxes.shape[0] != batch:
            raise ValueError(
                f"{name} of shape {tuple(boxes.shape)} must have one row per image ({batch} images of shape "
                f"{tuple(images.shape)}); pass indices=(N,) to crop several boxes from chosen images"
            )
        idx = torch.arange(batch, device=boxes.device)
        return boxes, idx, (batch,)
    if boxes.dim() == 3:
        if boxes.shape[0] != batch:
            raise ValueError(
                f"{name} of shape {tuple(boxes.shape)} must have first dimension {batch} "
                f"(images of shape {tuple(images.shape)})"
            )
        k = boxes.shape[1]
        idx = torch.arange(batch, device=boxes.device).repeat_interleave(k)
        return boxes.reshape(-1, 4), idx, (batch, k)
    raise ValueError(
        f"{name} must be (B, 4), (B, K, 4) or (N, 4) with indices, got shape {tuple(boxes.shape)}"
    )
