"""Canvas generators: digits placed at random integer positions, with clutter cut from other digits.

Translated MNIST (Mnih et al. 2014, sec. 4.1) and its cluttered variant; see
:mod:`stn.data.synthetic` for the recipes. Placement is an exact integer copy (one ``scatter`` into
the canvas, no resampling blur); clutter is one advanced-indexing gather of all pieces and one
``scatter_reduce(amax)``. True boxes are ``(x1, y1, x2, y2)`` in canvas pixels, from batched
reductions (``amax`` over rows and columns, first and last nonzero by ``argmax``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from stn.ops._checks import check_size

DIGIT_SIZE = 28


@dataclass
class Composition:
    """A batch of generated canvases.

    Attributes:
        image: (B, C, H, W) uint8 canvases.
        box: (B, 4) float32 true boxes ``(x1, y1, x2, y2)`` in canvas pixels.
        params: the sampled parameters, each with a leading batch dimension (see the functions).
    """

    image: Tensor
    box: Tensor
    params: Dict[str, Tensor] = field(default_factory=dict)


# -- randomness and checks shared with the distortions ------------------------------------------
def uniform_ints(generator: torch.Generator, low: int, high: int, size) -> Tensor:
    """Integers uniform in [low, high] (inclusive) on the generator's device."""
    return torch.randint(low, high + 1, size, generator=generator, device=generator.device)


