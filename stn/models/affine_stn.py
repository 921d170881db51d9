"""The full spatial transformer: localizer -> free affine theta -> warped glimpse -> classifier."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

from torch import Tensor, nn

from stn import ops
from stn.ops._checks import Fill, Size2

from .backbones import DigitNet
from .common import float32
from .glimpse_model import GlimpseModel
from .localization import AffineHead

__all__ = ["AffineSTN"]


class AffineSTN(GlimpseModel):
    """Spatial transformer network with a 6-parameter affine transform (Jaderberg et al. 2015; the
    PyTorch STN tutorial), sampled with :func:`stn.ops.affine_glimpse`.

    The localizer reads the (normalized) image, an :class:`AffineHead` predicts ``theta``
    (identity at initialization), the unnormalized image is warped to ``glimpse_size`` (padding
    with ``fill``, black by default, not with the normalized zero that the tutorial pads with),
    normalized, and classified.

    Sub-modules are factories completed here with shape information (Hydra ``_partial_: true``)::

        localizer(in_channels=C, image_size=(H, W))                 -> .feature_dim
        affine_head(in_features=localizer.feature_dim)
        classifier(in_channels=C, num_classes=K, input_size=glimpse_size)

    Args:
        localizer, affine_head, classifier: the factories; defaults :class:`Localizer`,
            :class:`AffineHead`, :class:`DigitNet`.
        glimpse_size: (h, w) of the warped output; default the image size.
        padding_mode, fill: sampling outside the image (see :func:`stn.ops.affine_glimpse`).
        in_channels, num_classes, image_size, mean, std: from the data.

    Returns from ``forward(images)`` with images (B, C, H, W) in [0, 1]:
        ``"logits"`` (B, K); ``"theta"`` (B, 2, 3) for ``affine_grid(align_corners=False)``;
        ``"boxes"`` (B, 4) the pixel bounding box of the sampled parallelogram
        (:func:`stn.ops.theta_to_boxes`); ``"glimpses"`` (B, C, h, w) unnormalized.
    """

    def __init__(
        self,
        localizer: Optional[Callable[..., nn.Module]] = None,
        affine_head: Optional[Callable[..., nn.Module]] = None,
        classifier: Optional[Callable[..., nn.Module]] = None,
        glimpse_size: Optional[Size2] = None,
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
        self.affine_head = (affine_head or AffineHead)(in_features=self.localizer.feature_dim)
        self.classifier = (classifier or DigitNet)(
            in_channels=in_channels, num_classes=num_classes, input_size=self.glimpse_size
        )

    def localization_parameters(self) -> list:
        """Parameters of the localizer and the affine head (for their own learning rate)."""
        return list(self.localizer.parameters()) + list(self.affine_head.parameters())

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        self.check_input(images)
        theta = self.affine_head(self.localizer(self.normalize(images)))
        with float32(images):  # sampling in float32 also under mixed precision
            glimpses = ops.affine_glimpse(
                images.float(), theta, self.glimpse_size, padding_mode=self.padding_mode, fill=self.fill
            )
        logits = self.classifier(self.normalize(glimpses))
        boxes = ops.theta_to_boxes(theta, self.image_size)
        return {"logits": logits, "theta": theta, "boxes": boxes, "glimpses": glimpses}
