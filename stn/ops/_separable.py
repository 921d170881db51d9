"""Separable resampling of axis-aligned boxes: the engine behind :func:`stn.ops.glimpse`.

An axis-aligned crop resampled to ``(h, w)`` is separable::

    out[n, c] = Wy[n] @ images[idx[n], c] @ Wx[n]^T        Wy: (h, H), Wx: (w, W)

and both matrices are sparse: output row ``i`` reads ``T`` consecutive source rows ("taps": two
for bilinear, about ``2 * downscale`` for the anti-aliasing triangle filter). :func:`axis_taps`
builds them as tap lists, an index (N, out, T) long and a weight (N, out, T), together with the
sample positions (and filter half-widths) the weights are functions of and the derivatives of the
weights w.r.t. them; :class:`_Separable` applies them with an analytic backward:

* rows first, ``F.embedding_bag(mode="sum")`` over the images viewed as a (B*C*H, W) table of
  rows: it reads only the rows each glimpse needs, straight from the batch (no ``images[idx]``
  copy however many boxes share an image);
* then columns, gathers along the last axis of the (N, C*h, W) intermediate, or a dense ``bmm``
  when the taps are many compared with W (anti-aliasing of small images).

Dense products for the rows as well (``Wy @ img``) were measured slower on every benchmark shape:
they cost ``H`` multiply-adds per intermediate value where the taps cost ``T`` memory passes, and
batched small matmuls run far from peak. ``affine_grid`` + ``grid_sample`` reads 4 pixels per
output, these two passes ``2 * (W/w) + 2`` per output, but in long contiguous runs.

Backward: w.r.t. the images, ``index_add_`` of the weighted rows (CPU; sequential, hence
deterministic) or the autograd of ``embedding_bag`` (other devices: sorted segment sums, no
atomics). W.r.t. the row sample positions (and half-widths): ``sum_t dL/dw_t * dw_t/dpos`` with
``dL/dw_t`` the dot product of the incoming gradient with tapped row ``t``, which is one more
``embedding_bag`` with ``dw/dpos`` as weights and one dot product, whatever the number of taps;
autograd takes it from there to the boxes. W.r.t. the column weights: dot products of the
incoming gradient with the tapped columns; autograd differentiates those weights. The column pass
backward is a ``scatter_add_`` on CPU and a ``bmm`` with the dense ``Wx`` elsewhere (CUDA's
``scatter_add_`` uses atomics). Dense matrices are built by one ``scatter_add_`` per tap, which
never writes one element twice within a call. :func:`separable_sample` takes arbitrary taps
(weights differentiated tap by tap), for :func:`stn.ops.paste`.

On CPU, work runs in chunks of boxes so that temporaries stay in cache (the allocator returns big
blocks to the OS and page-faults them back in on every call, which cost more than the compute),
and with anti-aliasing the boxes are sorted by how many taps they need, each chunk running only
those.

Padding modes only change where taps land (``grid_sample`` semantics, ``align_corners=False``):
``zeros`` drops out-of-range taps (weight 0; :func:`stn.ops.glimpse` adds
``fill * (1 - sum_y * sum_x)``), ``border`` clamps them to the edge, ``reflection`` reflects them
about the image edges.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import PADDING_MODES

# Column pass: gathered taps while T * _DENSE_RATIO < W, else a bmm with the dense Wx. Measured on
# CPU: the bmm costs ~W multiply-adds per output, the taps ~T memory-bound passes (forward and
# backward together); e.g. 2 taps of a 60-wide image: gathers, 5 taps or a 32-wide image: bmm.
_DENSE_RATIO = 24
# Backward strategies; "auto" picks by device. Tests force the others to cover both on CPU.
#   rows:    "index_add" (CPU: sequential, deterministic) | "embedding_bag" (its autograd: sorted
#            segment sums, deterministic on CUDA too)
#   columns: "scatter" (CPU: scatter_add_, deterministic there) | "dense" (bmm with the dense Wx)
_ROW_GRAD = "auto"
_COLUMN_GRAD = "auto"
# CPU work is done in chunks of boxes whose (C*h, W) intermediates hold about this many elements,
# so temporaries stay in cache and are recycled by the allocator instead of being page-faulted in.
_CHUNK_ELEMS = 1 << 18  # per intra-op thread (up to 4): each thread's share stays cache-sized
_CPU_CHUNKS = True  # False: one chunk with all taps, as on CUDA (tests)

_MAX_TAP = float(2**30)  # taps are clamped to this before the cast to long (huge finite boxes)


class Taps(NamedTuple):
    """Taps of one axis for N boxes (see :func:`axis_taps`)."""

    index: Tensor  # (N, out, T) long, in [0, in_size)
    weight: Tensor  # (N, out, T), differentiable w.r.t. the box edges
    count: Tensor  # (N,) long: taps t >= count[n] are outside box n's filter (weight and gradient 0)
    pos: Tensor  # (N, out) sample positions in pixel-index coordinates, differentiable
    scale: Optional[Tensor]  # (N,) triangle half-width a (anti-aliasing), differentiable, or None
    dpos: Tensor  # (N, out, T) d weight / d pos (no graph)
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
        ``dscale``. :class:`_Separable` contracts the incoming gradient with those derivatives
        (one fused pass) instead of forming dL/dweight tap by tap.

    At the kinks (a sample on a pixel centre, a filter edge on one) derivatives are taken from
    the right in ``pos``, as ``floor`` gives them for bilinear taps.
    """
    dtype, device = lo.dtype, lo.device
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


