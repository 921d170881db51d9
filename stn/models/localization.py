"""Where to look: a small CNN on a shrunken copy of the image, and heads that turn its features
into a bounded box (``BoxHead``) or a free affine transform (``AffineHead``); and a second, closer
look that moves and resizes a box from a glimpse of it (``BoxRefiner``).

Heads start at the identity: zero weights and a bias that gives the full image, so a freshly
built model sees exactly what a plain classifier would and learns to move from there (STN paper,
section 4; the usual cure for a transformer that collapses early).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stn.ops._checks import Size2, check_int, check_size

from .common import as_floats, as_ints, float32

__all__ = ["Localizer", "BoxHead", "BoxRefiner", "AffineHead"]


class Localizer(nn.Module):
    """Small CNN that reads a downsampled copy of the image and returns a feature vector.

    The image is average-pooled to ``pool_size`` first (anti-aliased shrinking), so the cost does
    not grow with the image size. Then for each entry of ``channels``: 3x3 conv, ReLU, 2x2 max-pool;
    then flatten, linear to ``hidden``, ReLU. No BatchNorm, so train and eval modes agree and the
    network behaves the same under its own (smaller) learning rate.

    Built as ``Localizer(in_channels=C, image_size=(H, W), **config)``; ``feature_dim`` is the
    length of the output.

    Args:
        in_channels: C of the (normalized) images.
        image_size: (H, W) of the images.
        pool_size: (h, w) the image is average-pooled to first; None keeps the full resolution.
        channels: channels of the conv stages.
        hidden: size of the output feature vector.

    Shape:
        (B, C, H, W) -> (B, hidden)
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: Size2 = (28, 28),
        pool_size: Optional[Size2] = (14, 14),
        channels: Sequence[int] = (8, 16),
        hidden: int = 32,
    ):
        super().__init__()
        check_int(in_channels, "in_channels")
        self.image_size = check_size(image_size, "image_size")
        self.pool_size = None if pool_size is None else check_size(pool_size, "pool_size")
        channels = as_ints(channels, "channels")
        self.feature_dim = check_int(hidden, "hidden")
        h, w = self.pool_size or self.image_size
        layers = []
        cin = in_channels
        for c in channels:
            if h < 2 or w < 2:
                raise ValueError(
                    f"Localizer: {len(channels)} conv stages with 2x2 pools need an input of at least "
                    f"{2 ** len(channels)}x{2 ** len(channels)}, got {self.pool_size or self.image_size} "
                    "(raise pool_size or use fewer channels)"
                )
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin, h, w = c, h // 2, w // 2
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(cin * h * w, hidden), nn.ReLU(inplace=True))

    def forward(self, images: Tensor) -> Tensor:
        x = images
        if self.pool_size is not None and tuple(x.shape[-2:]) != self.pool_size:
            x = F.adaptive_avg_pool2d(x, self.pool_size)
        return self.fc(self.convs(x))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class BoxHead(nn.Module):
    """Features -> boxes of bounded position and size: the attention transform of the STN paper
    (Eq. 2, ``[[s, 0, tx], [0, s, ty]]``) written as pixel boxes.

    For each of ``num_boxes`` boxes a linear layer gives raw values ``(u, v, r)`` (or
    ``(u, v, rx, ry)`` when ``anisotropic``); the box centre is
    ``((tanh(u) + 1) / 2 * W, (tanh(v) + 1) / 2 * H)``, always inside the image, and its size is
    ``s * (W, H)`` with ``s = min_scale + (max_scale - min_scale) * sigmoid(r)``, always within
    ``[min_scale, max_scale]`` of the image size. Scales above 1 zoom out past the image border
    (the glimpse pads there).

    Initialization: zero weights; the bias gives centre ``init_center`` and scale ``init_scale``,
    by default the full image ``(0, 0, W, H)`` for every box. Because the scale is sigmoid-bounded
    ``init_scale`` must lie strictly between ``min_scale`` and ``max_scale``, so the default
    ``init_scale=1`` needs ``max_scale > 1``.

    Built as ``BoxHead(in_features=F, image_size=(H, W), num_boxes=G, **config)``.

    Args:
        in_features: length of the feature vectors.
        image_size: (H, W) of the images the boxes refer to.
        num_boxes: G boxes per image. With ``num_boxes=1`` the output is (B, 4), otherwise (B, G, 4).
        min_scale, max_scale: bounds of the box size as a fraction of the image size.
        anisotropic: separate scales for x and y (boxes of any aspect ratio within the bounds).
        init_scale: initial scale, one number or one per box.
        init_center: initial centre as fractions of (W, H) in (0, 1): one ``(x, y)`` pair, or one
            per box; default the image centre ``(0.5, 0.5)``.

    Shape:
        (B, in_features) -> (B, 4) or (B, G, 4) float32 pixel boxes ``(x1, y1, x2, y2)`` (computed
        in float32 also under autocast).
    """

    def __init__(
        self,
        in_features: int = 32,
        image_size: Size2 = (28, 28),
        num_boxes: int = 1,
        min_scale: float = 0.3,
        max_scale: float = 1.25,
        anisotropic: bool = False,
        init_scale: Union[float, Sequence[float]] = 1.0,
        init_center: Optional[Sequence] = None,
    ):
        super().__init__()
        check_int(in_features, "in_features")
        self.image_size = check_size(image_size, "image_size")
        self.num_boxes = check_int(num_boxes, "num_boxes")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        if not 0 < self.min_scale < self.max_scale:
            raise ValueError(
                f"need 0 < min_scale < max_scale, got min_scale={min_scale}, max_scale={max_scale}"
            )
        self.anisotropic = bool(anisotropic)
        g = self.num_boxes
        scales = as_floats(init_scale, "init_scale")
        if len(scales) == 1:
            scales = scales * g
        if len(scales) != g:
            raise ValueError(
                f"init_scale must be one number or {g} (one per box), got {len(scales)}: {scales}"
            )
        for s in scales:
            if not self.min_scale < s < self.max_scale:
                raise ValueError(
                    f"init_scale={s} must lie strictly between min_scale={self.min_scale} and "
                    f"max_scale={self.max_scale}: the scale is sigmoid-bounded and can only reach its "
                    "bounds in the limit. For the full-image start (init_scale=1) use max_scale > 1; "
                    "to never zoom out past the image, use max_scale=1 with init_scale < 1 (e.g. 0.99)"
                )
        centers = self._centers(init_center, g)
        self.n_scale = 2 if self.anisotropic else 1
        self.per_box = 2 + self.n_scale
        self.linear = nn.Linear(in_features, g * self.per_box)
        bias = []
        for (cx, cy), s in zip(centers, scales):
            r = _logit((s - self.min_scale) / (self.max_scale - self.min_scale))
            bias += [math.atanh(2 * cx - 1), math.atanh(2 * cy - 1)] + [r] * self.n_scale
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.copy_(torch.tensor(bias))
        h, w = self.image_size
        self.register_buffer("wh", torch.tensor([float(w), float(h)]), persistent=False)

    @staticmethod
    def _centers(init_center, g):
        if init_center is None:
            return [(0.5, 0.5)] * g
        try:
            flat = [float(v) for v in init_center]  # a single (x, y) pair
            pairs = [tuple(flat)]
        except TypeError:
            pairs = [tuple(float(v) for v in c) for c in init_center]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"init_center must be an (x, y) pair or one pair per box, got {init_center!r}")
        if len(pairs) == 1:
            pairs = pairs * g
        if len(pairs) != g:
            raise ValueError(f"init_center must be one (x, y) pair or {g} (one per box), got {len(pairs)}")
        for p in pairs:
            if not all(0 < v < 1 for v in p):
                raise ValueError(
                    f"init_center {p} must lie strictly inside (0, 1) (fractions of the image width and "
                    "height; the centre is tanh-bounded)"
                )
        return pairs

    def forward(self, features: Tensor) -> Tensor:
        with float32(features):
            raw = self.linear(features.float()).unflatten(-1, (self.num_boxes, self.per_box))
        wh = self.wh.float()
        centre = (torch.tanh(raw[..., :2]) + 1) * (wh / 2)
        scale = self.min_scale + (self.max_scale - self.min_scale) * torch.sigmoid(raw[..., 2:])
        half = scale * (wh / 2)  # (.., 1) broadcasts to (.., 2) for isotropic scales
        boxes = torch.cat([centre - half, centre + half], dim=-1)
        return boxes.squeeze(-2) if self.num_boxes == 1 else boxes

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, num_boxes={self.num_boxes}, scale=[{self.min_scale}, "
            f"{self.max_scale}], anisotropic={self.anisotropic}"
        )


