"""Paste patches back into boxes of images: the inverse of :func:`stn.ops.glimpse`.

Out of place and differentiable w.r.t. images, patches and boxes, so that glimpses can be edited
by a network and put back into the picture without "modified by an inplace operation" errors.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._checks import check_images, flatten_boxes, index_layers
from ._separable import separable_sample

__all__ = ["paste"]


def _axis_taps(
    lo: Tensor, hi: Tensor, out_size: int, in_size: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Bilinear taps along one axis for the inverse box map.

    Image pixel ``X`` (centre ``X + 0.5``) lies at continuous patch coordinate
    ``s = (X + 0.5 - lo) * in_size / (hi - lo)``; the patch is read at pixel-centre index
    ``u = s - 0.5``, from patch pixels ``floor(u)`` and ``floor(u) + 1`` with weights ``1 - a`` and
    ``a`` (``a = u - floor(u)``); taps outside the patch get weight 0 (zero padding).

    Args:
        lo, hi: (n,) box edges along this axis (pixels of the image).
        out_size: image size along this axis; in_size: patch size along it.

    Returns:
        i0, i1: (n, out_size) long tap indices clamped into the patch;
        w0, w1: (n, out_size) tap weights (0 for taps outside the patch);
        cover: (n, out_size) sum of the in-patch weights (the coverage along this axis), exactly 1
        where both taps are inside.
    """
    width = hi - lo
    degenerate = width == 0
    # in_size / width is exactly 1 for an integer box of the patch's size, which keeps u integer.
    scale = in_size / torch.where(degenerate, torch.ones_like(width), width)
    centres = torch.arange(out_size, dtype=lo.dtype, device=lo.device) + 0.5
    u = (centres - lo[:, None]) * scale[:, None] - 0.5
    # Far outside the patch all weights are 0; clamping keeps huge scales finite.
    u = u.clamp(-2.0, in_size + 1.0).masked_fill(degenerate[:, None], -2.0)
    j0 = torch.floor(u.detach())
    a = u - j0
    j0 = torch.nan_to_num(j0, nan=-2.0).long()  # callers mask non-finite boxes; stay defined anyway
    in0 = (j0 >= 0) & (j0 <= in_size - 1)
    in1 = (j0 >= -1) & (j0 <= in_size - 2)
    w0 = (1 - a) * in0
    w1 = a * in1
    cover = w0 + w1  # exactly 1 where both taps are inside: (1 - a) + a rounds to 1 in IEEE arithmetic
    i0 = j0.clamp(0, in_size - 1)
    i1 = (j0 + 1).clamp(0, in_size - 1)
    return i0, i1, w0, w1, cover


