"""Classifiers for glimpses and whole images: ``features(x) -> (N, feature_dim)`` plus a linear head.

Both take normalized (N, C, h, w) inputs and end in global pooling, so any input size works;
``input_size`` is checked (it must survive the pooling) and kept for reference. Built as
``Net(in_channels=C, num_classes=K, input_size=(h, w), **config)``; ``num_classes=None`` builds the
trunk alone (``forward`` then returns the features), which is what a model that fuses the features
of several glimpses wants.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from stn.ops._checks import Size2, check_int, check_size

from .common import as_ints

__all__ = ["DigitNet", "CifarNet"]


def conv_bn(cin: int, cout: int, act: type) -> nn.Sequential:
    """3x3 convolution (no bias: the BatchNorm has one), BatchNorm, activation."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), act())


class _Backbone(nn.Module):
    """``trunk`` (convolutions ending in global pooling) followed by a linear ``head``."""

    feature_dim: int

    def _finish(self, num_classes: Optional[int], feature_dim: int, bias: bool, channels_last: bool) -> None:
        self.feature_dim = feature_dim
        self.channels_last = bool(channels_last)
        if self.channels_last:
            # NHWC convolutions are 1.7x faster on CPU (oneDNN) for DigitNet, and the layout GPUs
            # want under mixed precision; the conv weights keep it through .to(device).
            self.to(memory_format=torch.channels_last)
        if num_classes is None or num_classes == 0:
            self.num_classes = None
            self.head = None
        else:
            self.num_classes = check_int(num_classes, "num_classes")
            self.head = nn.Linear(feature_dim, num_classes, bias=bias)

    def features(self, x: Tensor) -> Tensor:
        """(N, C, h, w) normalized inputs -> (N, feature_dim)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.trunk(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, h, w) -> (N, num_classes) logits, or features when built with ``num_classes=None``."""
        f = self.features(x)
        return f if self.head is None else self.head(f)


class DigitNet(_Backbone):
    """Small CNN for 28x28 digits: four stages of 3x3 conv, 2x2 max-pool (not after the last),
    BatchNorm, ReLU; global average pooling; linear head. At 28x28 the stages run at 28, 14, 7
    and 3 pixels, so the last one sees the whole digit before the pooling.

    Pooling straight after each convolution, before BN and ReLU (as airbench does), runs the
    elementwise layers at a quarter of the resolution: on a CPU they are most of the time of a
    network this small.

    The default widths (16, 32, 64, 128) give 99k parameters; accuracy and speed: README.md, Results.

    Args:
        in_channels: C of the inputs.
        num_classes: size of the linear head; None for the trunk alone.
        input_size: (h, w) of the inputs; at least 2^(stages - 1) on each side.
        widths: channels of the stages (any number >= 1).
        channels_last: run the convolutions in NHWC memory layout (faster on CPU and GPU).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: Optional[int] = 10,
        input_size: Size2 = (28, 28),
        widths: Sequence[int] = (16, 32, 64, 128),
        channels_last: bool = True,
    ):
        super().__init__()
        check_int(in_channels, "in_channels")
        self.input_size = check_size(input_size, "input_size")
        widths = as_ints(widths, "widths")
        need = 2 ** (len(widths) - 1)
        if min(self.input_size) < need:
            raise ValueError(
                f"input_size {self.input_size} is too small for {len(widths)} stages with 2x2 pools "
                f"between them: need at least {need}x{need}"
            )
        layers = []
        cin = in_channels
        for i, w in enumerate(widths):
            layers.append(nn.Conv2d(cin, w, 3, padding=1, bias=False))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            cin = w
        layers += [nn.AdaptiveAvgPool2d(1)]
        self.trunk = nn.Sequential(*layers)
        self._finish(num_classes, cin, True, channels_last)


class CifarNet(_Backbone):
    """airbench-style CIFAR net: a conv-BN-GELU stem, then three blocks of
    (conv, 2x2 max-pool, BN, GELU, conv, BN, GELU), global max pooling, a bias-free linear head
    and a fixed output scale.

    Follows Keller Jordan's airbench94 (widths 64/256/256, no conv biases, output scaled by 1/9),
    with a learned 3x3 stem in place of its data-dependent whitening layer, and adaptive max
    pooling in place of its fixed 3x3 pool so that any input size works. With the defaults it has
    1.98M parameters (airbench94: 1.97M). CIFAR-10 accuracy: README.md, Results.

    Args:
        in_channels: C of the inputs.
        num_classes: size of the linear head; None for the trunk alone.
        input_size: (h, w) of the inputs; must be at least 8x8 (three 2x2 pools).
        widths: channels of the three blocks.
        stem: channels of the stem convolution.
        scale: factor applied to the logits (airbench: 1/9).
        channels_last: run the convolutions in NHWC memory layout (faster on CPU and GPU).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: Optional[int] = 10,
        input_size: Size2 = (32, 32),
        widths: Sequence[int] = (64, 256, 256),
        stem: int = 32,
        scale: float = 1 / 9,
        channels_last: bool = True,
    ):
        super().__init__()
        check_int(in_channels, "in_channels")
        check_int(stem, "stem")
        self.input_size = check_size(input_size, "input_size")
        widths = as_ints(widths, "widths")
        need = 2 ** len(widths)
        if min(self.input_size) < need:
            raise ValueError(
                f"input_size {self.input_size} is too small for {len(widths)} blocks with a 2x2 pool "
                f"each: need at least {need}x{need}"
            )
        self.scale = float(scale)
        layers = [conv_bn(in_channels, stem, nn.GELU)]
        cin = stem
        for w in widths:
            layers += [
                nn.Conv2d(cin, w, 3, padding=1, bias=False),
                nn.MaxPool2d(2),
                nn.BatchNorm2d(w),
                nn.GELU(),
                conv_bn(w, w, nn.GELU),
            ]
            cin = w
        layers += [nn.AdaptiveMaxPool2d(1)]
        self.trunk = nn.Sequential(*layers)
        self._finish(num_classes, cin, False, channels_last)

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out if self.head is None else out * self.scale
