"""Large images: a score map over a low-resolution view picks where K full-resolution glimpses go.

Regressed boxes alone do not find a 28-pixel digit on a 1500-pixel canvas: a glimpse of black
background has zero gradient with respect to its box, so a box that starts away from every digit
never moves (README, Large images). Here the localizer is fully convolutional: it scores every
cell of a low-resolution view, the K best-scoring local maxima seed K boxes, and small per-cell
offsets (position and size, zero at the start) refine each box through the glimpse's gradient.
The scores reach the loss through the attention weights that pool the glimpse features, so cells
whose glimpses help the classification rise, and cells whose glimpses do not sink, so others get
their turn. Two rules keep that loop going: flat cells (nothing in the view) are picked last, as
their glimpses teach nothing, and optionally (``ink_prior`` of :class:`ScoreMap`) a fresh score map
ranks the cells with most ink first. Optionally (``explore``), Gumbel noise on the scores in
training makes the top-k a sample without replacement (attention sampling, Katharopoulos & Fleuret
2019, draws its patches from such a map); at the start the scores of a black canvas are nearly
equal, so even noise of scale 1 sends the glimpses to random cells and the classifier learns
nothing (README).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stn import ops
from stn.ops._checks import Fill, Size2, check_int, check_size, fill_values

from .backbones import DigitNet
from .common import as_ints, check_scale, float32, low_res_view
from .glimpse_model import GlimpseModel

__all__ = ["ScoreMap", "TopKGlimpseModel"]


class ScoreMap(nn.Module):
    """Fully convolutional localizer on a low-resolution view of the image.

    It reads the (normalized) view: the image shrunk by ``view_scale`` with anti-aliasing
    (:func:`~stn.models.common.low_res_view`, done by the model, which normalizes the small view
    rather than the whole image: a normalized copy of a 1500x1500 batch of 16 is 144 MB). Then for
    each entry of ``channels`` a 3x3 conv and ReLU, with a 2x2 max-pool between stages (no BatchNorm, as in
    :class:`~stn.models.Localizer`). Two 1x1 heads read the last feature map: one score per cell,
    and three box offsets per cell (zero weights and bias: boxes start at their seeds). With
    ``ink_prior`` > 0 each cell's score also gets ``prior * mean(view over the cell)``, ``prior``
    a learned scalar starting at ``ink_prior``: a fresh score map then ranks the cells with the
    most ink first (on Megapixel MNIST the digits, whose strokes survive the shrink better than
    the noise patches' thin lines), where its own random scores may rank black background first
    and the glimpses there give it nothing to learn from (README, Large images).

    Built as ``ScoreMap(in_channels=C, image_size=(H, W), **config)``.

    Args:
        in_channels: C of the images; image_size: (H, W).
        view_scale: shrink of the view (ATS: 0.12, so 1500 -> 180).
        channels: channels of the conv stages.
        ink_prior: starting weight of the ink term (0: no such term, no parameter).

    Shape:
        view (B, C, round(H * view_scale), round(W * view_scale)) -> scores (B, h, w) and offsets
        (B, 3, h, w), where (h, w) is the view size divided by ``2 ** (len(channels) - 1)`` (rounded
        down).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: Size2 = (1500, 1500),
        view_scale: float = 0.12,
        channels: Sequence[int] = (8, 16),
        ink_prior: float = 0.0,
    ) -> None:
        super().__init__()
        check_int(in_channels, "in_channels")
        if isinstance(ink_prior, bool) or not isinstance(ink_prior, (int, float)) or not ink_prior >= 0:
            raise ValueError(f"ink_prior must be a number >= 0 (0: off), got {ink_prior!r}")
        self.image_size = check_size(image_size, "image_size")
        self.view_scale = check_scale(view_scale, "view_scale")
        channels = as_ints(channels, "channels")
        view = [max(1, round(s * self.view_scale)) for s in self.image_size]
        if min(view) < 2 ** (len(channels) - 1):
            raise ValueError(
                f"the view of {self.image_size} at view_scale={view_scale} is {tuple(view)}, too small for "
                f"{len(channels)} stages with 2x2 pools between them (raise view_scale or use fewer channels)"
            )
        layers, cin = [], in_channels
        for i, c in enumerate(channels):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True)]
            cin = c
        self.convs = nn.Sequential(*layers)
        self.score = nn.Conv2d(cin, 1, 1)
        self.offset = nn.Conv2d(cin, 3, 1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.cell = 2 ** (len(channels) - 1)  # view pixels per cell side
        self.ink_prior = nn.Parameter(torch.tensor(float(ink_prior))) if ink_prior > 0 else None

    def forward(self, view: Tensor) -> tuple[Tensor, Tensor]:
        x = self.convs(view)
        scores = self.score(x)[:, 0]
        if self.ink_prior is not None:
            # the normalized view is affine in the ink: the offset is the same for every cell
            ink = F.avg_pool2d(view.mean(1, keepdim=True), self.cell)[:, 0]
            scores = scores + self.ink_prior * ink
        return scores, self.offset(x)


class TopKGlimpseModel(GlimpseModel):
    """K full-resolution glimpses where a score map over a low-resolution view points, embedded by
    a shared trunk and pooled with attention weights.

    1. ``localizer`` (:class:`ScoreMap`, or any module with ``view_scale`` mapping the normalized
       view to scores and offsets) scores the cells of the view and predicts per-cell offsets.
    2. The K highest local maxima of the scores (a cell is a local maximum when no cell within
       ``nms_window // 2`` cells scores higher; with Gumbel noise of scale ``explore`` added in
       training) seed K boxes of ``box_size`` canvas pixels centred on their cells. Flat cells
       (the view's range over the cell at most ``min_contrast``) rank after every other cell:
       their glimpses show nothing and give the box and the score map no gradient, so a score
       map that comes to rank them first (the collapse of a 30-epoch run without this rule,
       README) would never learn its way back.
    3. Each box moves by up to ``max_shift`` pixels and grows or shrinks by up to 2x by the offsets
       at its cell (``tanh``-bounded), then :func:`stn.ops.glimpse` samples it at ``glimpse_size``
       from the full-resolution image (differentiable in the box).
    4. ``classifier`` (built without its head) turns each normalized glimpse into a feature vector;
       the vectors are averaged with weights ``softmax_k(score_k + a(feature_k))`` (``a`` linear),
       and a linear layer gives the logits.

    Args:
        localizer, classifier: factories (Hydra ``_partial_: true``), defaults :class:`ScoreMap`
            and :class:`~stn.models.DigitNet`; ``classifier(in_channels=C, num_classes=None,
            input_size=glimpse_size)`` must provide ``features`` and ``feature_dim``.
        num_glimpses: K.
        glimpse_size: (h, w) of each glimpse.
        box_size: side of a box at its seed, in image pixels.
        max_shift: how far (pixels) the offsets can move a box's centre from its cell's centre.
        nms_window: side (cells, odd) of the window a seed must be the maximum of.
        explore: scale of the Gumbel noise on the scores in training (0: plain top-k).
        min_contrast: cells whose view varies by at most this much (image intensity units) over
            them rank last; None: no such rule.
        antialias, padding_mode, fill: glimpse sampling (see :func:`stn.ops.glimpse`).
        recompute_localizer: in training, run the localizer one image at a time and recompute its
            activations in backward instead of keeping them (:meth:`localize`: the same result;
            on 1500x1500 at B=16 the score map's first stage alone keeps 16 MB per 180x180 map).
        in_channels, num_classes, image_size, mean, std: from the data.

    Returns from ``forward(images)`` with images (B, C, H, W) in [0, 1]:
        ``"logits"`` (B, classes); ``"boxes"`` (B, K, 4) pixel boxes ``(x1, y1, x2, y2)`` of the
        image; ``"glimpses"`` (B, K, C, h, w) unnormalized; ``"weights"`` (B, K) attention
        weights; ``"scores"`` (B, h', w') the score map over the view's cells.
    """

    #: pixels a glimpse's patch reaches past the largest box (anti-aliased taps reach <= 2)
    CROP_MARGIN = 4

    def __init__(
        self,
        localizer: Optional[Callable[..., nn.Module]] = None,
        classifier: Optional[Callable[..., nn.Module]] = None,
        num_glimpses: int = 10,
        glimpse_size: Size2 = (32, 32),
        box_size: float = 32.0,
        max_shift: float = 16.0,
        nms_window: int = 3,
        explore: float = 0.0,
        min_contrast: Optional[float] = 0.0,
        antialias: bool = True,
        padding_mode: str = "zeros",
        fill: Fill = 0.0,
        recompute_localizer: bool = True,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: Size2 = (1500, 1500),
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ) -> None:
        super().__init__(
            localizer or ScoreMap,
            glimpse_size,
            padding_mode,
            fill,
            in_channels,
            num_classes,
            image_size,
            mean,
            std,
        )
        self.num_glimpses = check_int(num_glimpses, "num_glimpses")
        if (
            isinstance(nms_window, bool)
            or not isinstance(nms_window, int)
            or nms_window < 1
            or not nms_window % 2
        ):
            raise ValueError(f"nms_window must be a positive odd int (cells), got {nms_window!r}")
        for name, value, low in (
            ("box_size", box_size, 1e-6),
            ("max_shift", max_shift, 0),
            ("explore", explore, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise ValueError(f"{name} must be a number >= {low:g}, got {value!r}")
        self.box_size, self.max_shift = float(box_size), float(max_shift)
        self.nms_window, self.explore = nms_window, float(explore)
        number = isinstance(min_contrast, (int, float)) and not isinstance(min_contrast, bool)
        if min_contrast is not None and not (number and min_contrast >= 0):
            raise ValueError(f"min_contrast must be a number >= 0 or None (no rule), got {min_contrast!r}")
        self.min_contrast = None if min_contrast is None else float(min_contrast)
        self.antialias = bool(antialias)
        self.recompute_localizer = bool(recompute_localizer)
        self.classifier = (classifier or DigitNet)(
            in_channels=in_channels, num_classes=None, input_size=self.glimpse_size
        )
        if not (hasattr(self.classifier, "features") and hasattr(self.classifier, "feature_dim")):
            raise ValueError(
                f"the classifier of a TopKGlimpseModel must provide features(x) and feature_dim; "
                f"{type(self.classifier).__name__} does not"
            )
        dim = self.classifier.feature_dim
        self.attention = nn.Linear(dim, 1)
        self.head = nn.Linear(dim, num_classes)

    def localization_parameters(self) -> list:
        """The score map's parameters (for their own learning rate)."""
        return list(self.localizer.parameters())

    def flat_cells(self, view: Tensor, cells: tuple[int, int]) -> Tensor:
        """(B, C, h', w') unnormalized view -> (B, h, w) bool: the cells (of the ``cells`` = (h, w)
        score map) where the view varies by at most ``min_contrast`` over the cell (the glimpse of a
        cell covers at least the cell when ``box_size`` is at least a cell's side)."""
        view = view.detach()
        high = F.adaptive_max_pool2d(view, cells)
        low = -F.adaptive_max_pool2d(-view, cells)
        return (high - low).amax(1) <= self.min_contrast

    def select(self, scores: Tensor, flat: Optional[Tensor] = None) -> Tensor:
        """(B, h, w) scores -> (B, K) flat indices of the seed cells: local maxima first, then the
        other cells, then those of ``flat`` (B, h, w) bool, if given."""
        b, h, w = scores.shape
        k = self.num_glimpses
        if k > h * w:
            raise ValueError(f"num_glimpses={k} is more than the {h}x{w} cells of the score map")
        s = scores.detach()
        if self.training and self.explore > 0:
            u = torch.rand_like(s).clamp_(1e-9, 1 - 1e-9)
            s = s - self.explore * torch.log(-torch.log(u))  # Gumbel top-k: a sample without replacement
        r = self.nms_window // 2
        peak = s == F.max_pool2d(s[:, None], self.nms_window, stride=1, padding=r)[:, 0]
        # non-maxima rank after every maximum, so they fill in only when there are fewer than K
        gap = s.max() - s.min() + 1
        ranked = torch.where(peak, s, s - gap)
        if flat is not None:
            ranked = torch.where(flat, ranked - 2 * gap, ranked)
        return ranked.flatten(1).topk(k, dim=1).indices

    def localize(self, view: Tensor) -> tuple[Tensor, Tensor]:
        """The localizer on the normalized view; with ``recompute_localizer`` in training one image at
        a time, its activations recomputed in backward (a localizer with batch statistics would
        see batches of one: ScoreMap has none)."""
        if not (self.recompute_localizer and torch.is_grad_enabled()):
            return self.localizer(view)
        parts = [checkpoint(self.localizer, v, use_reentrant=False) for v in view.split(1)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def sample(self, images: Tensor, boxes: Tensor) -> Tensor:
        """(B, C, H, W) images, (B, K, 4) boxes -> (B, K, C, h, w) glimpses (:func:`stn.ops.glimpse`).

        With ``padding_mode="zeros"`` each glimpse is sampled from a square patch of
        ``2 * ceil(box_size) + 2 * CROP_MARGIN`` pixels around its box (copied out of the image,
        ``fill`` outside it): the same values and box gradients, but anti-aliased sampling then
        never builds (K, h, W) filter matrices over a 1500-pixel canvas (39 MB at B=16, K=10).
        A box is at most ``2 * box_size`` wide and tall (offsets rescale by up to 2x) and its
        filter taps reach at most that shrink factor (<= ``CROP_MARGIN``) pixels past its edges.
        """
        kw = dict(antialias=self.antialias, padding_mode=self.padding_mode, fill=self.fill)
        if self.padding_mode != "zeros":  # the edge of a patch is not the edge of the image
            return ops.glimpse(images, boxes, self.glimpse_size, **kw)
        b, c, height, width = images.shape
        k = boxes.shape[1]
        side = 2 * math.ceil(self.box_size) + 2 * self.CROP_MARGIN
        flat = boxes.reshape(b * k, 4)
        centre = (flat[:, :2] + flat[:, 2:]).detach() / 2
        corner = torch.floor(centre).long() - side // 2  # (BK, 2) patch top-left (x, y)
        ar = torch.arange(side, device=images.device)
        cols, rows = corner[:, 0, None] + ar, corner[:, 1, None] + ar  # (BK, side)
        inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        image = torch.arange(b, device=images.device).repeat_interleave(k)[:, None, None]
        # (BK, side, side, C): the advanced indices around the channel slice come first
        patches = images[
            image, :, rows.clamp(0, height - 1)[:, :, None], cols.clamp(0, width - 1)[:, None, :]
        ]
        patches = patches.permute(0, 3, 1, 2)
        fill = fill_values(self.fill, patches, self.padding_mode)  # (C,), None for zero
        patches = torch.where(inside[:, None], patches, 0.0 if fill is None else fill.view(1, -1, 1, 1))
        local = flat - corner.repeat(1, 2).to(flat.dtype)
        out = ops.glimpse(patches, local, self.glimpse_size, **kw)
        return out.view(b, k, c, *self.glimpse_size)

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        self.check_input(images)
        b, c = images.shape[:2]
        k, (gh, gw) = self.num_glimpses, self.glimpse_size
        height, width = self.image_size
        view = low_res_view(images, self.localizer.view_scale)  # shrink, then normalize: less memory
        scores, offsets = self.localize(self.normalize(view))
        hs, ws = scores.shape[-2:]
        flat = None if self.min_contrast is None else self.flat_cells(view, (hs, ws))
        cells = self.select(scores, flat)  # (B, K)
        picked = scores.flatten(1).gather(1, cells)  # (B, K), with gradient
        with float32(images):  # box geometry and sampling in float32 also under mixed precision
            off = offsets.float().flatten(2).gather(2, cells[:, None].expand(b, 3, k))  # (B, 3, K)
            cell = torch.tensor([width / ws, height / hs], device=images.device)
            grid = torch.stack([cells % ws, cells // ws], -1).float()  # (B, K, 2) cell (col, row)
            centre = (grid + 0.5) * cell + self.max_shift * torch.tanh(off[:, :2].transpose(1, 2))
            half = self.box_size / 2 * torch.pow(2.0, torch.tanh(off[:, 2]))[..., None]  # (B, K, 1)
            boxes = torch.cat([centre - half, centre + half], -1)  # (B, K, 4)
            glimpses = self.sample(images.float(), boxes)
        feats = self.classifier.features(self.normalize(glimpses).reshape(b * k, c, gh, gw)).reshape(b, k, -1)
        weights = torch.softmax(picked + self.attention(feats)[..., 0], dim=1)
        logits = self.head((weights[..., None] * feats).sum(1))
        return {"logits": logits, "boxes": boxes, "glimpses": glimpses, "weights": weights, "scores": scores}
