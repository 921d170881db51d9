"""Shared types and input checks of stn: one place for the error messages users see.

The ops, the models and the data all parse sizes, fills and padding modes here (like kornia's
``core/check.py`` or torchvision's ``ops/_utils.py``), so that one argument gets one message and
one meaning everywhere.
"""

from __future__ import annotations

import numbers
import operator
from typing import Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

Size2 = Union[int, Sequence[int]]


class SizeError(TypeError, ValueError):
    """A size that is not an int or a pair of ints: a TypeError for the ops' callers and a
    ValueError for a config value (numpy's ``AxisError`` is a ValueError and an IndexError alike)."""


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
    if type(size) is int and size > 0:  # the common cases, without the generic checks' cost
        return size, size
    if type(size) in (tuple, list) and len(size) == 2 and all(type(s) is int and s > 0 for s in size):
        return size[0], size[1]
    try:
        if isinstance(size, (Sequence, Tensor)) and not (isinstance(size, Tensor) and size.dim() == 0):
            h, w = (_as_int(s) for s in size)
        else:
            h = w = _as_int(size)
    except (TypeError, ValueError):
        raise SizeError(f"{name} must be an int or a pair (h, w) of ints, got {size!r}") from None
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


#: ``grid_sample``'s padding modes, which every glimpse op and model accepts.
PADDING_MODES = ("zeros", "border", "reflection")

Fill = Union[float, Sequence[float], Tensor]


def check_int(value, name: str, low: int = 1, why: str = "") -> int:
    """An int (not a bool) of at least ``low``; ValueError naming ``name`` otherwise (``why`` says
    where the bound comes from)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name}={value} must be >= {low}{why}")
    return int(value)


def check_padding_mode(padding_mode: str) -> str:
    """Require one of :data:`PADDING_MODES`."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return str(padding_mode)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_fill(fill: Fill, channels: int) -> Fill:
    """A fill value outside the image: a number, a sequence of 1 or C numbers, or a tensor of 1 or
    C values, returned as a float, a tuple of floats or the tensor. Booleans are refused.

    Raises TypeError for another type, ValueError for a wrong number of values.
    """
    if type(fill) in (int, float):  # the common case, without the numbers.Real ABC check's cost
        return float(fill)
    if isinstance(fill, Tensor):
        if fill.numel() not in (1, channels):
            raise ValueError(
                f"fill must be 1 value or one value per channel ({channels} channels), "
                f"got a tensor of shape {tuple(fill.shape)}"
            )
        if fill.dtype == torch.bool:
            raise TypeError(
                "fill must be a number, a sequence of numbers or a tensor of numbers, got a bool tensor"
            )
        return fill
    if _is_number(fill):
        return float(fill)
    if isinstance(fill, (str, bytes)) or not isinstance(fill, (Sequence, Iterable)):
        raise TypeError(
            f"fill must be a number, a sequence of numbers or a tensor, got {type(fill).__name__}"
        )
    values = list(fill)
    if not all(_is_number(v) for v in values):
        raise TypeError(f"fill must be a number, a sequence of numbers or a tensor, got {fill!r}")
    if len(values) not in (1, channels):
        raise ValueError(
            f"fill must be a number or one value per channel ({channels}), got {len(values)} values "
            f"{fill!r} (a sequence of {channels} numbers)"
        )
    return tuple(float(v) for v in values)


def fill_values(fill: Fill, like: Tensor, padding_mode: str) -> Optional[Tensor]:
    """``fill`` (see :func:`check_fill`) as a (C,) tensor of ``like``'s dtype and device, C the
    channels of ``like`` (B, C, H, W); None when it is a constant zero (then nothing needs adding).

    A tensor ``fill`` may require grad: the fill then receives gradients. A non-zero fill with a
    ``padding_mode`` other than ``"zeros"`` is a ValueError (fill is the value outside the image).
    """
    channels = like.shape[1]
    fill = check_fill(fill, channels)
    if isinstance(fill, Tensor):
        if not fill.is_floating_point():
            fill = fill.to(like.dtype)
        if not fill.requires_grad and fill.device.type == "cpu" and not bool(fill.any()):
            return None
        values = fill.to(dtype=like.dtype, device=like.device).reshape(-1).expand(channels)
    else:
        seq = (fill,) if isinstance(fill, float) else fill
        if not any(seq):
            return None
        values = torch.tensor(seq, dtype=like.dtype, device=like.device).expand(channels)
    if padding_mode != "zeros":
        raise ValueError(
            f"fill is only used with padding_mode='zeros', got padding_mode={padding_mode!r} "
            f"(fill={fill!r} is the value outside the image)"
        )
    return values


def index_layers(idx: Tensor, batch: int) -> Tensor:
    """For each entry of ``idx`` (N,) (image indices in ``[0, batch)``), how many earlier entries
    name the same image: its layer when several boxes or thetas fall on one image.

    Example:
        >>> index_layers(torch.tensor([1, 0, 1, 1]), 2)
        tensor([0, 0, 1, 2])
    """
    n = idx.shape[0]
    sorted_idx, perm = torch.sort(idx, stable=True)
    counts = torch.bincount(idx, minlength=batch)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(n, device=idx.device) - starts[sorted_idx]
    return torch.empty_like(idx).scatter(0, perm, rank)