def _warp_back(patches: Tensor, boxes: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """Patches (n, C, h, w) resampled onto the (height, width) image grid of their boxes (n, 4).

    Returns the premultiplied values (n, C, height, width) (zero outside the box) and the coverage
    (n, 1, height, width): the same numbers as ``grid_sample`` of the patch and of ones with zero
    padding. The two-tap rows of ``Wy`` and ``Wx`` go through the separable engine of
    :func:`stn.ops.glimpse` (:func:`stn.ops._separable.separable_sample`): it reads only the taps,
    and its backward is deterministic.
    """
    n = patches.shape[0]
    x1, y1, x2, y2 = boxes.unbind(-1)
    xi0, xi1, xw0, xw1, xcov = _axis_taps(x1, x2, width, patches.shape[-1])
    yi0, yi1, yw0, yw1, ycov = _axis_taps(y1, y2, height, patches.shape[-2])
    values = separable_sample(
        patches,
        torch.arange(n, device=patches.device),
        torch.stack([yi0, yi1], dim=-1),
        torch.stack([yw0, yw1], dim=-1),
        torch.stack([xi0, xi1], dim=-1),
        torch.stack([xw0, xw1], dim=-1),
    )
    coverage = ycov[:, None, :, None] * xcov[:, None, None, :]
    return values, coverage


def _blend(base: Tensor, patches: Tensor, boxes: Tensor) -> Tensor:
    """``base * (1 - coverage) + values``: the patches composited over ``base`` (same batch).

    A box with a non-finite coordinate gives an all-NaN image; it is computed as an empty paste
    and then replaced by NaN, so that a loss that masks that image out keeps finite gradients.
    """
    finite = torch.isfinite(boxes).all(-1)
    # On CPU skip the masking when all boxes are finite; on CUDA mask rather than synchronize.
    mask_bad = boxes.device.type != "cpu" or not bool(finite.all())
    if mask_bad:
        boxes = torch.where(finite[:, None], boxes, torch.zeros((), dtype=boxes.dtype, device=boxes.device))
    values, coverage = _warp_back(patches, boxes, base.shape[-2], base.shape[-1])
    out = torch.addcmul(values, base, 1 - coverage)
    if mask_bad:
        nan = torch.full((), float("nan"), dtype=out.dtype, device=out.device)
        out = torch.where(finite[:, None, None, None], out, nan)
    return out


def paste(images: Tensor, patches: Tensor, boxes: Tensor, *, indices: Optional[Tensor] = None) -> Tensor:
    """Warp ``patches`` back into ``boxes`` of ``images`` and blend them in: the inverse of glimpse.

    Each patch of size ``(h, w)`` is stretched over its box the way :func:`stn.ops.glimpse` would
    have cut it out: patch pixel ``j`` covers ``[x1 + j * (x2 - x1) / w, x1 + (j + 1) * (x2 - x1) / w)``
    and image pixel ``X`` reads the patch bilinearly (zero padding) at its centre ``X + 0.5``. The
    result is composited with a coverage mask ``m`` (the same bilinear sample of an all-ones patch):
    ``out = image * (1 - m) + sample(patch)``.

    - Integer box whose size equals the patch size: ``m`` is exactly 1 inside the box and 0
      outside, so pasted pixels equal the patch bit for bit and all other pixels are untouched
      (on CUDA this assumes TF32 matmuls are off, the default: narrow patches go through a
      matmul). For such a box inside the image, ``glimpse(paste(images, p, b), b, p.shape[-2:])``
      returns ``p``.
    - Fractional boxes: ``m`` ramps linearly from 1 half a patch pixel inside the box edge to 0 half
      a patch pixel outside (0.5 on the edge); at the patch's own scale this is the fraction of the
      edge pixel that the box covers. The edges are soft, so the output is differentiable w.r.t.
      the boxes. Bilinear, no anti-aliasing: pasting into a box much smaller than the patch
      point-samples it. Boxes may extend beyond the image (they are clipped) and may be flipped
      (``x2 < x1`` mirrors the patch); a zero-width or zero-height box pastes nothing. A box with
      a NaN or infinite coordinate makes its own image all NaN (so the loss shows it) and affects
      no other image; masking that image out of the loss keeps every gradient finite.
    - Several patches on one image are applied in order, later ones over earlier ones: K order for
      (B, K, ...) inputs, order of appearance in ``indices`` otherwise.

    Nothing is modified in place: inputs keep their values and ``_version``, and every output is a
    new tensor (also when there is nothing to paste). Each image with at most one patch costs no
    Python loop; with several, the loop runs over layers (the k-th patch of every image), not boxes.

    Args:
        images: (B, C, H, W) floating point.
        patches: (B, C, h, w) with boxes (B, 4); (B, K, C, h, w) with boxes (B, K, 4); or
            (N, C, h, w) with boxes (N, 4) and ``indices``. C must equal the images' C. Cast to
            ``images.dtype``.
        boxes: pixel ``(x1, y1, x2, y2)`` in the images' coordinates, floating point.
        indices: None, or (N,) integer tensor of image indices in ``[0, B)`` (any order, repeats
            allowed) saying which image each patch goes to.

    Returns:
        (B, C, H, W) new images, differentiable w.r.t. ``images``, ``patches`` and ``boxes``.

    Raises:
        TypeError, ValueError, IndexError: for bad types, shapes, channel counts or indices, naming
            the argument and the shapes seen.

    Example:
        >>> images = torch.zeros(1, 1, 4, 4)
        >>> patches = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
        >>> paste(images, patches, torch.tensor([[1.0, 0.0, 3.0, 2.0]]))
        tensor([[[[0., 1., 2., 0.],
                  [0., 3., 4., 0.],
                  [0., 0., 0., 0.],
                  [0., 0., 0., 0.]]]])
    """
    check_images(images)
    if not isinstance(patches, Tensor):
        raise TypeError(f"patches must be a torch.Tensor, got {type(patches).__name__}")
    if not patches.is_floating_point():
        raise TypeError(f"patches must be floating point, got dtype {patches.dtype}")
    flat, idx, lead = flatten_boxes(images, boxes, indices)
    batch, channels, height, width = images.shape
    expected = (
        "(N, C, h, w)" if indices is not None else ("(B, C, h, w)" if len(lead) == 1 else "(B, K, C, h, w)")
    )
    if patches.dim() != len(lead) + 3 or tuple(patches.shape[: len(lead)]) != tuple(lead):
        raise ValueError(
            f"patches must be {expected} with leading shape {tuple(lead)} to match boxes of shape "
            f"{tuple(boxes.shape)}, got patches of shape {tuple(patches.shape)}"
        )
    if patches.shape[-3] != channels:
        raise ValueError(
            f"patches must have {channels} channels like images of shape {tuple(images.shape)}, "
            f"got patches of shape {tuple(patches.shape)}"
        )
    if patches.shape[-1] == 0 or patches.shape[-2] == 0:
        raise ValueError(f"patches must have non-empty spatial dimensions, got shape {tuple(patches.shape)}")
    for name, t in (("patches", patches), ("boxes", boxes)):
        if t.device != images.device:
            raise ValueError(
                f"{name} is on {t.device} but images are on {images.device}; move them to one device"
            )
    patches = patches.to(images.dtype)
    flat = flat.to(images.dtype)

    if indices is None and len(lead) == 1:
        return _blend(images, patches, flat)
    if indices is None:
        k = lead[1]
        if k == 0:
            return images.clone()
        out, boxes3 = images, flat.reshape(batch, k, 4)
        for layer in range(k):
            out = _blend(out, patches[:, layer], boxes3[:, layer])
        return out

    if flat.shape[0] == 0:
        return images.clone()
    layer_of = index_layers(idx, batch)
    n_layers = int(layer_of.max()) + 1
    out = images
    for layer in range(n_layers):
        if n_layers == 1:
            sel_patches, sel_boxes, sel_idx = patches, flat, idx
        else:
            sel = (layer_of == layer).nonzero().squeeze(1)
            sel_patches, sel_boxes, sel_idx = (
                patches.index_select(0, sel),
                flat.index_select(0, sel),
                idx.index_select(0, sel),
            )
        blended = _blend(out.index_select(0, sel_idx), sel_patches, sel_boxes)
        out = out.index_copy(0, sel_idx, blended)
    return out
