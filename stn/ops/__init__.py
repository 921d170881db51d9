"""Differentiable geometry for attention crops: boxes, theta, glimpses and paste-back.

Plain PyTorch: no Lightning, no Hydra, no I/O. Box convention: pixel ``(x1, y1, x2, y2)`` with
pixel ``i`` spanning ``[i, i + 1)``; the whole image is ``(0, 0, W, H)``.
"""

from .affine import affine_glimpse, affine_grid, box_affine_theta, box_rotation_theta
from .boxes import (
    box_convert,
    boxes_to_theta,
    denormalize_boxes,
    full_image_boxes,
    normalize_boxes,
    theta_to_boxes,
)
from .glimpse import glimpse
from .paste import paste

__all__ = [
    "affine_glimpse",
    "affine_grid",
    "box_affine_theta",
    "box_convert",
    "box_rotation_theta",
    "boxes_to_theta",
    "denormalize_boxes",
    "full_image_boxes",
    "glimpse",
    "normalize_boxes",
    "paste",
    "theta_to_boxes",
]
