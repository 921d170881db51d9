"""Images as people hold them (PIL images, numpy arrays, tensors) to a model's input, and back.

Conventions, for every function here:

- **Layout.** Tensors are channel-first: ``(C, H, W)`` one image, ``(B, C, H, W)`` a batch. numpy
  arrays and PIL images are channel-last: ``(H, W)`` grey or ``(H, W, C)``.
- **Values.** uint8 (0-255) and uint16 (0-65535, 16-bit PNG) are scaled to float32 in ``[0, 1]``;
  floating-point inputs must already be in ``[0, 1]`` (a float array in 0-255 is rejected, not
  guessed at). Other dtypes are rejected.
- **Channels.** 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA). Alpha is dropped, not composited,
  and palette (``P``), ``1``, CMYK and YCbCr images are converted to RGB first: that is how the
  training data was decoded (PIL ``convert("RGB")``, torchvision ``ImageReadMode.RGB``). RGB becomes
  grey by the ITU-R 601-2 luma weights (0.299, 0.587, 0.114: PIL's ``"L"``), grey becomes RGB by
  repeating it.
- **Size.** :class:`Preprocess` brings an image to the model's ``(H, W)`` the way the image-folder
  data does (optional first resize, then a resize or a center crop; bilinear, anti-aliased) and
  returns the *frame* that maps the model's pixel coordinates back to the input's, so boxes can
  be reported in the input image's own pixels: ``x_input = ox + sx * x_model`` and
  ``y_input = oy + sy * y_model``, a frame being ``(sx, sy, ox, oy)``.

Boxes are ``(x1, y1, x2, y2)`` in pixels of the image they refer to; the whole image is
``(0, 0, W, H)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "Preprocess",
    "as_images",
    "boxes_to_input",
    "numpy_to_tensor",
    "pil_to_tensor",
    "tensor_to_numpy",
    "tensor_to_pil",
    "to_channels",
]

# ITU-R 601-2, as PIL's convert("L"); they sum to 1, so grey -> RGB -> grey is the identity
LUMA = (0.299, 0.587, 0.114)
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}


def pil_to_tensor(image: Image.Image) -> Tensor:
    """A PIL image as float32 ``(C, H, W)`` in [0, 1] at its own size, C in 1-4 (alpha kept).

    8-bit modes are divided by 255, 16-bit grey (``I;16``, and ``I`` from 16-bit PNGs) by 65535
    (PIL's own ``convert("L")`` would clip them at 255). Palette images become RGB, or RGBA
    when the palette has transparency.

    >>> pil_to_tensor(Image.new("L", (3, 2), 255)).shape
    torch.Size([1, 2, 3])
    >>> pil_to_tensor(Image.new("I;16", (1, 1), 65535)).tolist()
    [[[1.0]]]
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"a PIL image of mode {mode!r} must hold 16-bit values (0-65535), "
                f"got {values.min():g}..{values.max():g}"
            )
        return torch.from_numpy(values / 65535).float()[None]
    if mode == "F":
        return numpy_to_tensor(np.asarray(image, dtype=np.float32))
    if mode == "1":
        image = image.convert("L")
    elif mode not in ("L", "LA", "RGB", "RGBA"):  # palette, CMYK, YCbCr, premultiplied alpha, ...
        alpha = mode.endswith(("A", "a")) or "transparency" in image.info
        try:
            image = image.convert("RGBA" if alpha else "RGB")
        except ValueError as err:
            raise ValueError(f"PIL image mode {mode!r} cannot be converted to RGB ({err})") from None
    return numpy_to_tensor(np.asarray(image))


