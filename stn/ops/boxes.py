"""Box conventions and conversions.

Boxes are ``(x1, y1, x2, y2)`` in pixel coordinates of the image they refer to. Pixel ``i`` spans
``[i, i + 1)``, so the whole image of width ``W`` and height ``H`` is ``(0, 0, W, H)``. This is the
convention of ``torchvision.ops.roi_align(aligned=True)`` and of
``F.affine_grid`` / ``F.grid_sample`` with ``align_corners=False``.

Image sizes are ``(H, W)``, as in tensor shapes. Conversions to ``cxcywh`` use torchvision's
:func:`torchvision.ops.box_convert`, re-exported here.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert

from ._checks import Size2, check_box_tensor, check_size

__all__ = [
    "box_convert",
    "normalize_boxes",
    "denormalize_boxes",
    "boxes_to_theta",
    "theta_to_boxes",
    "full_image_boxes",
]

_RANGES = ("-1,1", "0,1")


def _scale(image_size: Size2, like: Tensor) -> Tensor:
    """(W, H, W, H) as a tensor of ``like``'s dtype and device."""
    h, w = check_size(image_size, "image_size")
    return torch.tensor([w, h, w, h], dtype=like.dtype, device=like.device)


def _check_range(range: str) -> None:
    if range not in _RANGES:
        raise ValueError(f"range must be one of {_RANGES}, got {range!r}")


def normalize_boxes(boxes: Tensor, image_size: Size2, range: str = "-1,1") -> Tensor:
    """Pixel boxes to normalized coordinates.

    Args:
        boxes: (..., 4) pixel ``(x1, y1, x2, y2)``.
        image_size: ``(H, W)`` of the image the boxes refer to (an int means square).
        range: ``"-1,1"`` (the full image is ``(-1, -1, 1, 1)``, as ``affine_grid`` with
            ``align_corners=False`` uses) or ``"0,1"`` (the full image is ``(0, 0, 1, 1)``).

    Returns:
        (..., 4) normalized boxes.

    Example:
        >>> normalize_boxes(torch.tensor([[0.0, 0.0, 4.0, 2.0]]), (2, 4))
        tensor([[-1., -1.,  1.,  1.]])
    """
    check_box_tensor(boxes)
    _check_range(range)
    unit = boxes / _scale(image_size, boxes)
    return unit * 2 - 1 if range == "-1,1" else unit


def denormalize_boxes(boxes: Tensor, image_size: Size2, range: str = "-1,1") -> Tensor:
    """Inverse of :func:`normalize_boxes`: normalized (..., 4) boxes to pixel boxes.

    Example:
        >>> denormalize_boxes(torch.tensor([[0.0, 0.0, 0.5, 1.0]]), (10, 20), range="0,1")
        tensor([[ 0.,  0., 10., 10.]])
    """
    check_box_tensor(boxes)
    _check_range(range)
    unit = (boxes + 1) / 2 if range == "-1,1" else boxes
    return unit * _scale(image_size, boxes)


def full_image_boxes(n: int, image_size: Size2, *, dtype=torch.float32, device=None) -> Tensor:
    """(n, 4) boxes that each cover the whole image: ``(0, 0, W, H)``."""
    h, w = check_size(image_size, "image_size")
    return torch.tensor([0.0, 0.0, w, h], dtype=dtype, device=device).expand(n, 4).clone()


def boxes_to_theta(boxes: Tensor, image_size: Size2) -> Tensor:
    """Affine matrices that make ``F.affine_grid(..., align_corners=False)`` sample exactly a box.

    The output grid's left edge lands on ``x1`` and its right edge on ``x2`` (likewise for y), so
    output pixel ``j`` of ``w`` samples the image at ``x1 + (j + 0.5) * (x2 - x1) / w``: the bin
    centres of ``roi_align(aligned=True)``.

    Args:
        boxes: (..., 4) pixel ``(x1, y1, x2, y2)``.
        image_size: ``(H, W)`` of the source image.

    Returns:
        (..., 2, 3) theta, differentiable w.r.t. ``boxes``.

    Example:
        >>> boxes_to_theta(torch.tensor([[0.0, 0.0, 8.0, 8.0]]), (8, 8))
        tensor([[[1., 0., 0.],
                 [0., 1., 0.]]])
    """
    check_box_tensor(boxes)
    h, w = check_size(image_size, "image_size")
    x1, y1, x2, y2 = boxes.unbind(-1)
    zero = torch.zeros_like(x1)
    row_x = torch.stack([(x2 - x1) / w, zero, (x1 + x2) / w - 1], dim=-1)
    row_y = torch.stack([zero, (y2 - y1) / h, (y1 + y2) / h - 1], dim=-1)
    return torch.stack([row_x, row_y], dim=-2)


def theta_to_boxes(theta: Tensor, image_size: Size2) -> Tensor:
    """Pixel boxes sampled by affine thetas: the inverse of :func:`boxes_to_theta`.

    For a scale-and-translate theta (zero off-diagonal, positive diagonal) this is the exact
    inverse. For a general affine theta (rotation, shear, flips) the sampled region is a
    parallelogram, and the result is its axis-aligned bounding box, which is what pictures and
    IoU metrics want.

    Args:
        theta: (..., 2, 3) matrices for ``F.affine_grid(..., align_corners=False)``.
        image_size: ``(H, W)`` of the source image.

    Returns:
        (..., 4) pixel ``(x1, y1, x2, y2)``.

    Example:
        >>> theta = torch.tensor([[[0.5, 0.0, 0.5], [0.0, 0.5, -0.5]]])
        >>> theta_to_boxes(theta, (8, 8))
        tensor([[4., 0., 8., 4.]])
    """
    if not isinstance(theta, Tensor):
        raise TypeError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
    if theta.dim() < 2 or tuple(theta.shape[-2:]) != (2, 3):
        raise ValueError(f"theta must have shape (..., 2, 3), got {tuple(theta.shape)}")
    h, w = check_size(image_size, "image_size")
    # Half-extent of the parallelogram along each axis is |a| + |b|; its centre is the translation.
    half = theta[..., :2].abs().sum(-1)
    centre = theta[..., 2]
    lo, hi = centre - half, centre + half
    norm = torch.stack([lo[..., 0], lo[..., 1], hi[..., 0], hi[..., 1]], dim=-1)
    return denormalize_boxes(norm, (h, w))
