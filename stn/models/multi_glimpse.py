"""Several glimpses per image, predicted in one pass, read by one shared trunk and fused."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from stn import ops
from stn.ops._checks import Fill, Size2, check_int

from .backbones import DigitNet
from .common import as_floats, float32
from .glimpse_model import GlimpseModel
from .localization import BoxHead

__all__ = ["MultiGlimpseModel"]

FUSIONS = ("concat", "mean")


class MultiGlimpseModel(GlimpseModel):
    """G attention crops per image in one pass: the localizer predicts G boxes at once, all
    glimpses are taken in one :func:`stn.ops.glimpse` call with (B, G, 4) boxes, a shared
    classifier trunk turns each into a feature vector, and the G vectors are fused (concatenated,
    or averaged) for a final linear layer.

    Retina (as in RAM, Mnih et al. 2014): with ``retina_scales=[1, 2, 4]`` each glimpse is also
    taken at 2x and 4x the box size about the same centre, shrunk to ``glimpse_size`` with
    ``antialias=True``, and the levels are stacked as channels, so the trunk sees C * 3 channels:
    a sharp centre and a blurred surround.

    Context dropout: with the retina, the surround can stand in for the box, and a penalty on the
    box area (``module.box_area_weight``) then shrinks the box below the object (retina [1, 2] on
    cluttered MNIST: boxes at 0.7 of the digit). ``context_dropout=p`` blanks the outer levels of
    a random fraction p of the training images (their normalized input is 0, the mean), so for
    those the box alone must carry the class, while the evaluation sees every level.

    Coarse to fine: with a ``refiner`` the boxes the localizer predicts from the shrunken image
    are first looked at (their retina), and the refiner moves and resizes each from that closer
    view before the classifier's look; the refined box is differentiable in the first one (the
    refiner's view of it is not).

    Sub-modules are factories completed here with shape information (Hydra ``_partial_: true``)::

        localizer(in_channels=C, image_size=(H, W))                 -> .feature_dim
        box_head(in_features=localizer.feature_dim, image_size=(H, W), num_boxes=G)
        classifier(in_channels=C * len(retina_scales), num_classes=None, input_size=glimpse_size)
        refiner(in_channels=C * len(retina_scales), glimpse_size=glimpse_size, min_size=...)  # optional

    The classifier is built without its head (``num_classes=None``) and must provide
    ``features(x) -> (N, feature_dim)`` and ``feature_dim`` (as :class:`DigitNet` and
    :class:`CifarNet` do).

    With ``fusion="mean"`` the fused vector does not know which glimpse is which, so G glimpses that
    start at the same box get the same gradient and never separate: give them different starting
    boxes (the box head's ``init_scale`` / ``init_center`` per box). Such a configuration raises
    ``ValueError``. With ``"concat"`` each glimpse has its own weights in the final layer.

    Args:
        localizer, box_head, classifier: the factories; defaults :class:`Localizer`,
            :class:`BoxHead`, :class:`DigitNet`.
        num_glimpses: G.
        glimpse_size: (h, w) of each glimpse; default the image size.
        retina_scales: box size multipliers of the retina levels; the first must be 1.
        fusion: ``"concat"`` (G * feature_dim into the linear layer) or ``"mean"``.
        antialias: for the scale-1 glimpses (the larger levels always anti-alias).
        padding_mode, fill: sampling outside the image (see :func:`stn.ops.glimpse`).
        context_dropout: in training, the probability that an image's outer retina levels are
            blanked (all its glimpses together); in [0, 1), 0 = off.
        refiner: None, or a factory of a second, closer look (:class:`BoxRefiner`):
            ``refiner(in_channels=C * len(retina_scales), glimpse_size=(h, w), min_size=(w, h))``
            reads the retina of each predicted box (normalized, never context-dropped; not
            differentiated w.r.t. the box) and moves and resizes the box, never below the box
            head's ``min_scale`` of the image; the classifier then reads the retina of the refined box.
        in_channels, num_classes, image_size, mean, std: from the data.

    Returns from ``forward(images)`` with images (B, C, H, W) in [0, 1]:
        ``"logits"`` (B, K); ``"boxes"`` (B, G, 4) pixel boxes (the scale-1 level; refined, with
        a refiner, and then also ``"coarse_boxes"`` (B, G, 4), the box head's);
        ``"glimpses"`` (B, G, C, h, w) unnormalized scale-1 glimpses; with more than one retina
        level also ``"retina"`` (B, G, S, C, h, w), all levels, unnormalized.
    """

    def __init__(
        self,
        localizer: Optional[Callable[..., nn.Module]] = None,
        box_head: Optional[Callable[..., nn.Module]] = None,
        classifier: Optional[Callable[..., nn.Module]] = None,
        num_glimpses: int = 2,
        glimpse_size: Optional[Size2] = None,
        retina_scales: Sequence[float] = (1.0,),
        fusion: str = "concat",
        antialias: bool = False,
        padding_mode: str = "zeros",
        fill: Fill = 0.0,
        context_dropout: float = 0.0,
        refiner: Optional[Callable[..., nn.Module]] = None,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: Size2 = (28, 28),
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ):
        super().__init__(
            localizer, glimpse_size, padding_mode, fill, in_channels, num_classes, image_size, mean, std
        )
        self.num_glimpses = check_int(num_glimpses, "num_glimpses")
        scales = as_floats(retina_scales, "retina_scales")
        if not scales or scales[0] != 1 or any(s <= 0 for s in scales) or len(set(scales)) != len(scales):
            raise ValueError(
                f"retina_scales must be distinct positive box-size multipliers starting with 1 "
                f"(e.g. [1, 2, 4]), got {list(scales)}"
            )
        self.retina_scales = scales
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.fusion = str(fusion)
        self.antialias = bool(antialias)
        if isinstance(context_dropout, bool) or not 0 <= context_dropout < 1:
            raise ValueError(f"context_dropout must be a probability in [0, 1), got {context_dropout!r}")
        if context_dropout > 0 and len(scales) == 1:
            raise ValueError(
                f"context_dropout={context_dropout} needs outer retina levels to blank; "
                f"retina_scales is {list(scales)}"
            )
        self.context_dropout = float(context_dropout)

        g = self.num_glimpses
        self.box_head = (box_head or BoxHead)(
            in_features=self.localizer.feature_dim, image_size=self.image_size, num_boxes=g
        )
        self.classifier = (classifier or DigitNet)(
            in_channels=in_channels * len(scales), num_classes=None, input_size=self.glimpse_size
        )
        if not (hasattr(self.classifier, "features") and hasattr(self.classifier, "feature_dim")):
            raise ValueError(
                f"the classifier of a MultiGlimpseModel must provide features(x) and feature_dim; "
                f"{type(self.classifier).__name__} does not"
            )
        dim = self.classifier.feature_dim
        self.head = nn.Linear(dim * g if self.fusion == "concat" else dim, num_classes)
        self.refiner = None
        if refiner is not None:
            smallest = getattr(self.box_head, "min_scale", None)
            self.refiner = refiner(
                in_channels=in_channels * len(scales),
                glimpse_size=self.glimpse_size,
                min_size=None
                if smallest is None
                else [smallest * self.image_size[1], smallest * self.image_size[0]],
            )
        if self.fusion == "mean" and g > 1:
            self._check_distinct_init()

    def _check_distinct_init(self) -> None:
        with torch.no_grad():
            feats = torch.zeros(1, self.localizer.feature_dim, device=self.normalize.mean.device)
            boxes = self.box_head(feats).reshape(self.num_glimpses, 4)
        if bool((boxes - boxes[:1]).abs().max() < 1e-6):
            raise ValueError(
                f"fusion='mean' with {self.num_glimpses} glimpses that all start at the same box "
                f"{boxes[0].tolist()}: they would get identical gradients and never separate. Give them "
                "different starting boxes (box_head.init_scale / box_head.init_center, one per glimpse) "
                "or use fusion='concat'"
            )

    def localization_parameters(self) -> list:
        """Parameters of the localizer, the box head and the refiner (for their own learning rate)."""
        refiner = [] if self.refiner is None else list(self.refiner.parameters())
        return list(self.localizer.parameters()) + list(self.box_head.parameters()) + refiner

    def _look(self, images: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """boxes (B, G, 4) -> the scale-1 glimpses (B, G, C, h, w) and all retina levels
        (B, G, S, C, h, w), unnormalized, sampled in float32."""
        b, g, c = boxes.shape[0], self.num_glimpses, images.shape[1]
        s, (h, w) = len(self.retina_scales), self.glimpse_size
        opts = dict(padding_mode=self.padding_mode, fill=self.fill)
        with float32(images):  # sampling in float32 also under mixed precision
            glimpses = ops.glimpse(images.float(), boxes, self.glimpse_size, antialias=self.antialias, **opts)
            x = glimpses.unsqueeze(2)  # (B, G, 1, C, h, w)
            if s > 1:
                centre = (boxes[..., :2] + boxes[..., 2:]) / 2
                half = (boxes[..., 2:] - boxes[..., :2]) / 2
                k = torch.tensor(self.retina_scales[1:], dtype=boxes.dtype, device=boxes.device)
                c_, h_ = centre.unsqueeze(2), half.unsqueeze(2) * k.view(1, 1, -1, 1)  # (B, G, S-1, 2)
                outer = torch.cat([c_ - h_, c_ + h_], dim=-1).reshape(b, g * (s - 1), 4)
                wide = ops.glimpse(images.float(), outer, self.glimpse_size, antialias=True, **opts)
                x = torch.cat([x, wide.reshape(b, g, s - 1, c, h, w)], dim=2)
        return glimpses, x

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        self.check_input(images)
        b, c = images.shape[:2]
        g, s = self.num_glimpses, len(self.retina_scales)
        h, w = self.glimpse_size
        boxes = self.box_head(self.localizer(self.normalize(images))).reshape(b, g, 4)
        out = {}
        if self.refiner is not None:
            # the refiner's view is not differentiated w.r.t. the box: the coarse box learns from
            # where the refined box lands, not from what would change the refiner's mind
            _, coarse = self._look(images, boxes.detach())
            coarse = self.normalize(coarse).reshape(b * g, s * c, h, w)
            out["coarse_boxes"] = boxes
            boxes = self.refiner(coarse, boxes.reshape(b * g, 4)).reshape(b, g, 4)
        glimpses, x = self._look(images, boxes)
        out.update(boxes=boxes, glimpses=glimpses)
        if s > 1:
            out["retina"] = x
        x = self.normalize(x)
        if self.training and self.context_dropout > 0:
            keep = torch.rand(b, 1, 1, 1, 1, 1, device=x.device) >= self.context_dropout
            outer = x[:, :, 1:] * keep.to(x.dtype)
            x = torch.cat([x[:, :, :1], outer], dim=2)
        feats = self.classifier.features(x.reshape(b * g, s * c, h, w))
        feats = feats.reshape(b, g, -1)
        fused = feats.flatten(1) if self.fusion == "concat" else feats.mean(1)
        out["logits"] = self.head(fused)
        return out
