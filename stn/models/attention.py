"""One attention crop per image: localizer -> box -> glimpse -> classifier."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

from torch import Tensor, nn

from stn import ops
from stn.ops._checks import Fill, Size2

from .backbones import DigitNet
from .common import float32
from .glimpse_model import GlimpseModel
from .localization import BoxHead

__all__ = ["AttentionModel"]


class AttentionModel(GlimpseModel):
    """Attention-crop classifier: a localizer looks at the whole image and picks one box, the box
    is cut out and resampled to ``glimpse_size`` (:func:`stn.ops.glimpse`), and the classifier
    sees only that glimpse.

    The box comes from a :class:`BoxHead`: centre inside the image, size within
    ``[min_scale, max_scale]`` of the image, starting at the full image. The glimpse is taken from
    the unnormalized [0, 1] images, so ``padding_mode="zeros"`` pads with black (``fill`` sets another
    constant, e.g. the mean colour); it is normalized afterwards, like the localizer's input.

    Sub-modules are factories completed here with shape information (Hydra ``_partial_: true``)::

        localizer(in_channels=C, image_size=(H, W))                 -> .feature_dim
        box_head(in_features=localizer.feature_dim, image_size=(H, W), num_boxes=1)
        classifier(in_channels=C, num_classes=K, input_size=glimpse_size)

    Args:
        localizer, box_head, classifier: the factories; defaults :class:`Localizer`,
            :class:`BoxHead`, :class:`DigitNet` with their defaults.
        glimpse_size: (h, w) of the glimpse; default the image size.
        antialias: average before shrinking, for boxes larger than the glimpse.
        padding_mode, fill: how the glimpse samples outside the image (see :func:`stn.ops.glimpse`).
        in_channels, num_classes, image_size, mean, std: from the data.

    Returns from ``forward(images)`` with images (B, C, H, W) in [0, 1]:
        ``"logits"`` (B, K), ``"boxes"`` (B, 4) pixel ``(x1, y1, x2, y2)``,
        ``"glimpses"`` (B, C, h, w) unnormalized.
    """

    def __init__(
        self,
        localizer: Optional[Callable[..., nn.Module]] = None,
        box_head: Optional[Callable[..., nn.Module]] = None,
        classifier: Optional[Callable[..., nn.Module]] = None,
        glimpse_size: Optional[Size2] = None,
        antialias: bool = False,
        padding_mode: str = "zeros",
        fill: Fill = 0.0,
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
        self.antialias = bool(antialias)
        self.box_head = (box_head or BoxHead)(
            in_features=self.localizer.feature_dim, image_size=self.image_size, num_boxes=1
        )
        self.classifier = (classifier or DigitNet)(
            in_channels=in_channels, num_classes=num_classes, input_size=self.glimpse_size
        )

    def localization_parameters(self) -> list:
        """Parameters of the localizer and the box head (for their own learning rate)."""
        return list(self.localizer.parameters()) + list(self.box_head.parameters())

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        self.check_input(images)
        boxes = self.box_head(self.localizer(self.normalize(images)))
        with float32(images):  # sampling in float32 also under mixed precision
            glimpses = ops.glimpse(
                images.float(),
                boxes,
                self.glimpse_size,
                padding_mode=self.padding_mode,
                fill=self.fill,
                antialias=self.antialias,
            )
        logits = self.classifier(self.normalize(glimpses))
        return {"logits": logits, "boxes": boxes, "glimpses": glimpses}