class BoxRefiner(nn.Module):
    """Coarse to fine: a glimpse of a box -> the box moved and resized within bounds of itself.

    The box localizer reads the whole image at low resolution, so its boxes are only as precise
    as that copy. The refiner reads the glimpse of each box (at the glimpse's resolution, so a
    box of 40 px read at 28x28 sees the object at 0.7x its full resolution, not at the localizer's
    0.48x) and predicts raw ``(u, v, rx, ry)``: with centre ``c`` and size ``s`` of the box,

        c' = c + max_shift * tanh(u, v) * s,    s' = max(s * max_zoom ** tanh(rx, ry), min_size)

    so the new box stays within ``max_shift`` box sizes of the old centre, within
    ``1 / max_zoom .. max_zoom`` of its size and no smaller than ``min_size`` (the box head's
    smallest box: a box shrunk below the object sees nothing that could pull it back).
    Zero-initialized weights and bias: it starts as the identity. The result depends on the box
    through both terms, so the glimpse's gradient reaches the coarse box too.

    Built as ``BoxRefiner(in_channels=C, glimpse_size=(h, w), min_size=(w, h) or None)`` with
    ``localizer`` a factory like :class:`Localizer` (built on the glimpse:
    ``localizer(in_channels=C, image_size=(h, w))``).

    Args:
        localizer: the CNN on the glimpses; default :class:`Localizer` at full glimpse resolution.
        max_shift: the largest move of the centre, as a fraction of the box size; > 0.
        max_zoom: the largest change of the size, a factor > 1 either way.
        in_channels, glimpse_size: of the glimpses it reads.
        min_size: (width, height) in pixels the refined box never goes below; None: no floor.

    Shape:
        ``forward(glimpses, boxes)``: glimpses (N, C, h, w) normalized, boxes (N, 4) pixel
        ``(x1, y1, x2, y2)`` -> (N, 4) float32 pixel boxes.
    """

    def __init__(
        self,
        localizer=None,
        max_shift: float = 0.5,
        max_zoom: float = 2.0,
        *,
        in_channels: int = 1,
        glimpse_size: Size2 = (28, 28),
        min_size: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        if not max_shift > 0:
            raise ValueError(f"max_shift must be > 0 (a fraction of the box size), got {max_shift!r}")
        if not max_zoom > 1:
            raise ValueError(f"max_zoom must be > 1 (a factor either way), got {max_zoom!r}")
        self.max_shift, self.log_zoom = float(max_shift), math.log(max_zoom)
        size = check_size(glimpse_size, "glimpse_size")
        if localizer is None:
            localizer = functools.partial(Localizer, pool_size=None)
        self.localizer = localizer(in_channels=in_channels, image_size=size)
        self.linear = nn.Linear(self.localizer.feature_dim, 4)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()
        floor = torch.zeros(2) if min_size is None else torch.tensor(as_floats(min_size, "min_size"))
        if floor.shape != (2,) or (floor < 0).any():
            raise ValueError(f"min_size must be a (width, height) pair of pixels >= 0, got {min_size!r}")
        self.register_buffer("min_half", floor / 2, persistent=False)

    def forward(self, glimpses: Tensor, boxes: Tensor) -> Tensor:
        feats = self.localizer(glimpses)
        with float32(feats):
            raw = torch.tanh(self.linear(feats.float()))
        boxes = boxes.float()
        centre, size = (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]
        centre = centre + self.max_shift * raw[..., :2] * size
        half = torch.maximum(size * torch.exp(self.log_zoom * raw[..., 2:]) / 2, self.min_half)
        return torch.cat([centre - half, centre + half], dim=-1)

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}, max_zoom={math.exp(self.log_zoom):.3g}"


class AffineHead(nn.Module):
    """Features -> a free 6-parameter affine ``theta`` (B, 2, 3) for
    ``F.affine_grid(..., align_corners=False)``, initialized to the identity (zero weights,
    identity bias), as in the STN paper and the PyTorch tutorial.

    Built as ``AffineHead(in_features=F, **config)``.

    Shape:
        (B, in_features) -> (B, 2, 3) float32 (also under autocast)
    """

    def __init__(self, in_features: int = 32):
        super().__init__()
        check_int(in_features, "in_features")
        self.linear = nn.Linear(in_features, 6)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(self, features: Tensor) -> Tensor:
        with float32(features):
            return self.linear(features.float()).unflatten(-1, (2, 3))
