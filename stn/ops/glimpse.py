"""Box glimpses: crop axis-aligned boxes out of images and resample them to a fixed size.

Differentiable w.r.t. the images and the boxes, optionally anti-aliased. Plain bilinear glimpses
are PyTorch's ``grid_sample`` of a grid built from the boxes directly (an axis-aligned box's grid
is linear in the box: one matrix product, no ``affine_grid``), with the K boxes of an image stacked
into one taller grid so that no image is copied. Anti-aliased ones are separable
(``out = Wy @ image @ Wx^T`` with sparse triangle-filter matrices built from the boxes, see
:mod:`stn.ops._taps`, :mod:`stn.ops._separable`); while tracing, exporting or compiling, with dense matrices.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._checks import Fill, Size2, check_images, check_padding_mode, check_size, fill_values, flatten_boxes
from ._separable import sample_taps
from ._taps import axis_taps
from .affine import is_compiling, isolate_non_finite, nan_where_not, sample_grids

__all__ = ["glimpse"]

# Forced implementation (tests): "auto" (see _engine), "taps" (the separable engine for plain
# bilinear too) or "traced" (what tracing and export take).
_ENGINE = "auto"


def glimpse(
    images: Tensor,
    boxes: Tensor,
    size: Size2,
    *,
    indices: Optional[Tensor] = None,
    padding_mode: str = "zeros",
    fill: Fill = 0.0,
    antialias: bool = False,
) -> Tensor:
    """Crop ``boxes`` out of ``images`` and resample each to ``size`` (bilinear, optionally anti-aliased).

    Coordinates: boxes are ``(x1, y1, x2, y2)`` in pixels of the image they refer to, pixel ``i``
    spans ``[i, i + 1)``, the whole image is ``(0, 0, W, H)``. Output pixel ``(i, j)`` of an
    ``(h, w)`` glimpse samples the image at ``(x1 + (j + 0.5) * (x2 - x1) / w,
    y1 + (i + 0.5) * (y2 - y1) / h)``: the bin centres of
    ``torchvision.ops.roi_align(..., sampling_ratio=1, aligned=True)``. The values are those of
    ``F.grid_sample(images, F.affine_grid(boxes_to_theta(boxes), ...), align_corners=False)``
    with the same ``padding_mode``, for any box, inside the image or not (and, away from the
    image edge or with ``padding_mode="border"``, those of ``roi_align``), computed without
    ``affine_grid`` and, for several boxes per image, without copying the image.

    Args:
        images: (B, C, H, W) floating point images (float32, float64, float16, bfloat16).
        boxes: (B, 4): one glimpse per image, output (B, C, h, w);
            (B, K, 4): K glimpses per image, output (B, K, C, h, w);
            (N, 4) with ``indices``: glimpse ``n`` of image ``indices[n]``, output (N, C, h, w).
            Floating point; sample positions and weights are computed in the images' dtype, but
            at least float32 (half precision cannot tell 200.1 from 200.2); plain bilinear
            glimpses of half-precision images are sampled in float32 and cast back.
        size: ``(h, w)`` of the glimpses, or an int for square ones.
        indices: (N,) long, the image of each box (any order, repeats allowed), or None.
        padding_mode: value of samples outside the image, as in ``F.grid_sample``
            (``align_corners=False``): ``"zeros"`` (the value ``fill``), ``"border"`` (the nearest
            edge pixel) or ``"reflection"`` (mirrored about the image edges).
        fill: with ``"zeros"``, the value of the image outside its edges: a number or one value
            per channel (sequence or (C,) tensor, may require grad). Bilinear samples straddling the
            edge blend image and fill exactly as if the image were padded with ``fill``.
        antialias: when a box spans more image pixels than glimpse pixels along an axis (ratio
            ``a = |x2 - x1| / w > 1``), each output pixel averages the image over its footprint with
            the triangle filter of ``F.interpolate(mode="bilinear", antialias=True)`` and PIL
            (support ``a`` pixels on each side of the sample point). For an integer-aligned box,
            the output pixels whose footprint lies inside the box equal ``F.interpolate(crop,
            size, mode="bilinear", antialias=True)``; footprints reaching past the image edge see
            the padding, like any sample (``interpolate`` renormalizes over the pixels it has).
            Along an axis where the box is not larger than the glimpse nothing changes. A box
            larger than the image costs no more than the image: the taps stop at its pixels and
            the padding beyond them enters in closed form.

    Returns:
        (B, C, h, w), (B, K, C, h, w) or (N, C, h, w) glimpses, dtype and device of ``images``.
        Differentiable w.r.t. ``images``, ``boxes`` (also with ``antialias``) and a tensor ``fill``.
        The backward is deterministic on CPU; on CUDA with anti-aliasing, and for plain bilinear
        under ``torch.use_deterministic_algorithms(True)`` (which then takes the separable engine
        instead of ``grid_sample``, whose CUDA backward adds with atomics). Where a sample point
        sits exactly on a pixel centre (or, anti-aliased, a filter edge on one), interpolation
        has a kink; anti-aliased, the gradient there is the derivative from the right, as if the
        sample were a hair further right or down; plain bilinear, ``grid_sample``'s normalized
        grid rounds each such sample to one side or the other (never a zero gradient, so
        integer-aligned boxes move). Anti-aliased, a box exactly as large as the glimpse gets the
        plain bilinear gradient (the blur's onset as it widens is a kink too, taken from the side
        of no blur).

    Tracing, export, compile: under ``torch.jit.trace``, ``torch.onnx.export`` and
    ``torch.compile`` the glimpse is plain tensor ops with nothing fixed by the boxes' values:
    ``grid_sample`` (ONNX ``GridSample``, opset >= 16) for plain bilinear, ``einsum`` with dense
    (N, h, H) and (N, w, W) triangle-filter matrices for ``antialias=True`` (same values).

    Special boxes:
        * Zero-size boxes (``x1 == x2``) repeat one sample; outputs and gradients stay finite.
        * Inverted boxes (``x2 < x1`` or ``y2 < y1``) sample the same region mirrored, exactly as
          ``affine_grid`` with a negative scale does: glimpse(box (x2, y1, x1, y2)) is
          glimpse(box (x1, y1, x2, y2)) flipped left-right.
        * A box with a NaN or infinite coordinate gives an all-NaN glimpse, and nothing else: the
          other glimpses are unaffected, and in backward the bad box's coordinates get zero
          gradient and its image receives nothing from it, so masking such glimpses out of the
          loss keeps every gradient finite. No exception is raised (check your boxes).

    Raises:
        TypeError: ``images`` is not a floating point tensor, ``boxes`` or ``indices`` has the
            wrong type, ``size`` is not an int or pair.
        ValueError: ``images`` not 4-d or empty spatially, ``boxes`` not (B, 4), (B, K, 4) or
            (N, 4) with indices of shape (N,), ``size`` not positive, unknown ``padding_mode``,
            ``fill`` of the wrong length or non-zero with another padding mode, tensors on
            different devices.
        IndexError: ``indices`` outside ``[0, B)``.

    Example:
        >>> images = torch.arange(16.0).view(1, 1, 4, 4)  # value 4 * y + x at pixel (y, x)
        >>> glimpse(images, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 2)
        tensor([[[[ 2.5000,  4.5000],
                  [10.5000, 12.5000]]]])
        >>> glimpse(images, torch.tensor([[1.0, 0.0, 3.0, 2.0]]), (1, 2)).round(decimals=4)  # x 1-3, y 0-2
        tensor([[[[3., 4.]]]])
        >>> glimpse(images, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 1, antialias=True, padding_mode="border")
        tensor([[[[7.5000]]]])
    """
    check_images(images)
    h, w = check_size(size)
    check_padding_mode(padding_mode)
    batch, channels, height, width = images.shape
    if height == 0 or width == 0:
        raise ValueError(f"images must have at least one pixel, got shape {tuple(images.shape)}")
    flat, idx, lead = flatten_boxes(images, boxes, indices)
    if flat.device != images.device:
        raise ValueError(f"boxes must be on the device of images ({images.device}), got {flat.device}")
    fill = fill_values(fill, images, padding_mode)
    # Sample positions and weights in at least float32: half precision cannot even tell 200.1 from
    # 200.2. The weights are cast to the images' dtype for the sampling itself.
    flat = flat.to(torch.promote_types(images.dtype, torch.float32))
    n = flat.shape[0]
    if n == 0:
        # Empty result that is still part of the graph, so that backward() gives zero gradients.
        link = images.reshape(-1)[:0].sum() + flat.reshape(-1)[:0].sum()
        if fill is not None:
            link = link + fill[:0].sum()
        return (images.new_zeros(*lead, channels, h, w) + link.to(images.dtype)).reshape(
            *lead, channels, h, w
        )

    flat, finite = isolate_non_finite(flat, 1)
    engine = _engine(images, antialias)
    if engine in ("grid", "traced"):
        # grid_sample needs the grid in the images' dtype: sample half precision in float32.
        # (no reshapes that change nothing: each is an autograd node, and few glimpses of large
        # images take little more time than such overhead)
        src, pos = images.to(flat.dtype), flat if len(lead) == 1 else flat.reshape(*lead, 4)
        make_grid = functools.partial(_box_grid, image_size=(height, width), cached=engine == "grid")
        fill_src = None if fill is None else fill.to(src.dtype)
        out = sample_grids(
            src, pos, idx if indices is not None else None, lead, make_grid, (h, w), padding_mode, fill_src
        )  # (*lead, C, h, w)
        if finite is not None:
            out = nan_where_not(finite, out.reshape(n, channels, h, w)).reshape(*lead, channels, h, w)
        return out.to(images.dtype)
    x1, y1, x2, y2 = flat.unbind(-1)
    ty = axis_taps(y1, y2, h, height, antialias=antialias, padding_mode=padding_mode, dense=engine == "dense")
    tx = axis_taps(x1, x2, w, width, antialias=antialias, padding_mode=padding_mode, dense=engine == "dense")
    if engine == "dense":
        # Plain tensor ops that trace and export: out = Wy @ image @ Wx^T with dense weights.
        wy, wx = ty.weight.to(images.dtype), tx.weight.to(images.dtype)
        out = torch.einsum("nih,nchw,njw->ncij", wy, images.index_select(0, idx), wx)
    else:
        out = sample_taps(images, idx, ty, tx)
    if fill is not None:
        # Outside taps carry weight 0 above; they should carry `fill`: add fill * (their weight).
        inside = ty.weight.sum(-1)[:, :, None] * tx.weight.sum(-1)[:, None, :]  # (N, h, w)
        out = out + (fill[:, None, None] * (1 - inside)[:, None]).to(out.dtype)
    return nan_where_not(finite, out).reshape(*lead, channels, h, w)


def _engine(images: Tensor, antialias: bool) -> str:
    """Which implementation samples: "grid" (``grid_sample`` of an analytic grid: plain bilinear),
    "taps" (the separable engine: anti-aliasing, and deterministic CUDA backward), or, for
    tracing, ONNX export and ``torch.compile`` (which cannot follow custom autograd and
    data-dependent sizes), plain ops: "traced" (the same grid) and "dense" (anti-aliasing with
    dense weight matrices).
    """
    if _ENGINE == "traced" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or is_compiling():
        return "dense" if antialias else "traced"
    if antialias or _ENGINE == "taps":
        return "taps"
    # grid_sample's CUDA backward accumulates with atomics: nondeterministic.
    return "taps" if images.device.type != "cpu" and torch.are_deterministic_algorithms_enabled() else "grid"


def _box_grid(
    boxes: Tensor, size: Tuple[int, int], image_size: Tuple[int, int], cached: bool = True
) -> Tensor:
    """(M, h, w, 2) ``grid_sample`` grid (``align_corners=False``) of (M, 4) pixel boxes.

    The grid is linear in the box: ``grid = boxes @ D + offset`` with a constant (4, h*w*2)
    derivative ``D`` (:func:`_grid_matrix`), so forward is one matrix product and autograd's
    backward another, instead of ``affine_grid``'s product per point or a dozen broadcast ops
    (whose autograd overhead was a good part of the time of a large image's few glimpses).
    ``cached``: reuse the constants (eager); tracing and export build them in the graph.
    """
    h, w = size
    make = _grid_matrix if cached else _grid_matrix.__wrapped__
    deriv, offset = make(size, image_size, boxes.dtype, boxes.device)
    # float32 boxes give a float32 grid also under autocast: grid_sample needs the images' dtype.
    with torch.autocast(boxes.device.type, enabled=False):
        return torch.addmm(offset, boxes, deriv).view(boxes.shape[0], h, w, 2)


@functools.lru_cache(maxsize=64)
def _grid_matrix(size: Tuple[int, int], image_size: Tuple[int, int], dtype, device) -> Tuple[Tensor, Tensor]:
    """Constants of :func:`_box_grid`: the derivative (4, h*w*2) of the flattened grid w.r.t. the
    box (x1, y1, x2, y2) and the offset (h*w*2,).

    Column j samples ``x = x1 + f (x2 - x1)``, ``f = (j + 0.5) / w``, normalized ``2 x / W - 1``
    (rows alike), so ``dgx/dx1 = (1 - f) 2 / W`` and ``dgx/dx2 = f 2 / W``.
    """
    with torch.inference_mode(False):  # cached tensors must be usable outside inference mode too
        (h, w), (height, width) = size, image_size
        fx = (torch.arange(w, dtype=torch.float64) + 0.5) / w
        fy = (torch.arange(h, dtype=torch.float64) + 0.5) / h
        deriv = torch.zeros(4, h, w, 2, dtype=torch.float64)
        deriv[0, :, :, 0] = (1 - fx) * (2 / width)
        deriv[2, :, :, 0] = fx * (2 / width)
        deriv[1, :, :, 1] = ((1 - fy) * (2 / height))[:, None]
        deriv[3, :, :, 1] = (fy * (2 / height))[:, None]
        # A sample meant to sit exactly on a pixel centre (every one of an integer box at the
        # image's own size: the usual initial box) is a kink; grid_sample's rounding would put it
        # a hair to either side, so that the gradient depended on the kernel (eager, compiled,
        # CUDA). Moving every sample 2 eps right/down (above that rounding; values change by
        # eps * size times a pixel step) gives the derivative from the right, as the tap engine does.
        offset = torch.full((h * w * 2,), -(1 - 2 * torch.finfo(dtype).eps), dtype=torch.float64)
        return deriv.reshape(4, -1).to(dtype=dtype, device=device), offset.to(dtype=dtype, device=device)
