"""Distortions of the STN paper (Jaderberg et al. 2015, sec. 4.1): rotated, RTS, projective, elastic.

Each recipe is one batched ``grid_sample`` (bilinear, zero fill, ``align_corners=False``) of the
digit centred on the canvas, from an affine (:func:`stn.ops.affine_grid`), projective or elastic
grid, rounded back to uint8; see :mod:`stn.data.synthetic` for the recipes and their numbers.

- ``r`` and ``e`` (:func:`rotate_scale`, with an :func:`elastic_field` for ``e``) warp the digit
  about the centre of the canvas as in the paper; on 28x28 a far corner of a rotated digit can
  fall outside.
- ``rts`` (:func:`_rotate_scale_translate`) draws the turned and scaled digit centred on a working
  canvas large enough for any angle (48x48 for scale 1.2), then shifts it by an integer drawn
  uniformly among the shifts that keep its box inside the 42x42 canvas, so it is never cut.
- ``p`` (:func:`_projective`) turns and scales the digit's corners, moves each by Gaussian noise
  (redrawing folded quadrilaterals) and samples through the homography.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from stn.ops import affine_grid

from .canvas import Composition, check_digits, shift_images, tight_boxes, uniform

__all__ = ["DISTORTIONS", "ELASTIC_ALPHA", "ELASTIC_SIGMA", "distort", "elastic_field", "rotate_scale"]

#: The STN paper's recipes (sec. 4.1, appendix A); ``canvas`` is the default canvas size.
DISTORTIONS: Dict[str, Dict] = {
    "r": dict(
        max_angle=90.0, scale_range=(1.0, 1.0), corner_std=0.0, elastic=False, translate=False, canvas=28
    ),
    "rts": dict(
        max_angle=45.0, scale_range=(0.7, 1.2), corner_std=0.0, elastic=False, translate=True, canvas=42
    ),
    "p": dict(
        max_angle=0.0, scale_range=(0.75, 1.0), corner_std=5.0, elastic=False, translate=False, canvas=28
    ),
    "e": dict(
        max_angle=0.0, scale_range=(1.0, 1.0), corner_std=0.0, elastic=True, translate=False, canvas=28
    ),
}
ELASTIC_ALPHA, ELASTIC_SIGMA = 34.0, 4.0

# Projective corner moves: draws per sample (the first acceptable one is used) and the smallest
# fraction of the quadrilateral's area a corner triangle may cover (see _corner_offsets).
CORNER_DRAWS = 8
MIN_CORNER_AREA = 0.1


def _pad_center(digits: Tensor, size: int) -> Tensor:
    h, w = digits.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(digits, (left, size - w - left, top, size - h - top))


def _warp(images: Tensor, grid: Tensor) -> Tensor:
    """Bilinear sampling of uint8 images at a normalized grid, back to uint8."""
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _rotation_scale_theta(angle_deg: Tensor, scale: Tensor) -> Tensor:
    """Sampling matrices that turn content by ``angle`` (counter-clockwise on screen) and scale it."""
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    zero = torch.zeros_like(cos)
    return torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], -2)


def rotate_scale(
    digits: Tensor, angle_deg: Tensor, scale: Tensor, size: int, displacement: Optional[Tensor] = None
) -> Tensor:
    """Digits centred on a ``size`` x ``size`` canvas, turned and scaled about its centre (uint8).

    A positive angle turns the digit counter-clockwise as displayed (rows pointing down).

    Args:
        digits: (B, C, h, w) uint8.
        angle_deg, scale: (B,) rotation in degrees and scale.
        size: side of the output canvas.
        displacement: optional (B, 2, size, size) ``(dx, dy)`` pixels (:func:`elastic_field`):
            output pixel ``(x, y)`` then reads the turned digit at ``(x + dx, y + dy)`` (Simard).

    Returns:
        (B, C, size, size) uint8.
    """
    padded = _pad_center(digits, size)
    grid = affine_grid(_rotation_scale_theta(angle_deg.float(), scale.float()), size)
    if displacement is not None:
        grid = grid + displacement.permute(0, 2, 3, 1) * (2.0 / size)
    return _warp(padded, grid)


def _rotate_scale_translate(
    digits: Tensor, angle: Tensor, scale: Tensor, size: int, max_scale: float, generator: torch.Generator
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """``rts``: turn and scale on a working canvas that holds the digit image at any angle, then
    shift by an integer drawn uniformly among the shifts that keep the digit's box inside."""
    b, _, h, w = digits.shape
    work = math.ceil(max(h, w) * math.sqrt(2) * max(max_scale, 1.0))
    work += (work - max(h, w)) % 2  # same parity as the digit: centring is exact
    warped = rotate_scale(digits, angle, scale, max(work, size))
    box = tight_boxes(warped)
    low = -box[:, :2]  # shift so that x1 + dx >= 0
    high = size - box[:, 2:]  # and x2 + dx <= size
    fits = high >= low
    u = uniform(generator, (b, 2))
    d = torch.where(
        fits, (low + torch.floor(u * (high - low + 1))).minimum(high), torch.round((low + high) / 2)
    )
    d = d.long()
    return shift_images(warped, d, size), {"shift": d}


