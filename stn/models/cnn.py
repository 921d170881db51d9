"""The baseline: the classifier on the whole image, no localization, no glimpse."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

from torch import Tensor, nn

from stn.ops._checks import Size2

from .backbones import DigitNet
from .common import ImageModel

__all__ = ["CNNModel"]


class CNNModel(ImageModel):
    """Plain CNN baseline: normalize, classify. Same interface as the glimpse models, without
    ``"boxes"`` and ``"glimpses"``; ``localization_parameters()`` is empty.

    Built with ``classifier(in_channels=C, num_classes=K, input_size=(H, W))``; the default is a
    :class:`DigitNet` with the attention model's classifier widths, so the two differ only by the
    localization network (6k of the attention model's 105k parameters with the default configs).

    Returns from ``forward(images)`` with images (B, C, H, W) in [0, 1]: ``"logits"`` (B, K).
    """

    def __init__(
        self,
        classifier: Optional[Callable[..., nn.Module]] = None,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: Size2 = (28, 28),
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ):
        super().__init__(in_channels, num_classes, image_size, mean, std)
        self.classifier = (classifier or DigitNet)(
            in_channels=in_channels, num_classes=num_classes, input_size=self.image_size
        )

    def localization_parameters(self) -> list:
        return []

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        self.check_input(images)
        return {"logits": self.classifier(self.normalize(images))}
