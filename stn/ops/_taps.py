"""Taps of one axis of a box glimpse: which source pixels each output pixel reads, with what weight.

An axis-aligned crop resampled to ``(h, w)`` is separable, ``out[n, c] = Wy[n] @ image @ Wx[n]^T``
with ``Wy`` (h, H) and ``Wx`` (w, W), and both matrices are sparse: output row ``i`` reads ``T``
consecutive source rows ("taps": two for bilinear, about ``2 * downscale`` for the anti-aliasing
triangle filter). :func:`axis_taps` builds one axis's taps for N boxes, with the sample positions
(and filter half-widths) the weights are functions of and the weights' derivatives w.r.t. them,
so that the tap engine (:mod:`stn.ops._separable`) can contract a gradient with them in one pass.

Padding modes only change where taps land (``grid_sample`` semantics, ``align_corners=False``):
``zeros`` drops out-of-range taps (weight 0; :func:`stn.ops.glimpse` adds
``fill * (1 - sum_y * sum_x)``), ``border`` clamps them to the edge, ``reflection`` reflects them
about the image edges.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ._checks import PADDING_MODES

__all__ = ["Taps", "axis_taps"]

_MAX_TAP = float(2**30)  # taps are clamped to this before the cast to long (huge finite boxes)
# Box edges are clamped to +-this first: past it a box's glimpse and gradients are 0 to float32
# precision anyway, and larger edges overflow the filter arithmetic (half-width squared) to inf/NaN.
_MAX_COORD = float(2**50)


class Taps(NamedTuple):
    """Taps of one axis for N boxes (see :func:`axis_taps`)."""

    index: Tensor  # (N, out, T) long, in [0, in_size)
    weight: Tensor  # (N, out, T), differentiable w.r.t. the box edges
    count: Tensor  # (N,) long: taps t >= count[n] are outside box n's filter (weight and gradient 0)
    pos: Optional[Tensor]  # (N, out) sample positions in pixel-index coordinates, differentiable, or None
    scale: Optional[Tensor]  # (N,) triangle half-width a (anti-aliasing), differentiable, or None
    dpos: Optional[Tensor]  # (N, out, T) d weight / d pos (no graph), or None (weight differentiated itself)
    dscale: Optional[Tensor]  # (N, out, T) d weight / d scale (no graph), or None


def axis_taps(
    lo: Tensor,
    hi: Tensor,
    out_size: int,
    in_size: int,
    *,
    antialias: bool,
    padding_mode: str,
    dense: bool = False,
) -> Taps:
    """Taps of one axis: the sparse rows of ``Wy`` (or ``Wx``).

    Output pixel ``j`` of ``out_size`` has its centre at ``lo + (j + 0.5) * (hi - lo) / out_size``
    in continuous coordinates (pixel ``k`` spans ``[k, k + 1)``). Bilinear: the two pixels around
    it, weights linear in the distance between pixel centres. Anti-aliased, when the box spans more
    source pixels than output pixels (``a = |hi - lo| / out_size > 1``): every pixel ``k`` with
    ``|k + 0.5 - centre| < a``, weight ``1 - |k + 0.5 - centre| / a`` normalized to sum to 1 (the
    triangle filter of PIL and ``F.interpolate(antialias=True)``); ``a <= 1`` is plain bilinear.

    Args:
        lo, hi: (N,) box edges along this axis, pixel coordinates, finite.
        out_size: glimpse size along this axis.
        in_size: image size along this axis.
        antialias: use the triangle filter for downscaled boxes.
        padding_mode: ``"zeros"`` (out-of-range taps get weight 0), ``"border"``, ``"reflection"``.
        dense: every pixel of the axis is a tap (``index`` is ``arange(in_size)``), with the
            padding folded in analytically (:func:`_dense_taps`); no data-dependent sizes.
            Anti-aliased taps are dense anyway once they would outnumber the pixels (a box larger
            than the image), so they never cost more than the image.

    Returns:
        :class:`Taps`: index (N, out_size, T) long in ``[0, in_size)``; weight (N, out_size, T),
        differentiable w.r.t. ``lo`` and ``hi`` (with ``"zeros"`` the weights of a row sum to the
        fraction of the sample inside the image, otherwise to 1); count (N,), the taps each box
        uses (its taps ``t >= count[n]`` lie strictly outside its filter: weight 0, gradient 0);
        and the weights as a function of the sample positions ``pos`` (N, out_size) and, with
        anti-aliasing, the half-width ``scale`` (N,), with their derivatives ``dpos`` and
        ``dscale``. The tap engine (:mod:`stn.ops._separable`) contracts the incoming gradient
        with those derivatives (one fused pass) instead of forming dL/dweight tap by tap.

    At the kinks (a sample on a pixel centre, a filter edge on one) derivatives are taken from
    the right in ``pos``, as ``floor`` gives them for bilinear taps.
    """
    dtype, device = lo.dtype, lo.device
    lo, hi = lo.clamp(-_MAX_COORD, _MAX_COORD), hi.clamp(-_MAX_COORD, _MAX_COORD)
    step = (hi - lo) / out_size
    centre = torch.arange(out_size, dtype=dtype, device=device) + 0.5
    # Same arithmetic as roi_align(aligned=True): start - 0.5 plus (j + 0.5) bins: pixel-index coords.
    u = (lo - 0.5)[:, None] + centre * step[:, None]  # (N, out)
    half = step.abs().clamp(min=1.0) if antialias or dense else None
    if dense:
        return _dense_taps(u, half, in_size, padding_mode)
    a_max = float(half.detach().max()) if half is not None and half.numel() else 1.0
    if math.ceil(2 * a_max) > in_size:
        return _dense_taps(u, half, in_size, padding_mode)
    zero = torch.zeros((), dtype=dtype, device=device)
    if a_max <= 1.0:
        count = torch.full((lo.shape[0],), 2, dtype=torch.long, device=device)
        k0 = u.detach().floor()
        frac = u - k0
        k = torch.stack([k0, k0 + 1], dim=-1)
        weight = torch.stack([1 - frac, frac], dim=-1)
        dpos = torch.tensor([-1.0, 1.0], dtype=dtype, device=device).expand_as(weight)
        dscale = half = None
    else:
        taps = max(2, math.ceil(2 * a_max))
        # the first tap is > u - a, so tap t >= 2a is more than a past u: outside the triangle
        count = torch.ceil(2 * half.detach()).long().clamp(2, taps)
        a = half[:, None, None]
        ad = a.detach()
        # first tap: smallest k with k - u > -a
        k0 = (u.detach()[..., None] - ad).floor() + 1
        k = k0 + torch.arange(taps, dtype=dtype, device=device)
        d = k - u[..., None]
        dd = d.detach()
        # Triangle 1 - |d| / a on -a < d <= a. At its kinks (d = 0, d = a) derivatives are taken
        # from the right in u (u a hair larger, d a hair smaller), as floor() does for the
        # bilinear taps: at a = 1 both give the same values and the same gradients, also at pixel
        # centres (abs() and clamp() would give a zero gradient there).
        support = (dd > -ad) & (dd <= ad)
        left = dd <= 0
        dist = torch.where(left, -d, d)
        raw = torch.where(support, 1 - dist / a, zero)
        total = raw.sum(-1, keepdim=True)
        weight = raw / total
        with torch.no_grad():
            w = weight.detach()
            draw_du = torch.where(support, torch.where(left, -1.0 / ad, 1.0 / ad), zero)
            draw_da = torch.where(support, dist.detach() / (ad * ad), zero)
            dpos = (draw_du - w * draw_du.sum(-1, keepdim=True)) / total.detach()
            dscale = (draw_da - w * draw_da.sum(-1, keepdim=True)) / total.detach()
    k = k.clamp(-_MAX_TAP, _MAX_TAP).long()
    if padding_mode == "zeros":
        inside = (k >= 0) & (k < in_size)
        weight = torch.where(inside, weight, zero)
        dpos = torch.where(inside, dpos, zero)
        dscale = None if dscale is None else torch.where(inside, dscale, zero)
        k = k.clamp(0, in_size - 1)
    elif padding_mode == "border":
        k = k.clamp(0, in_size - 1)
    elif padding_mode == "reflection":
        # Reflect about the image edges (-0.5 and in_size - 0.5 in pixel-index coordinates):
        # the extended signal has period 2 * in_size and e[-1 - k] = e[k].
        m = torch.remainder(k, 2 * in_size)
        k = torch.where(m >= in_size, 2 * in_size - 1 - m, m)
    else:  # pragma: no cover - validated by the caller
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return Taps(k, weight, count, u, half, dpos, dscale)


def _dense_taps(u: Tensor, half: Tensor, in_size: int, padding_mode: str) -> Taps:
    """Triangle taps on every pixel of the axis: :class:`Taps` with T = ``in_size``.

    The weight of pixel ``p`` sums the triangle ``1 - |k - u| / a`` over every position ``k`` of
    the padded axis that reads ``p`` (``zeros``: only ``k = p``; ``border``: all ``k <= 0`` for
    the first pixel and ``k >= in_size - 1`` for the last; ``reflection``: ``k = p`` and
    ``k = 2 * in_size - 1 - p`` modulo ``2 * in_size``), over the sum of the whole triangle, each
    in closed form (:func:`_triangle_sum`): the cost does not grow with the box.
    """
    n, out = u.shape
    p = torch.arange(in_size, dtype=u.dtype, device=u.device)
    uu, a = u[..., None], half[:, None, None]
    inf = torch.tensor(math.inf, dtype=u.dtype, device=u.device)
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    if padding_mode == "reflection":
        period = 2.0 * in_size
        parts = [
            _triangle_sum(p, period, -inf, inf, uu, a),
            _triangle_sum(period - 1 - p, period, -inf, inf, uu, a),
        ]
        value, d_pos, d_scale = (x + y for x, y in zip(*parts))
    else:
        border = padding_mode == "border"  # the edge pixels also take every k past them
        lo = torch.where(p == 0, -inf, zero) if border else zero
        hi = torch.where(p == in_size - 1, inf, zero) if border else zero
        value, d_pos, d_scale = _triangle_sum(p, 1.0, lo, hi, uu, a)
    total, t_pos, t_scale = _triangle_sum(zero, 1.0, -inf, inf, uu, a)
    weight = value / total
    with torch.no_grad():
        w, td = weight.detach(), total.detach()
        dpos = (d_pos - w * t_pos) / td
        dscale = (d_scale - w * t_scale) / td
    index = torch.arange(in_size, device=u.device).expand(n, out, in_size)
    count = torch.full((n,), in_size, dtype=torch.long, device=u.device)
    return Taps(index, weight, count, u, half, dpos, dscale)


def _triangle_sum(first, stride, j_lo, j_hi, u, a):
    """Sum of the triangle ``1 - |k - u| / a`` over ``k = first + stride * j``, ``j_lo <= j <= j_hi``
    (integers, may be infinite), ``k`` in its support ``(u - a, u + a]``.

    Returns the sum (differentiable w.r.t. ``u`` and ``a``: the counts are constants) and its
    derivatives w.r.t. ``u`` and ``a`` (no graph). Each side of ``u`` is an arithmetic run:
    ``count * (1 - |mean k - u| / a)``, with no cancellation however long the run. ``k = u``
    counts to the left, so kinks take the derivative from the right in ``u``, as elsewhere.
    """
    with torch.no_grad():
        ud, ad = u.detach(), a.detach()
        left_first = torch.floor((ud - ad - first) / stride) + 1  # first j with k > u - a
        left_last = torch.floor((ud - first) / stride)  # last j with k <= u
        right_last = torch.floor((ud + ad - first) / stride)  # last j with k <= u + a
    value = d_pos = d_scale = 0
    for j0, j1, side in ((left_first, left_last, -1.0), (left_last + 1, right_last, 1.0)):
        with torch.no_grad():
            j0, j1 = torch.maximum(j0, j_lo), torch.minimum(j1, j_hi)
            count = (j1 - j0 + 1).clamp(min=0)
            mean = first + stride * torch.where(count > 0, (j0 + j1) / 2, 0)
        dist = side * (mean - u)  # mean |k - u| of the run
        value = value + count * (1 - dist / a)
        d_pos = d_pos + count * side / ad
        d_scale = d_scale + count * dist.detach() / (ad * ad)
    return value, d_pos, d_scale