def numpy_to_tensor(array: np.ndarray) -> Tensor:
    """A numpy image ``(H, W)`` or ``(H, W, C)`` (C in 1-4) as float32 ``(C, H, W)`` in [0, 1].

    >>> numpy_to_tensor(np.full((2, 3), 255, np.uint8)).shape
    torch.Size([1, 2, 3])
    >>> numpy_to_tensor(np.zeros((20, 30, 5), np.uint8))
    Traceback (most recent call last):
    ...
    ValueError: a numpy image must be (H, W) or (H, W, C) with C in 1-4 channels, got shape (20, 30, 5)
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(array).__name__}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and not 1 <= array.shape[2] <= 4):
        raise ValueError(
            "a numpy image must be (H, W) or (H, W, C) with C in 1-4 channels, "
            f"got shape {tuple(array.shape)}"
            + (
                "; for channel-first data pass a torch tensor"
                if array.ndim == 3 and array.shape[0] <= 4
                else ""
            )
        )
    chw = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return _scale(torch.from_numpy(np.array(chw)), "numpy image")  # a copy: PIL's arrays are read-only


def _scale(image: Tensor, what: str) -> Tensor:
    """uint8 / uint16 / float [0, 1] -> float32 in [0, 1], with one message for anything else."""
    if 0 in image.shape:
        raise ValueError(f"the {what} is empty: shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:  # exactly as the training data: stn.data.base.to_float
        return image.float().div_(255)
    if image.dtype == torch.uint16:
        return image.float().div_(65535)
    if not image.is_floating_point():
        raise TypeError(f"the {what} must be uint8, uint16 or float in [0, 1], got dtype {image.dtype}")
    image = image.float()
    low, high = float(image.min()), float(image.max())
    if not (0 <= low and high <= 1):  # also catches NaN
        raise ValueError(
            f"a float {what} must have values in [0, 1], got {low:g}..{high:g}"
            + (" (divide 0-255 values by 255)" if high > 1 else "")
        )
    return image


def to_channels(image: Tensor, channels: int) -> Tensor:
    """``(..., C, H, W)`` with C in 1-4 as ``(..., channels, H, W)``, channels 1 or 3 (see module doc).

    >>> to_channels(torch.full((3, 2, 2), 0.5), 1)[0, 0, 0].item()  # luma weights sum to 1
    0.5
    >>> to_channels(torch.ones(1, 2, 2), 3).shape
    torch.Size([3, 2, 2])
    """
    c = image.shape[-3]
    if not 1 <= c <= 4:
        raise ValueError(f"images must have 1-4 channels (grey, grey+alpha, RGB, RGBA), got {c}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = image[..., : 1 if c <= 2 else 3, :, :]  # drop alpha
    if image.shape[-3] == channels:
        return image
    if channels == 3:
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:])
    luma = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * luma).sum(-3, keepdim=True)


def as_images(x: Any) -> List[Tensor]:
    """Any accepted input as a list of float32 ``(C, H, W)`` images in [0, 1], C in 1-4.

    Accepted: a PIL image; a numpy array ``(H, W)`` or ``(H, W, C)``; a tensor ``(C, H, W)`` or
    ``(B, C, H, W)``; or a list/tuple of any of these (sizes may differ). uint8, uint16 or float in
    [0, 1] (see the module doc). Raises ``TypeError``/``ValueError`` naming what was received.

    >>> [t.shape for t in as_images(torch.zeros(2, 3, 4, 5, dtype=torch.uint8))]
    [torch.Size([3, 4, 5]), torch.Size([3, 4, 5])]
    >>> as_images(torch.zeros(1, 1, 1, 4, 5))
    Traceback (most recent call last):
    ...
    ValueError: a tensor must be (C, H, W) or (B, C, H, W), got shape (1, 1, 1, 4, 5)
    """
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("got an empty list of images")
        out: List[Tensor] = []
        for i, item in enumerate(x):
            if isinstance(item, (list, tuple)):
                raise TypeError(f"image {i} of the list is a {type(item).__name__}: lists cannot be nested")
            try:
                out += as_images(item)
            except (TypeError, ValueError) as err:
                raise type(err)(f"image {i} of the list: {err}") from None
        return out
    if isinstance(x, Image.Image):
        return [pil_to_tensor(x)]
    if isinstance(x, np.ndarray):
        return [numpy_to_tensor(x)]
    if isinstance(x, Tensor):
        if x.dim() not in (3, 4):
            hint = "; for one grey (H, W) image pass x[None]" if x.dim() == 2 else ""
            raise ValueError(f"a tensor must be (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}{hint}")
        if not 1 <= x.shape[-3] <= 4:
            raise ValueError(
                f"a tensor must have 1-4 channels in dim -3 (channel-first: (C, H, W) or (B, C, H, W)), "
                f"got shape {tuple(x.shape)}"
            )
        batch = _scale(x.detach(), "tensor")
        return list(batch[None] if batch.dim() == 3 else batch)
    raise TypeError(
        "images must be a PIL image, a numpy array (H, W) or (H, W, C), a tensor (C, H, W) or "
        f"(B, C, H, W), or a list of them; got {type(x).__name__}"
    )


def tensor_to_numpy(image: Tensor) -> np.ndarray:
    """A ``(C, H, W)`` image (float in [0, 1] or uint8; C 1 or 3) as uint8 ``(H, W)`` or ``(H, W, 3)``.

    >>> tensor_to_numpy(torch.ones(1, 2, 3)).tolist()
    [[255, 255, 255], [255, 255, 255]]
    """
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (C, H, W) image with C 1 or 3, got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    array = image.cpu().permute(1, 2, 0).numpy()
    return array[:, :, 0] if array.shape[2] == 1 else array


def tensor_to_pil(image: Tensor) -> Image.Image:
    """A ``(C, H, W)`` image (float in [0, 1] or uint8; C 1 or 3) as a PIL ``L`` or ``RGB`` image.

    >>> tensor_to_pil(torch.zeros(3, 2, 4)).size  # PIL sizes are (W, H)
    (4, 2)
    """
    return Image.fromarray(tensor_to_numpy(image))


Size = Union[int, Sequence[int]]


@dataclass(frozen=True)
class Preprocess:
    """Brings one ``(C, H0, W0)`` image in [0, 1] to the model's input ``(channels, *size)``.

    Args:
        channels: the model's input channels (1 or 3).
        size: the model's ``(H, W)``.
        resize: first resize, as the image-folder data's ``resize``: an int sets the shorter side
            (aspect ratio kept), a pair sets ``(H, W)``; None: none.
        center_crop: reach ``size`` by a center crop (after ``resize``) instead of a resize.

    Calling it returns ``(image, frame)``: the image ``(channels, H, W)`` and the frame
    ``(sx, sy, ox, oy)`` with ``x_input = ox + sx * x_model``, ``y_input = oy + sy * y_model``.

    >>> image, frame = Preprocess(1, (28, 28))(torch.rand(3, 56, 112))
    >>> tuple(image.shape), frame
    ((1, 28, 28), (4.0, 2.0, 0.0, 0.0))
    """

    channels: int
    size: Tuple[int, int]
    resize: Optional[Size] = None
    center_crop: bool = False

    def __call__(self, image: Tensor) -> Tuple[Tensor, Tuple[float, float, float, float]]:
        image = to_channels(image, self.channels)
        h0, w0 = image.shape[-2:]
        if self.resize is not None:
            image = TF.resize(image, _resize_arg(self.resize), antialias=True)
        h1, w1 = image.shape[-2:]
        sx, sy = w0 / w1, h0 / h1
        ox = oy = 0.0
        target = tuple(self.size)
        if tuple(image.shape[-2:]) != target:
            if self.center_crop:
                # torchvision's center_crop offsets: int(round((H - h) / 2.0)) (padding when smaller)
                top, left = int(round((h1 - target[0]) / 2.0)), int(round((w1 - target[1]) / 2.0))
                image = TF.center_crop(image, list(target))
                ox, oy = sx * left, sy * top
            else:
                image = TF.resize(image, list(target), antialias=True)
                sx, sy = sx * w1 / target[1], sy * h1 / target[0]
        return image.clamp(0, 1).contiguous(), (float(sx), float(sy), float(ox), float(oy))


def _resize_arg(resize: Size) -> List[int]:
    if isinstance(resize, int):
        return [resize]
    return [int(s) for s in resize]


def boxes_to_input(boxes: Tensor, frames: Tensor) -> Tensor:
    """Boxes ``(N, G, 4)`` in the model's pixels to each input's own pixels, by frames ``(N, 4)``.

    >>> boxes_to_input(torch.tensor([[[0.0, 0.0, 28.0, 28.0]]]), torch.tensor([[4.0, 2.0, 0.0, 0.0]]))
    tensor([[[  0.,   0., 112.,  56.]]])
    """
    sx, sy, ox, oy = frames.to(boxes).unbind(-1)
    scale = torch.stack([sx, sy, sx, sy], -1)[:, None]
    offset = torch.stack([ox, oy, ox, oy], -1)[:, None]
    return boxes * scale + offset
