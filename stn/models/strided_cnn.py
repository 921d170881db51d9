"""Large-image baselines without attention: a CNN on the whole image, at full resolution behind a
strided stem, or on a low-resolution view."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

from torch import Tensor, nn

from stn.ops._checks import Size2, check_int

from .backbones import DigitNet
from .common import ImageModel, check_scale, low_res_view

__all__ = ["StridedCNN"]


class StridedCNN(ImageModel):
    """Shrink (``view_scale``), a strided stem, then a classifier over the whole image.

    The stem is one convolution with kernel and stride ``stem_stride`` (non-overlapping patches;
    a 3x3 convolution when ``stem_stride=1``) to ``stem_channels``, BatchNorm and ReLU; the
    classifier (default :class:`~stn.models.DigitNet`, which ends in global average pooling) reads
    its output. With ``view_scale=1, stem_stride=4`` it sees a 1500x1500 canvas at full resolution
    on a 375x375 grid; with ``view_scale=0.12, stem_stride=1`` the 180x180 view the attention model's
    localizer reads, and the same parameters.

    Built as ``StridedCNN(..., in_channels=C, num_classes=K, image_size=(H, W), mean, std)``.

    Args:
        classifier: factory ``classifier(in_channels=stem_channels, num_classes=K, input_size=(h, w))``.
        view_scale: shrink of the image before the stem, in (0, 1] (anti-aliased).
        stem_stride: stride (and kernel) of the stem.
        stem_channels: its output channels.

    Returns from ``forward(images)`` with images (B, C, H, W) in [0, 1]: ``"logits"`` (B, K).
    """

    def __init__(
        self,
        classifier: Optional[Callable[..., nn.Module]] = None,
        view_scale: float = 1.0,
        stem_stride: int = 4,
        stem_channels: int = 16,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: Size2 = (1500, 1500),
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ) -> None:
        super().__init__(in_channels, num_classes, image_size, mean, std)
        self.view_scale = check_scale(view_scale, "view_scale")
        self.stem_stride = check_int(stem_stride, "stem_stride")
        check_int(stem_channels, "stem_channels")
        kernel, pad = (3, 1) if stem_stride == 1 else (stem_stride, 0)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, kernel, stride=stem_stride, padding=pad, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        view = [max(1, round(s * self.view_scale)) for s in self.image_size]
        grid = tuple((v + 2 * pad - kernel) // stem_stride + 1 for v in view)
        if min(grid) < 1:
            raise ValueError(f"the view {tuple(view)} is smaller than the stem's {kernel}x{kernel} kernel")
        self.classifier = (classifier or DigitNet)(
            in_channels=stem_channels, num_classes=num_classes, input_size=grid
        )

    def localization_parameters(self) -> list:
        return []

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        self.check_input(images)
        x = self.normalize(low_res_view(images, self.view_scale))  # the same as normalizing first
        return {"logits": self.classifier(self.stem(x))}