def _plan(cy: Tensor, cx: Tensor, ty: int, tx: int, per_box: int):
    """Chunks of boxes: a list of (selection, Ty, Tx); selection is a slice or a (k,) index tensor.

    cy, cx: (N,) taps each box uses along y and x (:func:`axis_taps`), ty, tx: their maxima.
    Off CPU: one chunk with every box and every tap (no host synchronization). On CPU: chunks of
    about ``_CHUNK_ELEMS * threads / per_box`` boxes. With more than two taps (anti-aliasing),
    boxes are sorted by the number of taps they use and each chunk runs only the taps its boxes
    need: small boxes do not pay for the largest one.
    """
    n = cy.shape[0]
    if cy.device.type != "cpu" or not _CPU_CHUNKS:
        return [(slice(0, n), ty, tx)]
    step = max(1, _CHUNK_ELEMS * min(4, torch.get_num_threads()) // max(1, per_box))
    if ty <= 2 and tx <= 2:
        return [(slice(s, min(n, s + step)), ty, tx) for s in range(0, n, step)]
    order = torch.argsort(cy * (tx + 1) + cx, stable=True)
    sorted_y, sorted_x = cy[order].tolist(), cx[order].tolist()
    return [
        (order[s : s + step], max(sorted_y[s : s + step]), max(sorted_x[s : s + step]))
        for s in range(0, n, step)
    ]


def _take(x: Tensor, sel) -> Tensor:
    return x[sel] if isinstance(sel, slice) else x.index_select(0, sel)


class _Separable(torch.autograd.Function):
    """out[n, (c, i), j] = sum_{t, s} wy[n, i, t] wx[n, s, j] table[rows[n, c, i, t], kx[n, s, j]].

    table: (B*C*H, W) image rows; rows: (N, C, h, Ty) long rows of ``table``; wy: (N, h, Ty);
    dy_pos, dy_scale: (N, h, Ty) derivatives of wy w.r.t. the inputs y_pos (N, h) and y_scale
    (N,), or None; kx: (N, Tx, w) long; wx: (N, Tx, w). Returns (N, C*h, w). Gradients flow to
    table, wy (when it requires grad: one gather and dot product per tap), y_pos and y_scale (one
    fused pass each) and wx. Row pass with ``embedding_bag``, column pass with gathers (or a dense
    bmm for many taps); analytic backward, on CPU in chunks of boxes.
    """

    @staticmethod
    def forward(ctx, table, rows, wy, dy_pos, dy_scale, y_pos, y_scale, kx, wx, plan):  # type: ignore[override]
        n, channels, h, _ = rows.shape
        w = kx.shape[2]
        w_in = table.shape[1]
        m = channels * h
        out = table.new_empty(n, m, w)
        # The column weights' gradient reads the row pass's result: keep it rather than redo it.
        ctx.inters = [] if ctx.needs_input_grad[8] else None
        for sel, ty, tx in plan:
            bags, psw = _row_taps(rows, wy, sel, ty)
            inter = F.embedding_bag(bags, table, per_sample_weights=psw, mode="sum").view(-1, m, w_in)
            if ctx.inters is not None:
                ctx.inters.append(inter)
            kxc, wxc = _take(kx, sel)[:, :tx], _take(wx, sel)[:, :tx]
            if isinstance(sel, slice):
                _columns(inter, kxc, wxc, out=out[sel])
            else:
                out.index_copy_(0, sel, _columns(inter, kxc, wxc))
        ctx.save_for_backward(table, rows, wy, dy_pos, dy_scale, kx, wx)
        ctx.plan = plan
        ctx.pos_dtype = None if y_pos is None else y_pos.dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        table, rows, wy, dy_pos, dy_scale, kx, wx = ctx.saved_tensors
        n, channels, h, _ = rows.shape
        w = kx.shape[2]
        w_in = table.shape[1]
        m = channels * h
        cpu = table.device.type == "cpu"
        row_grad = _ROW_GRAD if _ROW_GRAD != "auto" else ("index_add" if cpu else "embedding_bag")
        col_grad = _COLUMN_GRAD if _COLUMN_GRAD != "auto" else ("scatter" if cpu else "dense")
        need_table, need_wy = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        need_pos, need_scale, need_wx = (
            ctx.needs_input_grad[5],
            ctx.needs_input_grad[6],
            ctx.needs_input_grad[8],
        )
        grad = grad.contiguous()
        grad_table = torch.zeros_like(table) if need_table else None
        grad_wy = torch.zeros_like(wy) if need_wy else None
        grad_pos = grad.new_zeros(n, h) if need_pos else None
        grad_scale = grad.new_zeros(n) if need_scale else None
        grad_wx = torch.zeros_like(wx) if need_wx else None
        work = vwork = None
        inters = ctx.inters  # not cleared: backward may run again on a retained graph
        for chunk, (sel, ty, tx) in enumerate(ctx.plan):
            g = _take(grad, sel)
            kxc, wxc = _take(kx, sel)[:, :tx], _take(wx, sel)[:, :tx]
            bags, psw = _row_taps(rows, wy, sel, ty)
            nc = g.shape[0]
            dense = tx * _DENSE_RATIO >= w_in
            if need_wx:
                inter = inters[chunk]
                if dense:
                    # dL/dWx = G^T inter, read at the taps
                    full = torch.bmm(g.transpose(1, 2), inter)  # (nc, w, W)
                    gwx = full.gather(2, kxc.transpose(1, 2)).transpose(1, 2)
                else:
                    gwx = torch.stack(
                        [
                            torch.linalg.vecdot(g, inter.gather(2, kxc[:, None, i].expand(nc, m, w)), dim=1)
                            for i in range(tx)
                        ],
                        dim=1,
                    )
                _put(grad_wx, sel, gwx, tx)
            if not (need_table or need_wy or need_pos or need_scale):
                continue
            # Column pass backward: v = G @ Wx, (nc, m, W)
            if dense or col_grad == "dense":
                v = torch.bmm(g, _dense_columns(kxc, wxc, w_in))
            else:
                if vwork is None or vwork.numel() < nc * m * w_in:
                    vwork = g.new_empty(nc * m * w_in)
                v = vwork[: nc * m * w_in].view(nc, m, w_in).zero_()
                for i in range(tx):
                    v.scatter_add_(2, kxc[:, None, i].expand(nc, m, w), g * wxc[:, None, i])
            v = v.view(nc * m, w_in)
            # dL/dpos[row] = sum_t dL/dwy[row, t] dwy[row, t]/dpos, with dL/dwy[row, t] = <v[row],
            # tapped image row t>: the sum over taps is one embedding_bag with the derivatives as
            # weights (likewise for the scale), instead of a gather and a dot product per tap.
            wanted = ((dy_pos, need_pos), (dy_scale, need_scale))
            derivs = [(d, _row_taps(rows, d, sel, ty)[1]) for d, need in wanted if need]
            gpsw = None  # dL/dwy, (nc*m, ty), only when wy itself requires grad
            if row_grad == "embedding_bag":
                with torch.enable_grad():
                    tab = table.detach().requires_grad_(need_table)
                    pw = psw.detach().requires_grad_(bool(derivs) or need_wy)
                    inter = F.embedding_bag(bags, tab, per_sample_weights=pw, mode="sum")
                    grads = list(torch.autograd.grad(inter, [x for x in (tab, pw) if x.requires_grad], v))
                if need_table:
                    grad_table += grads.pop(0)
                contractions = [(grads[0] * dpsw).sum(-1) for _, dpsw in derivs] if derivs else []
                gpsw = grads[0] if need_wy else None
            else:
                contractions = [
                    torch.linalg.vecdot(v, F.embedding_bag(bags, table, per_sample_weights=dpsw, mode="sum"))
                    for _, dpsw in derivs
                ]
                r = v.shape[0]
                if (need_table or need_wy) and (work is None or work.shape[0] < r):
                    work = table.new_empty(r, w_in)
                if need_wy:
                    gpsw = table.new_empty(ty, r)
                    for i in range(ty):
                        torch.index_select(table, 0, bags[:, i], out=work[:r])
                        torch.linalg.vecdot(v, work[:r], out=gpsw[i])
                    gpsw = gpsw.t()
                if need_table:
                    buf = work[:r]
                    for i in range(ty):
                        torch.mul(v, psw[:, i : i + 1], out=buf)
                        grad_table.index_add_(0, bags[:, i], buf)
            if need_wy:
                _put(grad_wy, sel, gpsw.reshape(nc, channels, h, ty).sum(1), (slice(None), slice(0, ty)))
            contractions = [c.view(nc, channels, h).sum(1) for c in contractions]  # (nc, h)
            if need_pos:
                _put(grad_pos, sel, contractions.pop(0))
            if need_scale:
                _put(grad_scale, sel, contractions.pop(0).sum(1))
        if need_pos:
            grad_pos = grad_pos.to(ctx.pos_dtype)
        if need_scale:
            grad_scale = grad_scale.to(ctx.pos_dtype)
        return grad_table, None, grad_wy, None, None, grad_pos, grad_scale, None, grad_wx, None


def _row_taps(rows: Tensor, wy: Tensor, sel, ty: int):
    """Bags (k*C*h, ty) and their weights for the boxes ``sel``, first ``ty`` taps."""
    r = _take(rows, sel)[..., :ty]
    nc, c, h, _ = r.shape
    wyc = _take(wy, sel)[..., :ty]
    return r.reshape(nc * c * h, ty), wyc[:, None].expand(nc, c, h, ty).reshape(nc * c * h, ty)


def _put(dst: Tensor, sel, val: Tensor, rest=()) -> None:
    """dst[sel, *rest] = val, with sel a slice or unique indices; rest: an int or tuple of slices."""
    if isinstance(rest, int):
        rest = (slice(0, rest),)
    if isinstance(sel, slice):
        dst[(sel, *rest)].copy_(val)
    else:
        dst[(sel, *rest)] = val


def _columns(rows: Tensor, kx: Tensor, wx: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """Column pass (n, m, w): out[n, m, j] = sum_t wx[n, t, j] rows[n, m, kx[n, t, j]]."""
    n, m, w_in = rows.shape
    t, w = kx.shape[1], kx.shape[2]
    if out is None:
        out = rows.new_empty(n, m, w)
    if t * _DENSE_RATIO >= w_in:
        return torch.bmm(rows, _dense_columns(kx, wx, w_in).transpose(1, 2), out=out)
    torch.gather(rows, 2, kx[:, None, 0].expand(n, m, w), out=out).mul_(wx[:, None, 0])
    for i in range(1, t):
        out.addcmul_(rows.gather(2, kx[:, None, i].expand(n, m, w)), wx[:, None, i])
    return out


def sample_taps(images: Tensor, idx: Tensor, y: Taps, x: Taps) -> Tensor:
    """Apply row and column taps: (N, C, h, w) glimpses of ``images[idx]``.

    Args:
        images: (B, C, H, W).
        idx: (N,) long, image of each glimpse.
        y, x: :class:`Taps` of the rows (h outputs, index into H) and columns (w, into W).
    Gradients flow to ``images``, to ``y.pos`` and ``y.scale`` (through the derivatives ``dpos``
    and ``dscale``) and to ``x.weight``.
    """
    dtype = images.dtype
    return _apply(
        images,
        idx,
        y.index,
        y.weight.detach().to(dtype),
        y.count,
        x.index,
        x.weight.to(dtype),
        x.count,
        (y.dpos.to(dtype), None if y.dscale is None else y.dscale.to(dtype), y.pos, y.scale),
    )


def separable_sample(images: Tensor, idx: Tensor, ky: Tensor, wy: Tensor, kx: Tensor, wx: Tensor) -> Tensor:
    """Apply arbitrary row and column taps: (N, C, h, w) samples of ``images[idx]``.

    Args:
        images: (B, C, H, W).
        idx: (N,) long, image of each output.
        ky, wy: (N, h, Ty) row taps: index into H (long) and weight.
        kx, wx: (N, w, Tx) column taps: index into W (long) and weight.
    Gradients flow to ``images``, ``wy`` and ``wx`` (deterministic backward). Every tap is used.
    """
    n = idx.shape[0]
    full_y = torch.full((n,), ky.shape[2], dtype=torch.long, device=ky.device)
    full_x = torch.full((n,), kx.shape[2], dtype=torch.long, device=kx.device)
    return _apply(images, idx, ky, wy, full_y, kx, wx, full_x, (None, None, None, None))


def _apply(images, idx, ky, wy, cy, kx, wx, cx, y_params) -> Tensor:
    b, c, h_in, w_in = images.shape
    n, h, t = ky.shape
    w, tx = kx.shape[1], kx.shape[2]
    table = images.reshape(b * c * h_in, w_in)
    # Tap t of row (n, c, i) of the intermediate is row (idx[n], c, ky[n, i, t]) of the image batch.
    base = (idx * (c * h_in))[:, None, None, None] + (torch.arange(c, device=idx.device) * h_in)[
        :, None, None
    ]
    rows = base + ky[:, None]  # (N, C, h, Ty)
    dy_pos, dy_scale, y_pos, y_scale = y_params
    # (N, T, w) contiguous taps: per-tap slices broadcast without strides in the column pass.
    kx = kx.transpose(1, 2).contiguous()
    wx = wx.transpose(1, 2).contiguous()
    plan = _plan(cy, cx, t, tx, c * h * w_in)
    out = _Separable.apply(table, rows, wy.contiguous(), dy_pos, dy_scale, y_pos, y_scale, kx, wx, plan)
    return out.view(n, c, h, w)
