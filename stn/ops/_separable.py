"""The tap engine behind anti-aliased :func:`stn.ops.glimpse` and :func:`stn.ops.paste`.

Applies row and column taps (:mod:`stn.ops._taps`): ``out[n, c] = Wy[n] @ images[idx[n], c] @
Wx[n]^T`` with the sparse ``Wy``, ``Wx`` kept as tap lists, and an analytic backward:

* rows first, ``F.embedding_bag(mode="sum")`` over the images viewed as a (B*C*H, W) table of
  rows: it reads only the rows each glimpse needs, straight from the batch (no ``images[idx]``
  copy however many boxes share an image);
* then columns, gathers along the last axis of the (N, C*h, W) intermediate, or a dense ``bmm``
  when the taps are many compared with W (anti-aliasing of small images).

Backward: w.r.t. the images, ``index_add_`` of the weighted rows (CPU; sequential, hence
deterministic) or the autograd of ``embedding_bag`` (other devices: sorted segment sums, no
atomics). W.r.t. the row sample positions (and half-widths): ``sum_t dL/dw_t * dw_t/dpos`` with
``dL/dw_t`` the dot product of the incoming gradient with tapped row ``t``: one more
``embedding_bag`` with ``dw/dpos`` as weights and one dot product, whatever the number of taps;
autograd takes it from there to the boxes. W.r.t. the column weights: dot products of the
incoming gradient with the tapped columns. The column pass backward is a ``scatter_add_`` on CPU
and a ``bmm`` with the dense ``Wx`` elsewhere (CUDA's ``scatter_add_`` uses atomics).

On CPU, work runs in chunks of boxes so that temporaries stay in cache (the allocator returns big
blocks to the OS and page-faults them back in on every call), and with anti-aliasing the boxes
are sorted by how many taps they need, each chunk running only those.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._taps import Taps

__all__ = ["sample_taps", "separable_sample"]

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
    need: small boxes do not pay for the largest one (unless all boxes use as many: then the
    chunks are slices, with no gathering of the boxes' taps and outputs).
    """
    n = cy.shape[0]
    if cy.device.type != "cpu" or not _CPU_CHUNKS:
        return [(slice(0, n), ty, tx)]
    step = max(1, _CHUNK_ELEMS * min(4, torch.get_num_threads()) // max(1, per_box))
    if ty <= 2 and tx <= 2 or n == 0 or bool(((cy == cy[0]) & (cx == cx[0])).all()):
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
        # The column weights' gradient reads the row pass's result: keep it rather than redo it;
        # likewise the dense column matrices (their zeroing cost as much as a product).
        ctx.inters = [] if ctx.needs_input_grad[8] else None
        ctx.dense = []
        for sel, ty, tx in plan:
            bags, psw = _row_taps(rows, wy, sel, ty)
            inter = F.embedding_bag(bags, table, per_sample_weights=psw, mode="sum").view(-1, m, w_in)
            if ctx.inters is not None:
                ctx.inters.append(inter)
            kxc, wxc = _take(kx, sel)[:, :tx], _take(wx, sel)[:, :tx]
            dense = _dense_columns(kxc, wxc, w_in) if tx * _DENSE_RATIO >= w_in else None
            ctx.dense.append(dense)
            if isinstance(sel, slice):
                _columns(inter, kxc, wxc, dense, out=out[sel])
            else:
                out.index_copy_(0, sel, _columns(inter, kxc, wxc, dense))
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
                v = torch.bmm(g, ctx.dense[chunk] if dense else _dense_columns(kxc, wxc, w_in))
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
                # in place: a fresh product of that size cost more in page faults than the product
                contractions = [
                    F.embedding_bag(bags, table, per_sample_weights=dpsw, mode="sum").mul_(v).sum(-1)
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


def _columns(
    rows: Tensor, kx: Tensor, wx: Tensor, dense: Optional[Tensor], out: Optional[Tensor] = None
) -> Tensor:
    """Column pass (n, m, w): out[n, m, j] = sum_t wx[n, t, j] rows[n, m, kx[n, t, j]]; by a
    product with ``dense`` (:func:`_dense_columns` of the taps) when given."""
    n, m, w_in = rows.shape
    t, w = kx.shape[1], kx.shape[2]
    if out is None:
        out = rows.new_empty(n, m, w)
    if dense is not None:
        return torch.bmm(rows, dense.transpose(1, 2), out=out)
    torch.gather(rows, 2, kx[:, None, 0].expand(n, m, w), out=out).mul_(wx[:, None, 0])
    for i in range(1, t):
        out.addcmul_(rows.gather(2, kx[:, None, i].expand(n, m, w)), wx[:, None, i])
    return out


def sample_taps(images: Tensor, idx: Tensor, y: Taps, x: Taps) -> Tensor:
    """Apply the taps of :func:`stn.ops._taps.axis_taps`: (N, C, h, w) glimpses of ``images[idx]``.

    Args:
        images: (B, C, H, W).
        idx: (N,) long, image of each glimpse.
        y, x: :class:`Taps` of the rows (h outputs, index into H) and columns (w, into W).
    Gradients flow to ``images``, to ``y.pos`` and ``y.scale`` (through the derivatives ``dpos``
    and ``dscale``) and to ``x.weight``.
    """
    dtype = images.dtype
    dscale = None if y.dscale is None else y.dscale.to(dtype)
    rows = y._replace(weight=y.weight.detach().to(dtype), dpos=y.dpos.to(dtype), dscale=dscale)
    return _resample(images, idx, rows, x._replace(weight=x.weight.to(dtype)))


def separable_sample(images: Tensor, idx: Tensor, ky: Tensor, wy: Tensor, kx: Tensor, wx: Tensor) -> Tensor:
    """Apply arbitrary row and column taps: (N, C, h, w) samples of ``images[idx]``.

    Args:
        images: (B, C, H, W).
        idx: (N,) long, image of each output.
        ky, wy: (N, h, Ty) row taps: index into H (long) and weight.
        kx, wx: (N, w, Tx) column taps: index into W (long) and weight.
    Gradients flow to ``images``, ``wy`` and ``wx`` (deterministic backward). Every tap is used.
    """

    def every_tap(k: Tensor, w: Tensor) -> Taps:
        count = torch.full((k.shape[0],), k.shape[2], dtype=torch.long, device=k.device)
        return Taps(k, w, count, None, None, None, None)

    return _resample(images, idx, every_tap(ky, wy), every_tap(kx, wx))


def _resample(images: Tensor, idx: Tensor, y: Taps, x: Taps) -> Tensor:
    """(N, C, h, w) = Wy @ images[idx] @ Wx^T from row taps ``y`` and column taps ``x``.

    Gradients to ``images``, ``y.weight`` (if it requires grad), ``y.pos`` and ``y.scale``
    (through ``y.dpos`` and ``y.dscale``, when given) and ``x.weight``.
    """
    b, c, h_in, w_in = images.shape
    n, h, t = y.index.shape
    w, tx = x.index.shape[1], x.index.shape[2]
    table = images.reshape(b * c * h_in, w_in)
    # Tap t of row (n, c, i) of the intermediate is row (idx[n], c, ky[n, i, t]) of the image batch.
    channel_rows = (torch.arange(c, device=idx.device) * h_in)[:, None, None]
    rows = (idx * (c * h_in))[:, None, None, None] + channel_rows + y.index[:, None]  # (N, C, h, Ty)
    # (N, T, w) contiguous taps: per-tap slices broadcast without strides in the column pass.
    kx = x.index.transpose(1, 2).contiguous()
    wx = x.weight.transpose(1, 2).contiguous()
    plan = _plan(y.count, x.count, t, tx, c * h * w_in)
    wy = y.weight.contiguous()
    out = _Separable.apply(table, rows, wy, y.dpos, y.dscale, y.pos, y.scale, kx, wx, plan)
    return out.view(n, c, h, w)
