"""Separable resampling of axis-aligned boxes: the engine behind :func:`stn.ops.glimpse`.

An axis-aligned crop resampled to ``(h, w)`` is separable::

    out[n, c] = Wy[n] @ images[b_n, c] @ Wx[n]^T        Wy: (h, H), Wx: (w, W)

and both matrices are sparse: output row ``i`` reads ``T`` consecutive source rows ("taps"; two for
bilinear, about ``2 * downscale`` with the anti-aliasing triangle filter). They are kept as tap
lists, an index ``(N, out, T)`` (long) and a weight ``(N, out, T)``, and applied in two passes:

* rows first: ``F.embedding_bag(mode="sum")`` over the images viewed as a ``(B*C*H, W)`` table of
  rows. It reads only the rows each glimpse needs, straight from the batch (no ``images[idx]``
  copy, however many boxes share an image), and its backward (w.r.t. the images and the tap
  weights) is deterministic on CPU and CUDA (sorted segment sums, no atomics).
* then columns: a gather along the last axis of the small ``(N, C*h, W)`` intermediate, with an
  analytic backward (:class:`_ColumnTaps`).

Why not dense matrix products: ``Wy @ img`` costs ``h*H*W`` per channel where the taps cost
``T*h*W``; at 224x224 -> 64x64 the dense product is ~100x more arithmetic and measured slower than
``grid_sample`` on CPU, while the tap passes are several times faster than it on every shape
tried (``benchmarks/glimpse_speed.py``). Dense products only win when ``T`` approaches ``W``
(extreme anti-aliased downscaling), where the column pass switches to ``bmm``.

Padding modes only change where taps land (``grid_sample`` semantics, ``align_corners=False``):
``zeros`` drops out-of-range taps (weight 0; the caller adds ``fill * (1 - sum_y * sum_x)``),
``border`` clamps them to the edge, ``reflection`` reflects them about the image edges.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

PADDING_MODES = ("zeros", "border", "reflection")

# Column pass: gather taps while T * _DENSE_COLUMNS_RATIO < W, else a dense bmm.
_DENSE_COLUMNS_RATIO = 4
# Backward strategies; "auto" picks by device. Tests force the others to cover both on CPU.
#   rows:    "index_add" (CPU: sequential, deterministic) | "embedding_bag" (its autograd: sorted
#            segment sums, deterministic on CUDA too)
#   columns: "scatter" (CPU: scatter_add_, deterministic there) | "dense" (bmm with the dense Wx)
_ROW_GRAD = "auto"
_COLUMN_GRAD = "auto"
# CPU work is done in chunks of boxes whose (C*h, W) intermediates hold about this many elements,
# so temporaries stay in cache and are recycled by the allocator instead of being page-faulted in.
_CHUNK_ELEMS = 1 << 17

_MAX_TAP = float(2**30)  # taps are clamped to this before the cast to long (huge finite boxes)


def axis_taps(
    lo: Tensor, hi: Tensor, out_size: int, in_size: int, *, antialias: bool, padding_mode: str
) -> Tuple[Tensor, Tensor]:
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

    Returns:
        index (N, out_size, T) long in ``[0, in_size)``, weight (N, out_size, T) (differentiable
        w.r.t. ``lo`` and ``hi``). With ``"zeros"`` the weights of a row sum to the fraction of the
        sample inside the image; otherwise to 1.
    """
    dtype, device = lo.dtype, lo.device
    step = (hi - lo) / out_size
    centre = torch.arange(out_size, dtype=dtype, device=device) + 0.5
    # Same arithmetic as roi_align(aligned=True): start - 0.5 plus (j + 0.5) bins: pixel-index coords.
    u = (lo - 0.5)[:, None] + centre * step[:, None]  # (N, out)
    half = step.abs().clamp(min=1.0) if antialias else None
    a_max = float(half.detach().max()) if half is not None and half.numel() else 1.0
    if a_max <= 1.0:
        k0 = u.detach().floor()
        frac = u - k0
        k = torch.stack([k0, k0 + 1], dim=-1)
        weight = torch.stack([1 - frac, frac], dim=-1)
    else:
        taps = max(2, math.ceil(2 * a_max))
        a = half[:, None, None]
        # first tap: smallest k with |k - u| < a
        k0 = (u.detach()[..., None] - a.detach()).floor() + 1
        k = k0 + torch.arange(taps, dtype=dtype, device=device)
        raw = (1 - (k - u[..., None]).abs() / a).clamp(min=0)
        weight = raw / raw.sum(-1, keepdim=True)
    k = k.clamp(-_MAX_TAP, _MAX_TAP).long()
    if padding_mode == "zeros":
        inside = (k >= 0) & (k < in_size)
        weight = torch.where(inside, weight, torch.zeros((), dtype=dtype, device=device))
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
    return k, weight


