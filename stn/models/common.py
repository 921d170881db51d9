"""Pieces every model shares: argument checks that turn config values into plain Python, and
per-channel normalization held as buffers.

Config values arrive from Hydra as ``ListConfig`` and ints; these helpers turn them into tuples of
plain numbers and raise ``ValueError`` naming the argument and what was received.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stn.ops._checks import Size2, check_int, check_size


def as_floats(value, name: str, length: Optional[int] = None) -> Tuple[float, ...]:
    """A number or a sequence of numbers as a tuple of floats, optionally of a given length."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {value!r}") from None
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(out)}: {out}")
    return out


def as_ints(value, name: str, min_len: int = 1) -> Tuple[int, ...]:
    """A sequence of positive ints (e.g. layer widths) as a tuple."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of positive ints, got {value!r}") from None
    if len(out) < min_len or any(v <= 0 for v in out):
        raise ValueError(f"{name} must be at least {min_len} positive ints, got {out}")
    return out


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with mean and std as buffers (they follow ``.to()``).

    Args:
        mean, std: one value per channel (a single value is used for every channel).
        channels: the number of channels ``C`` of the inputs (..., C, H, W).
    """

    def __init__(self, mean, std, channels: int):
        super().__init__()
        mean = as_floats(mean, "mean")
        std = as_floats(std, "std")
        for name, v in (("mean", mean), ("std", std)):
            if len(v) == 1:
                continue
            if len(v) != channels:
                raise ValueError(f"{name} must have 1 or in_channels={channels} entries, got {len(v)}: {v}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean).expand(channels).clone().view(channels, 1, 1))
        self.register_buffer("std", torch.tensor(std).expand(channels).clone().view(channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class ImageModel(nn.Module):
    """Base of the models: the shape of the data they are built for, its normalization (buffers,
    saved with the weights), and a clear error for inputs of another shape."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Size2,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels")
        self.num_classes = check_int(num_classes, "num_classes")
        self.image_size = check_size(image_size, "image_size")
        self.normalize = Normalize(mean, std, in_channels)

    def check_input(self, images: Tensor) -> None:
        """Models are built for one image shape: say so clearly when another one arrives."""
        c, (h, w) = self.in_channels, self.image_size
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != c or tuple(images.shape[-2:]) != (h, w):
            raise ValueError(
                f"images must have shape (B, {c}, {h}, {w}) (the model was built with in_channels={c}, "
                f"image_size={(h, w)}), got {tuple(images.shape)}"
            )


def float32(like: Tensor) -> torch.autocast:
    """A region where autocast is off, for geometry: boxes, thetas and the sampling of glimpses
    stay in float32 under mixed precision (a bf16 box edge near pixel 100 is only good to half a
    pixel). Cast the inputs with ``.float()`` inside it."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def low_res_view(images: Tensor, scale: float) -> Tensor:
    """The whole image shrunk by ``scale`` with anti-aliasing (bilinear with a triangle filter the
    size of the shrink, as PIL and ATS's ``rescale(anti_aliasing=True)`` do).

    Shape: (B, C, H, W) -> (B, C, round(H * scale), round(W * scale)), at least 1x1; ``scale=1``
    returns the images unchanged.
    """
    if scale == 1:
        return images
    h, w = (int(n) for n in images.shape[-2:])  # ints also under tracing (sizes are then tensors)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def check_scale(value, name: str) -> float:
    """A shrink factor in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1] (the shrink of the view), got {value!r}")
    return float(value)