def uniform(generator: torch.Generator, size, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Floats uniform in [low, high) on the generator's device."""
    u = torch.rand(size, generator=generator, device=generator.device)
    return u * (high - low) + low if (low, high) != (0.0, 1.0) else u


def uniform_positions(generator: torch.Generator, max_x: int, max_y: int, size) -> Tensor:
    """Integer ``(x, y)`` uniform in ``[0, max_x] x [0, max_y]``: shape ``(*size, 2)``, long."""
    return torch.stack([uniform_ints(generator, 0, max_x, size), uniform_ints(generator, 0, max_y, size)], -1)


def check_digits(digits: Tensor) -> None:
    """Require a (B, C, h, w) tensor of digit images."""
    if not isinstance(digits, Tensor) or digits.dim() != 4:
        raise ValueError(
            f"digits must be a (B, C, h, w) tensor, got {getattr(digits, 'shape', type(digits))}"
        )


def tight_boxes(mask: Tensor) -> Tensor:
    """Tight boxes around the nonzero pixels of each mask.

    Args:
        mask: (B, H, W) or (B, C, H, W) (any channel counts); bool or numeric (nonzero = on).

    Returns:
        (B, 4) float32 ``(x1, y1, x2, y2)``: the on-pixels span columns ``x1 .. x2 - 1`` and rows
        ``y1 .. y2 - 1`` (pixel i spans [i, i + 1)). All zeros for an empty mask.

    Example:
        >>> m = torch.zeros(1, 5, 6, dtype=torch.bool)
        >>> m[0, 1:3, 2:5] = True
        >>> tight_boxes(m)
        tensor([[2., 1., 5., 3.]])
    """
    if mask.dim() not in (3, 4):
        raise ValueError(f"mask must be (B, H, W) or (B, C, H, W), got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        mask = mask.to(torch.uint8)
    if mask.dim() == 4:
        mask = mask[:, 0] if mask.shape[1] == 1 else mask.abs().amax(1)
    h, w = mask.shape[-2:]
    m = mask.abs() if mask.is_signed() or mask.is_floating_point() else mask
    cols = m.amax(-2).ne(0).to(torch.uint8)  # (B, W): a reduction on the raw values, then compare
    rows = m.amax(-1).ne(0).to(torch.uint8)  # (B, H)
    x1 = cols.argmax(-1)  # first maximal element: the first on-column
    x2 = w - cols.flip(-1).argmax(-1)
    y1 = rows.argmax(-1)
    y2 = h - rows.flip(-1).argmax(-1)
    boxes = torch.stack([x1, y1, x2, y2], -1).float()
    return boxes * cols.any(-1, keepdim=True)  # empty masks: (0, 0, 0, 0)


def place(digits: Tensor, canvas_size, positions: Tensor) -> Tensor:
    """Copy each digit image onto a black canvas at an integer position (exact, no resampling).

    Args:
        digits: (B, C, h, w), any dtype.
        canvas_size: ``H`` (square) or ``(H, W)``, at least the digit size.
        positions: (B, 2) integer ``(x, y)`` of the digit image's top-left corner, with
            ``0 <= x <= W - w`` and ``0 <= y <= H - h`` (not checked, to avoid a device sync).

    Returns:
        (B, C, H, W) canvases of ``digits``' dtype.
    """
    check_digits(digits)
    b, c, h, w = digits.shape
    H, W = check_size(canvas_size, "canvas_size")
    if H < h or W < w:
        raise ValueError(f"canvas_size {(H, W)} is smaller than the digits {(h, w)}")
    pos = positions.to(device=digits.device, dtype=torch.long)
    ys = torch.arange(h, device=digits.device)
    xs = torch.arange(w, device=digits.device)
    flat = (pos[:, 1, None, None] + ys[:, None]) * W + (pos[:, 0, None, None] + xs)  # (B, h, w)
    canvas = digits.new_zeros(b, c, H * W)
    canvas.scatter_(2, flat.view(b, 1, h * w).expand(b, c, h * w), digits.reshape(b, c, h * w))
    return canvas.view(b, c, H, W)


def shift_images(images: Tensor, shifts: Tensor, out_size=None) -> Tensor:
    """Integer translation with zero fill: ``out[..., y, x] = images[..., y - dy, x - dx]``.

    Args:
        images: (B, C, h, w).
        shifts: (B, 2) integer ``(dx, dy)``.
        out_size: output ``H`` or ``(H, W)``; default the input size.

    Returns:
        (B, C, H, W), same dtype.
    """
    b, c, h, w = images.shape
    H, W = (h, w) if out_size is None else check_size(out_size, "out_size")
    d = shifts.to(device=images.device, dtype=torch.long)
    ys = torch.arange(H, device=images.device) - d[:, 1, None]  # (B, H) source rows
    xs = torch.arange(W, device=images.device) - d[:, 0, None]  # (B, W) source columns
    valid = ((ys >= 0) & (ys < h))[:, None, :, None] & ((xs >= 0) & (xs < w))[:, None, None, :]
    out = images.gather(2, ys.clamp(0, h - 1)[:, None, :, None].expand(b, c, H, w))  # rows
    out = out.gather(3, xs.clamp(0, w - 1)[:, None, None, :].expand(b, c, H, W))  # then columns
    return out * valid.to(out.dtype)


# -- translated and cluttered -------------------------------------------------------------------
def translate(digits: Tensor, canvas_size, generator: torch.Generator) -> Composition:
    """Place each digit image at a uniformly random integer position on a black canvas (RAM).

    Args:
        digits: (B, C, h, w) digit images (uint8 MNIST: (B, 1, 28, 28)).
        canvas_size: ``H`` or ``(H, W)``, at least the digit size.
        generator: source of randomness; its device is where the work happens.

    Returns:
        :class:`Composition` with ``params["position"]``: (B, 2) long ``(x, y)`` top-left corner of
        the digit image on the canvas, uniform in ``[0, W - w] x [0, H - h]``.
    """
    check_digits(digits)
    H, W = check_size(canvas_size, "canvas_size")
    b, _, h, w = digits.shape
    if H < h or W < w:
        raise ValueError(f"canvas_size {(H, W)} is smaller than the digits {(h, w)}")
    pos = uniform_positions(generator, W - w, H - h, (b,))
    image = place(digits, (H, W), pos)
    # The placed digit's mask is the digit's mask shifted by an integer: so is its tight box (and
    # this reads 28x28 instead of the whole canvas).
    box = tight_boxes(digits)
    box = torch.where(box[:, 2:3] > 0, box + pos.repeat(1, 2).to(box.dtype), box)
    return Composition(image, box, {"position": pos})


def add_clutter(
    canvases: Tensor,
    sources: Tensor,
    num_pieces: int,
    piece_size: int,
    generator: torch.Generator,
    source_index: Optional[Tensor] = None,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Max-compose random square pieces of source images onto the canvases.

    Each canvas gets ``num_pieces`` pieces; piece ``k`` is cut from ``sources[piece_source[:, k]]``
    with its top-left corner at ``piece_crop[:, k]`` (uniform over the source image) and pasted with
    its top-left corner at ``piece_position[:, k]`` (uniform over the canvas), composed by ``max``.

    Args:
        canvases: (B, C, H, W).
        sources: (N, C, h, w) images to cut pieces from, same dtype and device.
        num_pieces, piece_size: clutter per canvas and the side of a piece.
        generator: randomness.
        source_index: (B,) index in ``sources`` of each canvas's own digit: pieces then come only
            from the other ``N - 1`` sources (if ``N > 1``). None: any source.

    Returns:
        (canvases with clutter, params) with ``piece_source`` (B, K) long, ``piece_crop`` and
        ``piece_position`` (B, K, 2) long ``(x, y)``.
    """
    b, c, H, W = canvases.shape
    n, _, h, w = sources.shape
    k, p = int(num_pieces), int(piece_size)
    dev = canvases.device
    if k == 0:
        empty = torch.zeros(b, 0, dtype=torch.long, device=dev)
        return canvases.clone(), {
            "piece_source": empty,
            "piece_crop": empty[..., None].expand(b, 0, 2),
            "piece_position": empty[..., None].expand(b, 0, 2),
        }
    if source_index is not None and n > 1:
        src = (source_index.to(dev)[:, None] + uniform_ints(generator, 1, n - 1, (b, k))) % n
    else:
        src = uniform_ints(generator, 0, n - 1, (b, k))
    crop = torch.stack(
        [uniform_ints(generator, 0, w - p, (b, k)), uniform_ints(generator, 0, h - p, (b, k))], -1
    )
    at = torch.stack(
        [uniform_ints(generator, 0, W - p, (b, k)), uniform_ints(generator, 0, H - p, (b, k))], -1
    )
    ar = torch.arange(p, device=dev)
    rows = crop[..., 1, None] + ar  # (B, K, p)
    cols = crop[..., 0, None] + ar
    pieces = sources[src[..., None, None], :, rows[..., :, None], cols[..., None, :]]  # (B, K, p, p, C)
    pieces = pieces.permute(0, 4, 1, 2, 3).reshape(b, c, k * p * p)
    flat = (at[..., 1, None, None] + ar[:, None]) * W + (at[..., 0, None, None] + ar)  # (B, K, p, p)
    out = canvases.reshape(b, c, H * W).clone()
    out.scatter_reduce_(2, flat.reshape(b, 1, k * p * p).expand(b, c, k * p * p), pieces, "amax")
    params = {"piece_source": src, "piece_crop": crop, "piece_position": at}
    return out.view(b, c, H, W), params


def clutter(
    digits: Tensor,
    canvas_size,
    num_pieces: int,
    piece_size: int,
    generator: torch.Generator,
    sources: Optional[Tensor] = None,
    source_index: Optional[Tensor] = None,
) -> Composition:
    """Cluttered translated digits (RAM): :func:`translate`, then :func:`add_clutter`.

    The box is the digit's (computed before the clutter is added).

    Args:
        digits: (B, C, h, w).
        canvas_size, num_pieces, piece_size: as in :func:`translate` / :func:`add_clutter`.
        generator: randomness.
        sources: images to cut clutter from. None: the batch itself, each canvas taking pieces
            only from the other digits of the batch (the training path: batches are shuffled, so
            this is a random draw from the split).
        source_index: (B,) index of each digit in ``sources`` (excluded from its own clutter).

    Returns:
        :class:`Composition` with the params of both steps.
    """
    if sources is None:
        sources = digits
        source_index = torch.arange(digits.shape[0], device=digits.device)
    out = translate(digits, canvas_size, generator)
    image, params = add_clutter(out.image, sources, num_pieces, piece_size, generator, source_index)
    out.params.update(params)
    return Composition(image, out.box, out.params)