def _corner_offsets(square: Tensor, corner_std: float, generator: torch.Generator) -> Tensor:
    """(B, 4, 2) Gaussian corner moves of the quadrilaterals ``square`` (B, 4, 2) that keep them
    well shaped.

    A corner move that folds the quadrilateral (a corner pushed past the diagonal) has no
    projective map from the square, and a nearly folded one (a corner nearly flat, or two corners
    nearly meeting) squeezes the digit to a speck: draws whose corner triangles cover less than
    MIN_CORNER_AREA of the quadrilateral are rejected (1.4% of draws fold at 5 px; 4% are rejected
    in all). Without a data-dependent loop (no device sync): CORNER_DRAWS draws per sample, the
    first acceptable one is used; if none is (probability ~1e-11), the corners stay put.
    """
    b = square.shape[0]
    tries = torch.randn(b, CORNER_DRAWS, 4, 2, generator=generator, device=generator.device) * corner_std
    ok = is_convex(square[:, None] + tries, MIN_CORNER_AREA)  # (B, T)
    first = ok.to(torch.uint8).argmax(1)
    return tries[torch.arange(b, device=tries.device), first] * ok.any(1)[:, None, None]


def _homography_grid(hom: Tensor, moved: Tensor, size: int) -> Tensor:
    """Sampling grid (B, size, size, 2) of the homographies ``hom`` (B, 3, 3) of normalized
    coordinates, at the output pixel centres; ``moved`` (B, 4, 2): the output quadrilaterals in
    pixels. Elementwise (faster than batched 3x3 matmuls); points beyond the horizon (on the other
    side of it from the quadrilateral) read nothing."""
    b, half = hom.shape[0], size / 2
    c = (torch.arange(size, device=hom.device, dtype=torch.float32) + 0.5) / half - 1
    gx, gy = c[None, None, :], c[None, :, None]
    hm = hom.view(b, 9, 1, 1).unbind(1)
    u = hm[0] * gx + hm[1] * gy + hm[2]  # (B, S, S)
    v = hm[3] * gx + hm[4] * gy + hm[5]
    wh = hm[6] * gx + hm[7] * gy + hm[8]
    mid = moved.mean(1) / half - 1  # (B, 2)
    side = torch.sign(hom[:, 2, 0] * mid[:, 0] + hom[:, 2, 1] * mid[:, 1] + hom[:, 2, 2])[:, None, None]
    front = wh * side > 1e-6
    wh = torch.where(front, wh, torch.ones_like(wh))
    return torch.where(front[..., None], torch.stack([u / wh, v / wh], -1), 2.0)


def _projective(
    digits: Tensor, angle: Tensor, scale: Tensor, size: int, corner_std: float, generator: torch.Generator
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """``p``: the digit image's corners (pixels, origin the canvas's top-left) turned and scaled
    about the digit's centre, each moved by N(0, corner_std) (:func:`_corner_offsets`), and the
    digit sampled through the homography from the moved corners back to the original ones."""
    b, _, h, w = digits.shape
    half = size / 2
    top, left = (size - h) // 2, (size - w) // 2
    corners = torch.tensor(
        [[left, top], [left + w, top], [left + w, top + h], [left, top + h]],
        dtype=torch.float32,
        device=digits.device,
    )
    centre = torch.tensor([left + w / 2, top + h / 2], device=digits.device)
    a = torch.deg2rad(angle)
    cos, sin = torch.cos(a), torch.sin(a)
    # content turns by R(-angle) (rows point down): counter-clockwise on screen, as for "r"
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # (B, 2, 2)
    square = centre + scale[:, None, None] * (corners - centre) @ rot.transpose(1, 2)  # (B, 4, 2)
    offset = _corner_offsets(square, corner_std, generator)
    moved = square + offset
    # Sampling maps output points to source points: the homography moved -> corners.
    hom = _homography(moved / half - 1, (corners / half - 1).expand(b, 4, 2))
    image = _warp(_pad_center(digits, size), _homography_grid(hom, moved, size))
    return image, {"corner_offset": offset}


def _homography(src: Tensor, dst: Tensor) -> Tensor:
    """(B, 3, 3) homographies mapping the 4 points ``src`` (B, 4, 2) onto ``dst`` (DLT, h33 = 1)."""
    x, y = src.unbind(-1)
    u, v = dst.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1)  # (B, 8, 8)
    rhs = torch.cat([u, v], 1)  # (B, 8)
    h = torch.linalg.solve(a, rhs)
    return torch.cat([h, torch.ones_like(h[:, :1])], 1).view(-1, 3, 3)


