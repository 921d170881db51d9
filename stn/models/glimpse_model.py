"""The base of the models that look through glimpses (attention, affine_stn, multi_glimpse).

Beside :class:`~stn.models.common.ImageModel` (what every model has: sizes, normalization) it adds
what every glimpse model has: a localizer on the whole image and how glimpses sample the image.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from torch import nn

from stn.ops._checks import Fill, Size2, check_fill, check_padding_mode, check_size

from .common import ImageModel
from .localization import Localizer

__all__ = ["GlimpseModel"]


class GlimpseModel(ImageModel):
    """Base of the models that look through glimpses: a localizer on the whole image, and how the
    glimpses sample it.

    Sets ``localizer`` (``localizer(in_channels=C, image_size=(H, W))``, default
    :class:`Localizer`), ``glimpse_size`` (h, w; default the image size), ``padding_mode`` and
    ``fill`` (checked here, so a bad value fails at construction, not at the first batch).
    """

    def __init__(
        self,
        localizer: Optional[Callable[..., nn.Module]],
        glimpse_size: Optional[Size2],
        padding_mode: str,
        fill: Fill,
        in_channels: int,
        num_classes: int,
        image_size: Size2,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__(in_channels, num_classes, image_size, mean, std)
        self.glimpse_size = (
            self.image_size if glimpse_size is None else check_size(glimpse_size, "glimpse_size")
        )
        self.padding_mode = check_padding_mode(padding_mode)
        self.fill = check_fill(fill, in_channels)
        self.localizer = (localizer or Localizer)(in_channels=in_channels, image_size=self.image_size)
