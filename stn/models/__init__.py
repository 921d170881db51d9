"""Models: plain ``nn.Module``s mapping images (B, C, H, W) in [0, 1] to a dict of outputs.

Every model is built as ``Model(..., in_channels=C, num_classes=K, image_size=(H, W), mean=...,
std=...)`` and returns ``{"logits": (B, K), ...}``; glimpse models add ``"boxes"`` (pixel
``x1, y1, x2, y2``) and ``"glimpses"`` (unnormalized). ``localization_parameters()`` lists the
parameters that want their own learning rate.
"""

from .affine_stn import AffineSTN
from .attention import AttentionModel
from .backbones import CifarNet, DigitNet
from .cnn import CNNModel
from .glimpse_model import GlimpseModel
from .localization import AffineHead, BoxHead, BoxRefiner, Localizer
from .multi_glimpse import MultiGlimpseModel
from .strided_cnn import StridedCNN
from .topk_glimpse import ScoreMap, TopKGlimpseModel

__all__ = [
    "AffineHead",
    "AffineSTN",
    "AttentionModel",
    "BoxHead",
    "BoxRefiner",
    "CifarNet",
    "CNNModel",
    "DigitNet",
    "GlimpseModel",
    "Localizer",
    "MultiGlimpseModel",
    "ScoreMap",
    "StridedCNN",
    "TopKGlimpseModel",
]