def _dense_columns(kx: Tensor, wx: Tensor, in_size: int) -> Tensor:
    """Dense (n, w, W) matrix of column taps (n, T, w); duplicate taps (border, reflection) add up.

    One scatter_add per tap: within one call every row receives one entry, so no two writes
    collide, and the result is deterministic on every device.
    """
    n, t, w = kx.shape
    dense = wx.new_zeros(n, w, in_size)
    for i in range(t):
        dense.scatter_add_(2, kx[:, i, :, None], wx[:, i, :, None])
    return dense


def _chunks(n: int, per_item: int, device: torch.device):
    """Slices of range(n) of about _CHUNK_ELEMS / per_item items each (one slice off CPU)."""
    if device.type != "cpu":
        yield slice(0, n)
        return
    step = max(1, _CHUNK_ELEMS // max(1, per_item))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


class _Separable(torch.autograd.Function):
    """out[n, (c, i), j] = sum_{t, s} wy[n, i, t] wx[n, s, j] table[bags[(n, c, i), t], kx[n, s, j]].

    table: (B*C*H, W) image rows; bags: (N*C*h, Ty) long rows of ``table``; wy: (N, h, Ty);
    kx: (N, Tx, w) long; wx: (N, Tx, w). Returns (N, C*h, w). Row pass with ``embedding_bag``,
    column pass with gathers (or a dense bmm for many taps); backward analytic, in chunks of boxes.
    """

    @staticmethod
    def forward(ctx, table: Tensor, bags: Tensor, wy: Tensor, kx: Tensor, wx: Tensor, channels: int):  # type: ignore[override]
        n, h, ty = wy.shape
        tx, w = kx.shape[1], kx.shape[2]
        w_in = table.shape[1]
        m = channels * h
        dense = tx * _DENSE_COLUMNS_RATIO >= w_in
        psw = wy[:, None].expand(n, channels, h, ty).reshape(n * m, ty)
        out = table.new_empty(n, m, w)
        for sl in _chunks(n, m * w_in, table.device):
            rows = F.embedding_bag(
                bags[sl.start * m : sl.stop * m], table, per_sample_weights=psw[sl.start * m : sl.stop * m], mode="sum"
            ).view(-1, m, w_in)
            _columns(rows, kx[sl], wx[sl], dense, out=out[sl])
        ctx.save_for_backward(table, bags, wy, kx, wx)
        ctx.channels = channels
        ctx.dense = dense
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        table, bags, wy, kx, wx = ctx.saved_tensors
        channels, dense = ctx.channels, ctx.dense
        n, h, ty = wy.shape
        tx, w = kx.shape[1], kx.shape[2]
        w_in = table.shape[1]
        m = channels * h
        cpu = table.device.type == "cpu"
        row_grad = _ROW_GRAD if _ROW_GRAD != "auto" else ("index_add" if cpu else "embedding_bag")
        col_grad = _COLUMN_GRAD if _COLUMN_GRAD != "auto" else ("scatter" if cpu else "dense")
        need_table, need_wy, need_wx = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[4]
        grad = grad.contiguous()
        psw = wy[:, None].expand(n, channels, h, ty).reshape(n * m, ty)
        grad_table = torch.zeros_like(table) if need_table else None
        grad_psw = table.new_empty(n * m, ty) if need_wy else None
        grad_wx = table.new_empty(n, tx, w) if need_wx else None
        for sl in _chunks(n, m * w_in, table.device):
            rsl = slice(sl.start * m, sl.stop * m)
            g, kxc, wxc = grad[sl], kx[sl], wx[sl]
            bags_c, psw_c = bags[rsl], psw[rsl]
            nc = g.shape[0]
            if need_wx:
                rows = F.embedding_bag(bags_c, table, per_sample_weights=psw_c, mode="sum").view(nc, m, w_in)
                if dense:
                    # dL/dWx = G^T rows, read at the taps
                    full = torch.bmm(g.transpose(1, 2), rows)  # (nc, w, W)
                    grad_wx[sl] = full.gather(2, kxc.transpose(1, 2)).transpose(1, 2)
                else:
                    for i in range(tx):
                        tap = rows.gather(2, kxc[:, None, i].expand(nc, m, w))
                        grad_wx[sl, i] = torch.linalg.vecdot(g.transpose(1, 2), tap.transpose(1, 2))
            if not (need_table or need_wy):
                continue
            # Column pass backward: v = G @ Wx, (nc, m, W)
            if dense or col_grad == "dense":
                v = torch.bmm(g, _dense_columns(kxc, wxc, w_in))
            else:
                v = g.new_zeros(nc, m, w_in)
                for i in range(tx):
                    v.scatter_add_(2, kxc[:, None, i].expand(nc, m, w), g * wxc[:, None, i])
            v = v.view(nc * m, w_in)
            if row_grad == "embedding_bag":
                leaves = []
                with torch.enable_grad():
                    tab = table.detach().requires_grad_(need_table)
                    pw = psw_c.detach().requires_grad_(need_wy)
                    rows = F.embedding_bag(bags_c, tab, per_sample_weights=pw, mode="sum")
                    leaves = [x for x in (tab, pw) if x.requires_grad]
                    grads = list(torch.autograd.grad(rows, leaves, v))
                if need_table:
                    grad_table += grads.pop(0)
                if need_wy:
                    grad_psw[rsl] = grads.pop(0)
                continue
            for i in range(ty):
                index = bags_c[:, i]
                if need_wy:
                    grad_psw[rsl, i] = torch.linalg.vecdot(v, table.index_select(0, index))
                if need_table:
                    grad_table.index_add_(0, index, v * psw_c[:, i : i + 1])
        grad_wy = grad_psw.view(n, channels, h, ty).sum(1) if need_wy else None
        return grad_table, None, grad_wy, None, grad_wx, None


def _columns(rows: Tensor, kx: Tensor, wx: Tensor, dense: bool, out: Tensor) -> Tensor:
    """Column pass into ``out`` (n, m, w): out[n, m, j] = sum_t wx[n, t, j] rows[n, m, kx[n, t, j]]."""
    n, m, w_in = rows.shape
    t, w = kx.shape[1], kx.shape[2]
    if dense:
        return torch.bmm(rows, _dense_columns(kx, wx, w_in).transpose(1, 2), out=out)
    torch.gather(rows, 2, kx[:, None, 0].expand(n, m, w), out=out).mul_(wx[:, None, 0])
    for i in range(1, t):
        out.addcmul_(rows.gather(2, kx[:, None, i].expand(n, m, w)), wx[:, None, i])
    return out


def separable_sample(images: Tensor, idx: Tensor, ky: Tensor, wy: Tensor, kx: Tensor, wx: Tensor) -> Tensor:
    """Apply row and column taps: (N, C, h, w) glimpses of ``images[idx]``.

    Args:
        images: (B, C, H, W).
        idx: (N,) long, image of each glimpse.
        ky, wy: (N, h, Ty) row taps (index into H, weight).
        kx, wx: (N, w, Tx) column taps (index into W, weight).
    """
    b, c, h_in, w_in = images.shape
    n, h, t = ky.shape
    w = kx.shape[1]
    table = images.reshape(b * c * h_in, w_in)
    # Row (n, c, i) of the intermediate sums rows (idx[n], c, ky[n, i, :]) of the image batch.
    base = (idx * (c * h_in))[:, None, None, None] + (torch.arange(c, device=idx.device) * h_in)[:, None, None]
    bags = (base + ky[:, None]).reshape(n * c * h, t)
    # (N, T, w) contiguous taps: per-tap slices broadcast without strides in the column pass.
    kx_t = kx.transpose(1, 2).contiguous()
    wx_t = wx.transpose(1, 2).contiguous()
    return _Separable.apply(table, bags, wy.contiguous(), kx_t, wx_t, c).view(n, c, h, w)
