"""General affine glimpses (rotation, shear, flips) and thetas that compose a box with a local warp.

Conventions (see :mod:`stn.ops.boxes`): boxes are pixel ``(x1, y1, x2, y2)`` with pixel ``i``
spanning ``[i, i + 1)``; sizes are ``(H, W)`` / ``(h, w)``; ``theta`` is a ``(2, 3)`` matrix for
``F.affine_grid(..., align_corners=False)``: it maps normalized output coordinates ``(x, y, 1)`` of
the glimpse (``[-1, 1]``, x to the right, y down) to normalized input coordinates of the image.

:func:`affine_glimpse` is the general path of a spatial transformer (any theta); for axis-aligned
boxes :func:`stn.ops.glimpse` is the faster, anti-aliasing choice. :func:`box_affine_theta` and
:func:`box_rotation_theta` build thetas that act inside a box, so that a localization network can
predict a box plus a small warp of the glimpse.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import (
    Fill,
    Size2,
    check_box_tensor,
    check_images,
    check_indices,
    check_padding_mode,
    check_size,
    fill_values,
    index_layers,
)
from .boxes import boxes_to_theta

__all__ = ["affine_glimpse", "affine_grid", "box_affine_theta", "box_rotation_theta"]

# indices layout: stack grids per image (no images[indices] copy) while
# B * (most thetas on one image) * h * w <= _STACK_RATIO * N * H * W; else gather. Tests flip it.
_STACK_RATIO = 1.0


# --------------------------------------------------------------------------------------------------
# validation helpers (private)


def _check_theta(theta: Tensor, name: str = "theta") -> None:
    """Require a floating point tensor of shape (..., 2, 3)."""
    if not isinstance(theta, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(theta).__name__}")
    if theta.dim() < 2 or tuple(theta.shape[-2:]) != (2, 3):
        raise ValueError(f"{name} must have shape (..., 2, 3), got shape {tuple(theta.shape)}")
    if not theta.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {theta.dtype}")


def _check_same_device(images: Tensor, other: Tensor, name: str) -> None:
    if other.device != images.device:
        raise ValueError(
            f"{name} is on {other.device} but images are on {images.device}; move them to one device"
        )


def _flatten_theta(
    images: Tensor, theta: Tensor, indices: Optional[Tensor]
) -> Tuple[Tensor, Optional[Tensor], Tuple[int, ...]]:
    """Resolve the theta layouts: (B, 2, 3), (B, K, 2, 3), or (N, 2, 3) with (N,) indices.

    Returns theta (as given, not flattened), the (N,) long image index or None when no gather is
    needed, and the leading output shape. Error messages mirror ``_checks.flatten_boxes``.
    """
    batch = images.shape[0]
    if indices is not None:
        if theta.dim() != 3:
            raise ValueError(f"with indices, theta must be (N, 2, 3), got shape {tuple(theta.shape)}")
        idx = check_indices(images, indices, theta, "theta", "theta")
        return theta, idx.to(device=images.device), (theta.shape[0],)
    if theta.dim() == 3:
        if theta.shape[0] != batch:
            raise ValueError(
                f"theta of shape {tuple(theta.shape)} must have one matrix per image "
                f"({batch} images of shape "
                f"{tuple(images.shape)}); pass indices=(N,) to sample several thetas from chosen images"
            )
        return theta, None, (batch,)
    if theta.dim() == 4:
        if theta.shape[0] != batch:
            raise ValueError(
                f"theta of shape {tuple(theta.shape)} must have first dimension {batch} "
                f"(images of shape {tuple(images.shape)})"
            )
        return theta, None, (batch, theta.shape[1])
    raise ValueError(
        f"theta must be (B, 2, 3), (B, K, 2, 3) or (N, 2, 3) with indices, got shape {tuple(theta.shape)}"
    )


# --------------------------------------------------------------------------------------------------
# sampling


def affine_grid(theta: Tensor, size: Size2) -> Tensor:
    """``F.affine_grid(theta, (N, C, h, w), align_corners=False)`` for (N, 2, 3) theta.

    Args:
        theta: (N, 2, 3) floating point, mapping normalized output ``(x, y, 1)`` to normalized
            input coordinates (see the module docstring).
        size: output ``(h, w)`` (an int means square).

    Returns:
        (N, h, w, 2) sampling points ``(x, y)`` for ``F.grid_sample(..., align_corners=False)``:
        output pixel ``(i, j)`` has centre ``x = (2j + 1) / w - 1``, ``y = (2i + 1) / h - 1``.

    Elementwise rather than a batched matmul: it accepts N = 0 (affine_grid does not), never runs
    in TF32, and is several times faster on the CPU at glimpse sizes.

    Example:
        >>> affine_grid(torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]), (1, 2))
        tensor([[[[-0.5000,  0.0000],
                  [ 0.5000,  0.0000]]]])
    """
    _check_theta(theta)
    if theta.dim() != 3:
        raise ValueError(f"theta must be (N, 2, 3), got shape {tuple(theta.shape)}")
    h, w = check_size(size)
    xs = (torch.arange(w, dtype=theta.dtype, device=theta.device) * 2 + 1) / w - 1
    ys = (torch.arange(h, dtype=theta.dtype, device=theta.device) * 2 + 1) / h - 1
    t = theta[:, :, :, None, None]  # (N, 2, 3, 1, 1)
    xs, ys = xs[None, None, :], ys[None, :, None]
    gx = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
    gy = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    return torch.stack([gx, gy], dim=-1)


def _coverage_1d(g: Tensor, size: int) -> Tensor:
    """Sum of the in-image bilinear weights along one axis, as ``grid_sample`` computes them."""
    ix = ((g + 1) * size - 1) / 2
    x0 = torch.floor(ix.detach())
    a = ix - x0
    in0 = (x0 >= 0) & (x0 <= size - 1)
    in1 = (x0 >= -1) & (x0 <= size - 2)
    return (1 - a) * in0 + a * in1  # exactly 1 inside: (1 - a) + a rounds to 1 in IEEE arithmetic


def sample_grids(
    images: Tensor,
    params: Tensor,
    idx: Optional[Tensor],
    lead: Tuple[int, ...],
    make_grid: Callable[[Tensor, Tuple[int, int]], Tensor],
    size: Tuple[int, int],
    padding_mode: str,
    fill: Optional[Tensor],
) -> Tensor:
    """``grid_sample`` of the grids ``make_grid(params)`` in the three glimpse layouts.

    Args:
        images: (B, C, H, W).
        params: (B, P...) with ``lead == (B,)``, (B, K, P...) with ``lead == (B, K)``, or
            (N, P...) with ``idx`` (N,): one grid's parameters (a theta, a box) per glimpse.
        idx: (N,) long image of each glimpse, or None for the first two layouts.
        make_grid: (M, P...) parameters and ``size`` -> (M, h, w, 2) normalized ``grid_sample`` grid.
        size: ``(h, w)``.
        padding_mode: as in ``grid_sample``; fill: (1, C, 1, 1) or (C,) tensor added as
            ``fill * (1 - coverage)`` (zeros mode), or None.

    Returns:
        (*lead, C, h, w) glimpses. The K grids of one image are stacked into one taller grid, so
        each image is sampled once without a copy; with ``idx`` the same is done (padding every
        image to the most glimpses on one image) unless those idle samples would cost more than
        gathering ``images[idx]``, and always gathering while tracing (the count is data).
    """
    batch, channels, height, width = images.shape
    h, w = size
    slots = None
    if idx is not None and idx.numel() and not torch.jit.is_tracing() and not is_compiling():
        most = int(torch.bincount(idx, minlength=batch).max())
        if batch * most * h * w <= _STACK_RATIO * idx.numel() * height * width:
            slots = index_layers(idx, batch)  # rank of each glimpse among those of its image
            stacked = params.new_zeros(batch, most, *params.shape[1:])
            params = stacked.index_put((idx, slots), params)
            lead = (batch, most)
    if len(lead) == 2:
        # (B, K): stack the K grids of each image vertically and sample each image once.
        k = lead[1]
        grid = make_grid(params.reshape(batch * k, *params.shape[2:]), size).reshape(batch, k * h, w, 2)
        src = images
    else:
        grid = make_grid(params, size)
        src = images if idx is None else images.index_select(0, idx)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    if fill is not None:
        coverage = _coverage_1d(grid[..., 0], width) * _coverage_1d(grid[..., 1], height)
        out = out + fill.reshape(1, -1, 1, 1) * (1 - coverage.unsqueeze(1))
    if slots is not None:
        return out.reshape(batch, channels, lead[1], h, w)[idx, :, slots]
    if len(lead) == 2:
        out = out.reshape(batch, channels, lead[1], h, w).transpose(1, 2).contiguous()
    return out


def is_compiling() -> bool:
    """True inside ``torch.compile`` (dynamo) tracing."""
    return torch.compiler.is_compiling()


def affine_glimpse(
    images: Tensor,
    theta: Tensor,
    size: Size2,
    *,
    indices: Optional[Tensor] = None,
    padding_mode: str = "zeros",
    fill: Fill = 0.0,
) -> Tensor:
    """Sample glimpses of ``images`` through general affine maps (rotation, shear, flips).

    Output pixel ``(i, j)`` of a glimpse of size ``(h, w)`` has normalized coordinates
    ``x = (2j + 1) / w - 1``, ``y = (2i + 1) / h - 1``; ``theta @ (x, y, 1)`` gives the normalized
    point of the image (``[-1, 1]`` spans the whole image, pixel edges, ``align_corners=False``)
    that is sampled bilinearly. This is ``F.affine_grid(theta, ..., align_corners=False)`` followed
    by ``F.grid_sample(..., align_corners=False)``; for a box, ``boxes_to_theta`` gives the theta
    that reproduces :func:`stn.ops.glimpse`.

    Args:
        images: (B, C, H, W) floating point.
        theta: (B, 2, 3): one glimpse per image, output (B, C, h, w);
            (B, K, 2, 3): K glimpses per image, output (B, K, C, h, w);
            (N, 2, 3) together with ``indices``: output (N, C, h, w).
            Cast to ``images.dtype``; must be on the images' device.
        size: output ``(h, w)`` (an int means square).
        indices: None, or (N,) integer tensor of image indices in ``[0, B)``, in any order and with
            repeats, selecting the image of each theta.
        padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``, as in ``grid_sample``.
        fill: value of the image outside its borders with ``padding_mode="zeros"``: a number, a
            sequence of C numbers, or a tensor of 1 or C values (differentiable). Bilinear taps
            that fall outside read ``fill`` instead of 0; computed as
            ``grid_sample(images) + fill * (1 - coverage)``, exact because the weights sum to 1,
            without copying the images. A non-zero fill with another padding mode is an error.

    Returns:
        Glimpses of shape (B, C, h, w), (B, K, C, h, w) or (N, C, h, w), contiguous, differentiable
        w.r.t. ``images``, ``theta`` (and a tensor ``fill``). A theta with a NaN or infinite entry
        gives an all-NaN glimpse and nothing else, as a bad box does in :func:`stn.ops.glimpse`:
        in backward it and its image get nothing from that glimpse, so masking it out of the loss
        keeps every gradient finite.

    Raises:
        TypeError, ValueError, IndexError: for bad types, shapes, sizes or indices, naming the
            argument and the shapes seen.

    The (B, K) layout samples each image once with the K grids stacked (no copy of the images).
    The ``indices`` layout does the same, padding each image to the largest number of thetas on
    one image, unless those idle samples would cost more than gathering ``images[indices]``.

    Example:
        >>> images = torch.arange(8.0).reshape(1, 1, 2, 4)
        >>> flip_x = torch.tensor([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
        >>> affine_glimpse(images, flip_x, (2, 4))
        tensor([[[[3., 2., 1., 0.],
                  [7., 6., 5., 4.]]]])
    """
    check_images(images)
    h, w = check_size(size)
    _check_theta(theta)
    check_padding_mode(padding_mode)
    _check_same_device(images, theta, "theta")
    batch, channels, height, width = images.shape
    if height == 0 or width == 0:
        raise ValueError(f"images must have non-empty spatial dimensions, got shape {tuple(images.shape)}")
    theta, idx, lead = _flatten_theta(images, theta, indices)
    fill = fill_values(fill, images, padding_mode)
    theta, finite = isolate_non_finite(theta.to(images.dtype), 2)
    out = sample_grids(images, theta, idx, lead, affine_grid, (h, w), padding_mode, fill)
    return nan_where_not(finite, out)


def isolate_non_finite(params: Tensor, item_dims: int) -> Tuple[Tensor, Optional[Tensor]]:
    """Zero the items (the last ``item_dims`` dimensions: a box, a theta) that hold a NaN or Inf.

    Returns the cleaned params and the finite-item mask (``params.shape[:-item_dims]``), or None
    when every item is finite (checked on CPU only; on other devices, and while tracing, always
    masked rather than synchronized). The zeroed item samples harmlessly and, through
    ``torch.where``, neither it nor anything it read gets a gradient from the output that
    :func:`nan_where_not` then sets to NaN.
    """
    if params.device.type == "cpu" and not (torch.jit.is_tracing() or is_compiling()):
        # a finite sum means every item is finite (a NaN or Inf makes it NaN or Inf): one op and
        # one read instead of three
        if math.isfinite(params.detach().sum()):
            return params, None
    finite = torch.isfinite(params).flatten(-item_dims).all(-1)
    zero = torch.zeros((), dtype=params.dtype, device=params.device)
    return torch.where(finite.reshape(*finite.shape, *(1,) * item_dims), params, zero), finite


def nan_where_not(finite: Optional[Tensor], out: Tensor) -> Tensor:
    """``out`` (finite.shape + (C, h, w)) with the glimpses of non-finite items set to NaN."""
    if finite is None:
        return out
    nan = torch.full((), float("nan"), dtype=out.dtype, device=out.device)
    return torch.where(finite.reshape(*finite.shape, 1, 1, 1), out, nan)


# --------------------------------------------------------------------------------------------------
# thetas


def box_affine_theta(boxes: Tensor, image_size: Size2, local_theta: Tensor) -> Tensor:
    """Theta that applies ``local_theta`` inside the glimpse frame of ``boxes``, then the box map.

    ``theta = box_theta @ [[local_theta], [0, 0, 1]]`` with ``box_theta = boxes_to_theta(boxes,
    image_size)``: an output point ``p`` of the glimpse (normalized, ``[-1, 1]`` spans the box) is
    first moved to ``local_theta @ (p, 1)``, still in the box's normalized frame, and that point is
    then mapped into the image. The identity ``local_theta`` gives exactly ``boxes_to_theta``.
    Note that the box frame is normalized per axis: for a non-square box a local rotation matrix
    is a rotation plus shear in pixels; use :func:`box_rotation_theta` for pixel-space rotations.

    Args:
        boxes: (..., 4) pixel ``(x1, y1, x2, y2)``.
        image_size: ``(H, W)`` of the image the boxes refer to (an int means square).
        local_theta: (..., 2, 3); its leading dimensions broadcast with those of ``boxes``.

    Returns:
        (..., 2, 3) theta for :func:`affine_glimpse`, differentiable w.r.t. ``boxes`` and
        ``local_theta``, in the promoted dtype of the two.

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 2.0, 4.0]])
        >>> flip_x = torch.tensor([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
        >>> box_affine_theta(boxes, (4, 4), flip_x)
        tensor([[[-0.5000,  0.0000, -0.5000],
                 [ 0.0000,  1.0000,  0.0000]]])
    """
    check_box_tensor(boxes)
    _check_theta(local_theta, "local_theta")
    try:
        lead = torch.broadcast_shapes(boxes.shape[:-1], local_theta.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"boxes of shape {tuple(boxes.shape)} and local_theta of shape {tuple(local_theta.shape)} "
            "must have broadcastable leading dimensions"
        ) from None
    dtype = torch.promote_types(boxes.dtype, local_theta.dtype)
    box_theta = boxes_to_theta(boxes.to(dtype), image_size)  # (..., 2, 3), diagonal linear part
    scale = torch.diagonal(box_theta[..., :2], dim1=-2, dim2=-1)  # (..., 2)
    shift = box_theta[..., 2]  # (..., 2)
    out = local_theta.to(dtype) * scale[..., :, None]
    out = torch.cat([out[..., :2], out[..., 2:] + shift[..., :, None]], dim=-1)
    return out.expand(*lead, 2, 3)


def box_rotation_theta(boxes: Tensor, angles: Union[float, Tensor], image_size: Size2) -> Tensor:
    """Theta that crops ``boxes`` rotated about their centres by ``angles`` (radians), in pixels.

    The rotation is done in pixel space, so it is a true rotation (no shear) for non-square boxes
    and non-square images: the sampled region is the box rotated about its centre, and the glimpse
    keeps the box's size. Sign convention: a positive angle rotates the glimpse's *content*
    counter-clockwise as seen on screen (y down), like ``torchvision.transforms.functional.rotate``
    and ``torch.rot90(crop, 1, dims=(-2, -1))``; equivalently the sampling window turns clockwise.
    An angle of 0 gives ``boxes_to_theta(boxes, image_size)``.

    With ``c, s = cos(angle), sin(angle)``, box size ``bw, bh`` and image size ``W, H``::

        theta = [[c * bw / W, -s * bh / W, (x1 + x2) / W - 1],
                 [s * bw / H,  c * bh / H, (y1 + y2) / H - 1]]

    Args:
        boxes: (..., 4) pixel ``(x1, y1, x2, y2)``.
        angles: a number or a tensor whose shape broadcasts with ``boxes.shape[:-1]``.
        image_size: ``(H, W)`` of the image the boxes refer to.

    Returns:
        (..., 2, 3) theta for :func:`affine_glimpse`, differentiable w.r.t. boxes and angles.

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
        >>> theta = box_rotation_theta(boxes, torch.tensor([torch.pi / 2]), (2, 2))
        >>> affine_glimpse(images, theta, 2).round()
        tensor([[[[2., 4.],
                  [1., 3.]]]])
    """
    check_box_tensor(boxes)
    img_h, img_w = check_size(image_size, "image_size")
    if isinstance(angles, numbers.Real) and not isinstance(angles, bool):
        angles = torch.tensor(float(angles), dtype=boxes.dtype, device=boxes.device)
    elif not isinstance(angles, Tensor):
        raise TypeError(f"angles must be a number or a torch.Tensor, got {type(angles).__name__}")
    if not angles.is_floating_point():
        angles = angles.to(boxes.dtype)
    try:
        lead = torch.broadcast_shapes(boxes.shape[:-1], angles.shape)
    except RuntimeError:
        raise ValueError(
            f"angles of shape {tuple(angles.shape)} must broadcast with the boxes' leading shape "
            f"{tuple(boxes.shape[:-1])} (boxes of shape {tuple(boxes.shape)})"
        ) from None
    dtype = torch.promote_types(boxes.dtype, angles.dtype)
    x1, y1, x2, y2 = boxes.to(dtype).unbind(-1)
    angles = angles.to(dtype)
    c, s = torch.cos(angles), torch.sin(angles)
    bw, bh = x2 - x1, y2 - y1
    row_x = torch.stack(
        torch.broadcast_tensors(c * bw / img_w, -s * bh / img_w, (x1 + x2) / img_w - 1), dim=-1
    )
    row_y = torch.stack(
        torch.broadcast_tensors(s * bw / img_h, c * bh / img_h, (y1 + y2) / img_h - 1), dim=-1
    )
    return torch.stack([row_x, row_y], dim=-2).expand(*lead, 2, 3)