def is_convex(quads: Tensor, min_corner_area: float = 0.0) -> Tensor:
    """Whether quadrilaterals (..., 4, 2), corners in order, are convex with positive orientation.

    With ``min_corner_area > 0``, also that the triangle at every corner (the corner and its two
    neighbours) covers at least that fraction of the quadrilateral's area (1/2 for a
    parallelogram; near 0 when a corner is nearly flat or two corners nearly meet, where a
    projective map from the square squeezes part of the image to a speck).
    """
    edges = quads.roll(-1, -2) - quads
    nxt = edges.roll(-1, -2)
    cross = edges[..., 0] * nxt[..., 1] - edges[..., 1] * nxt[..., 0]  # 2 x corner triangle areas
    x, y = quads.unbind(-1)
    area2 = (x * y.roll(-1, -1) - x.roll(-1, -1) * y).sum(-1, keepdim=True)  # 2 x area (shoelace)
    return ((cross > 1e-3) & (cross >= min_corner_area * area2)).all(-1)


def elastic_field(b: int, size: int, alpha: float, sigma: float, generator: torch.Generator) -> Tensor:
    """Simard et al. (2003) displacement fields: alpha * Gaussian(sigma) * U(-1, 1), in pixels.

    Returns:
        (B, 2, size, size) float32 ``(dx, dy)``; the Gaussian is truncated at 3 sigma with zero
        padding at the border.
    """
    noise = uniform(generator, (b * 2, size, size), -1.0, 1.0)
    if sigma > 0:
        # The separable Gaussian blur (zero padding) as G @ noise @ G^T with a banded matrix G:
        # the same sums as two 1-d convolutions, several times faster for these small images.
        r = max(1, math.ceil(3 * sigma))
        x = torch.arange(-r, r + 1, device=noise.device, dtype=noise.dtype)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        k = k / k.sum()
        i = torch.arange(size, device=noise.device)
        offset = i[None, :] - i[:, None]  # column - row
        g = torch.where(
            offset.abs() <= r, k[(offset + r).clamp(0, 2 * r)], torch.zeros((), device=noise.device)
        )
        noise = g @ noise @ g.T
    return (alpha * noise).view(b, 2, size, size)


def distort(
    digits: Tensor,
    distortion: str,
    generator: torch.Generator,
    canvas_size: Optional[int] = None,
    *,
    max_angle: Optional[float] = None,
    scale_range: Optional[Sequence[float]] = None,
    corner_std: Optional[float] = None,
    alpha: float = ELASTIC_ALPHA,
    sigma: float = ELASTIC_SIGMA,
) -> Composition:
    """Distorted MNIST (STN paper, sec. 4.1): ``"r"``, ``"rts"``, ``"p"`` or ``"e"``.

    Args:
        digits: (B, C, 28, 28) uint8.
        distortion: the recipe (see :data:`DISTORTIONS`).
        generator: randomness.
        canvas_size: output side (square); default the paper's (42 for ``rts``, else 28). The digit
            image is centred on it before the warp.
        max_angle: rotation uniform in ``[-max_angle, max_angle]`` degrees (recipe default).
        scale_range: scale uniform in ``[lo, hi]`` (recipe default).
        corner_std: standard deviation in pixels of the corner moves of ``p`` (recipe default).
        alpha, sigma: elastic field strength and smoothness in pixels (``e`` only).

    Returns:
        :class:`Composition`; params ``angle`` (B,) degrees (counter-clockwise on screen), ``scale``
        (B,), and by recipe: ``shift`` (B, 2) long ``(dx, dy)`` from the centred working canvas
        to the output canvas (``rts``), ``corner_offset`` (B, 4, 2) pixels, corners in the order
        top-left, top-right, bottom-right, bottom-left (``p``), ``displacement`` (B, 2, S, S)
        pixels (``e``).
    """
    if distortion not in DISTORTIONS:
        raise ValueError(f"distortion must be one of {sorted(DISTORTIONS)}, got {distortion!r}")
    check_digits(digits)
    recipe = DISTORTIONS[distortion]
    size = int(canvas_size or recipe["canvas"])
    b, _, h, w = digits.shape
    if size < max(h, w):
        raise ValueError(f"canvas_size={size} is smaller than the {h}x{w} digit")
    max_angle = recipe["max_angle"] if max_angle is None else float(max_angle)
    lo, hi = recipe["scale_range"] if scale_range is None else (float(s) for s in scale_range)
    corner_std = recipe["corner_std"] if corner_std is None else float(corner_std)
    angle = (
        uniform(generator, (b,), -max_angle, max_angle)
        if max_angle > 0
        else digits.new_zeros(b, dtype=torch.float32)
    )
    scale = uniform(generator, (b,), lo, hi) if hi > lo else torch.full((b,), lo, device=digits.device)
    params = {"angle": angle, "scale": scale}
    if recipe["translate"]:
        image, extra = _rotate_scale_translate(digits, angle, scale, size, hi, generator)
    elif distortion == "p":
        image, extra = _projective(digits, angle, scale, size, corner_std, generator)
    else:
        disp = elastic_field(b, size, alpha, sigma, generator) if recipe["elastic"] else None
        image = rotate_scale(digits, angle, scale, size, disp)
        extra = {} if disp is None else {"displacement": disp}
    params.update(extra)
    return Composition(image, tight_boxes(image), params)
