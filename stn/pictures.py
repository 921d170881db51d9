"""Pictures of what a model looks at: tensors in, uint8 image tensors out.

One drawing for every place that shows boxes: the TensorBoard images of :mod:`stn.callbacks`,
``python -m stn.data.preview`` and the notebooks. Plain PyTorch, torchvision.utils and PIL (for
text); no Lightning, no TensorBoard, no files.

Colour convention, the same everywhere:

- true box and true class: green (:data:`TRUE_COLOUR`); with several true boxes per image and a
  class for each (Megapixel MNIST's ``digit_labels``), those of another class than the image's
  label in pale green (:data:`OTHER_TRUE_COLOUR`);
- predicted box and predicted class: red (:data:`PRED_COLOUR`); with K glimpses, glimpse k's box
  and the frame of its glimpse tiles in ``GLIMPSE_COLOURS[k]`` (glimpse 1 is red);
- a red frame around a tile: its prediction is wrong;
- a coarse-to-fine model's first-look boxes (before refinement): grey (:data:`COARSE_COLOUR`).

Boxes are ``(x1, y1, x2, y2)`` in pixels of the image they refer to (full image ``(0, 0, W, H)``);
their outline is drawn one pixel outside the box's pixels, so it never covers what the box holds.
A legend strip under each grid says what the colours mean. Images larger than ``max_side`` are
drawn shrunk to it (anti-aliased), their boxes with them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, make_grid

__all__ = [
    "TRUE_COLOUR",
    "PRED_COLOUR",
    "OTHER_TRUE_COLOUR",
    "COARSE_COLOUR",
    "GLIMPSE_COLOURS",
    "glimpse_colour",
    "to_rgb",
    "fit",
    "box_tiles",
    "box_grid",
    "glimpse_grid",
]

Colour = Tuple[int, int, int]
TRUE_COLOUR: Colour = (0, 220, 0)
PRED_COLOUR: Colour = (255, 40, 40)
# true boxes of objects of another class than the image's label (not a glimpse colour)
OTHER_TRUE_COLOUR: Colour = (170, 255, 170)
# the first look of a coarse-to-fine model (the box before its refinement)
COARSE_COLOUR: Colour = (150, 150, 150)
# glimpse k's colour; the first is PRED_COLOUR, so a one-glimpse model's box is plain red
GLIMPSE_COLOURS: Tuple[Colour, ...] = (
    PRED_COLOUR,
    (255, 170, 0),
    (0, 190, 255),
    (230, 60, 255),
    (255, 255, 60),
    (130, 130, 255),
)
WRONG_COLOUR: Colour = PRED_COLOUR
PAD_COLOUR: Colour = (128, 128, 128)  # grid padding
STRIP_COLOUR: Colour = (32, 32, 32)  # background of titles and legends
TEXT_COLOUR: Colour = (235, 235, 235)
FRAME = 3  # px of frame around every tile: red when wrong, else the padding grey
PADDING = 2  # px between tiles (make_grid)


def glimpse_colour(k: int) -> Colour:
    """The colour of glimpse ``k`` (0-based), cycling through :data:`GLIMPSE_COLOURS`."""
    return GLIMPSE_COLOURS[k % len(GLIMPSE_COLOURS)]


def to_rgb(images: Tensor, scale: int = 1) -> Tensor:
    """(N, C, H, W) float images in [0, 1], C = 1 or 3 -> (N, 3, scale*H, scale*W) uint8, upscaled
    by pixel repetition (nearest), so each input pixel stays a visible square."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    x = (images.detach().float().cpu().nan_to_num(0.0).clamp(0, 1) * 255).round().to(torch.uint8)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def fit(images: Tensor, scale: int, max_side: Optional[int]) -> Tuple[Tensor, int, Tuple[float, float]]:
    """Images as they are drawn at most ``max_side`` pixels a side: the integer upscaling lowered
    (down to 1) to fit, and images still larger shrunk to fit (anti-aliased, aspect kept).

    Args:
        images: (N, C, H, W) float.
        scale: the wanted integer upscaling.
        max_side: the largest side of a drawn image; None: no limit.

    Returns:
        the (N, C, h, w) images to draw, the upscaling to draw them with, and the ``(x, y)``
        factors that take a pixel box of the input images to the returned ones.
    """
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"max_side must be None or a positive integer, got {max_side!r}")
    height, width = images.shape[-2:]
    if max_side is None or scale * max(height, width) <= max_side:
        return images, scale, (1.0, 1.0)
    if max(height, width) <= max_side:
        return images, max(1, max_side // max(height, width)), (1.0, 1.0)
    f = max_side / max(height, width)
    size = (max(1, round(height * f)), max(1, round(width * f)))
    small = torch.nn.functional.interpolate(
        images.detach().float(), size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return small, 1, (size[1] / width, size[0] / height)


# -- text -----------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _font_size(width: int) -> int:
    return max(10, min(16, width // 10))


def _text_width(text: str, size: int) -> int:
    return int(round(_font(size).getlength(text)))


def _strip(width: int, items: Sequence[Tuple[str, Colour, Optional[Colour]]], size: int) -> Tensor:
    """A (3, h, width) uint8 strip of ``(text, text colour, swatch colour or None)`` items, laid out
    left to right and wrapped onto more lines when they do not fit."""
    gap, line = size // 2, size + 4
    lines: List[List[Tuple[int, str, Colour, Optional[Colour]]]] = [[]]
    x = gap
    for text, colour, swatch in items:
        need = _text_width(text, size) + (size + 3 if swatch else 0)
        if lines[-1] and x + need > width - gap:
            lines.append([])
            x = gap
        lines[-1].append((x, text, colour, swatch))
        x += need + 2 * gap
    picture = Image.new("RGB", (width, line * len(lines) + 2), STRIP_COLOUR)
    draw = ImageDraw.Draw(picture)
    for row, entries in enumerate(lines):
        y = 2 + row * line
        for x, text, colour, swatch in entries:
            if swatch:
                draw.rectangle([x, y + 2, x + size - 1, y + size - 1], outline=swatch, width=2)
                x += size + 3
            draw.text((x, y), text, fill=colour, font=_font(size))
    return torch.from_numpy(_as_array(picture)).permute(2, 0, 1).contiguous()


def _as_array(picture: Image.Image) -> np.ndarray:
    return np.array(picture, dtype=np.uint8)


def _title(width: int, pred: Optional[str], true: Optional[str]) -> Tensor:
    """(3, h, width) strip: the predicted class in red at the left, the true class in green at the
    right; names are shortened until both fit."""
    size = _font_size(width)
    pred, true = pred or "", true or ""
    while pred or true:
        if _text_width(pred, size) + _text_width(true, size) + size <= width - 4:
            break
        if len(pred) >= len(true):
            pred = pred[:-1]
        else:
            true = true[:-1]
    picture = Image.new("RGB", (width, size + 6), STRIP_COLOUR)
    draw = ImageDraw.Draw(picture)
    if pred:
        draw.text((3, 2), pred, fill=PRED_COLOUR, font=_font(size))
    if true:
        draw.text((width - 3 - _text_width(true, size), 2), true, fill=TRUE_COLOUR, font=_font(size))
    return torch.from_numpy(_as_array(picture)).permute(2, 0, 1).contiguous()


# -- boxes ------------------------------------------------------------------------------------------
def _outlines(boxes: Tensor, scale: int, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """Pixel boxes (M, 4) of an image -> outline coordinates in the ``scale``-times larger picture
    (one pixel outside the box, corners sorted, clamped inside), and the (M,) mask of finite boxes
    (non-finite ones cannot be drawn and are left out)."""
    boxes = boxes.detach().float().cpu().reshape(-1, 4)
    finite = torch.isfinite(boxes).all(1)
    b = boxes[finite] * scale
    x1, x2 = torch.minimum(b[:, 0], b[:, 2]), torch.maximum(b[:, 0], b[:, 2])
    y1, y2 = torch.minimum(b[:, 1], b[:, 3]), torch.maximum(b[:, 1], b[:, 3])
    b = torch.stack([x1 - 1, y1 - 1, x2, y2], 1).round()
    b[:, 0::2] = b[:, 0::2].clamp(0, width - 1)
    b[:, 1::2] = b[:, 1::2].clamp(0, height - 1)
    return b, finite


def _framed(tile: Tensor, colour: Colour, frame: int = FRAME) -> Tensor:
    c, h, w = tile.shape
    out = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).repeat(1, h + 2 * frame, w + 2 * frame)
    out[:, frame : frame + h, frame : frame + w] = tile
    return out


def box_tiles(
    images: Tensor,
    pred_boxes: Optional[Tensor] = None,
    true_boxes: Optional[Tensor] = None,
    pred_labels: Optional[Tensor] = None,
    true_labels: Optional[Tensor] = None,
    class_names: Optional[Sequence[str]] = None,
    scale: int = 1,
    true_box_labels: Optional[Tensor] = None,
    max_side: Optional[int] = None,
    coarse_boxes: Optional[Tensor] = None,
) -> Tensor:
    """One tile per image: the image upscaled (or shrunk, see ``max_side``) with its boxes drawn,
    under a title strip with the classes, in a frame that is red when the prediction is wrong.

    Args:
        images: (N, C, H, W) float in [0, 1], C = 1 or 3.
        pred_boxes: (N, 4) or (N, K, 4) predicted pixel boxes (glimpse k in ``glimpse_colour(k)``);
            non-finite boxes are not drawn.
        true_boxes: (N, 4) or (N, T, 4) true pixel boxes, green (see ``true_box_labels``).
        pred_labels, true_labels: (N,) class indices; the title shows the predicted class (red,
            left) and the true class (green, right). No title when both are None.
        class_names: names for the class indices (default: the indices).
        scale: integer upscaling of the images (nearest) before drawing.
        true_box_labels: (N, T) the class of each true box (needs ``true_labels``): boxes of the
            image's label green, the others :data:`OTHER_TRUE_COLOUR`. Default: all green.
        max_side: draw the images at most this many pixels a side (:func:`fit`: the upscaling
            lowered, larger images shrunk with their boxes); None: at ``scale`` times their size.
        coarse_boxes: (N, 4) or (N, K, 4) first-look pixel boxes of a coarse-to-fine model, grey,
            under the others.

    Returns:
        (N, 3, T + h + 2*FRAME, w + 2*FRAME) uint8, T the title height (0 without labels), h x w
        the drawn image: scale*H x scale*W, less where ``max_side`` asks for it.
    """
    images, scale, (fx, fy) = fit(images, scale, max_side)
    x = to_rgb(images, scale)
    n, _, height, width = x.shape
    for name, value in (
        ("pred_boxes", pred_boxes),
        ("true_boxes", true_boxes),
        ("coarse_boxes", coarse_boxes),
    ):
        if value is not None and (value.shape[0] != n or value.shape[-1] != 4):
            raise ValueError(f"{name} must be (N, 4) or (N, K, 4) with N={n}, got {tuple(value.shape)}")
    for name, value in (("pred_labels", pred_labels), ("true_labels", true_labels)):
        if value is not None and value.shape != (n,):
            raise ValueError(f"{name} must be (N,) with N={n}, got {tuple(value.shape)}")
    if true_box_labels is not None:
        if true_boxes is None or true_labels is None:
            raise ValueError("true_box_labels needs true_boxes and true_labels")
        if true_boxes.dim() != 3 or true_box_labels.shape != true_boxes.shape[:2]:
            raise ValueError(
                f"true_box_labels must be (N, T) for true_boxes (N, T, 4) {tuple(true_boxes.shape)}, "
                f"got {tuple(true_box_labels.shape)}"
            )
        other = (true_box_labels.cpu() != true_labels.cpu()[:, None]).tolist()
        true_colours = [[OTHER_TRUE_COLOUR if o else TRUE_COLOUR for o in row] for row in other]
    # boxes in pixels of the drawn (possibly shrunk) images
    factor = torch.tensor([fx, fy, fx, fy])
    pred_boxes = None if pred_boxes is None else pred_boxes.detach().float().cpu() * factor
    true_boxes = None if true_boxes is None else true_boxes.detach().float().cpu() * factor
    coarse_boxes = None if coarse_boxes is None else coarse_boxes.detach().float().cpu() * factor

    def name_of(label: Tensor) -> str:
        k = int(label)
        return class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)

    tiles = []
    for i in range(n):
        tile = x[i]
        boxes, colours = [], []
        if coarse_boxes is not None:
            b, finite = _outlines(coarse_boxes[i], scale, height, width)
            boxes.append(b)
            colours += [COARSE_COLOUR] * int(finite.sum())
        if true_boxes is not None:
            b, finite = _outlines(true_boxes[i], scale, height, width)
            boxes.append(b)
            own = true_colours[i] if true_box_labels is not None else [TRUE_COLOUR] * len(finite)
            colours += [c for c, keep in zip(own, finite.tolist()) if keep]
        if pred_boxes is not None:
            b, finite = _outlines(pred_boxes[i], scale, height, width)
            boxes.append(b)
            colours += [glimpse_colour(int(k)) for k in torch.nonzero(finite).flatten()]
        if colours:
            tile = draw_bounding_boxes(tile, torch.cat(boxes), colors=colours, width=max(1, scale // 2))
        if pred_labels is not None or true_labels is not None:
            pred = None if pred_labels is None else name_of(pred_labels[i])
            true = None if true_labels is None else name_of(true_labels[i])
            tile = torch.cat([_title(width, pred, true), tile], 1)
        wrong = pred_labels is not None and true_labels is not None and pred_labels[i] != true_labels[i]
        tiles.append(_framed(tile, WRONG_COLOUR if wrong else PAD_COLOUR))
    return torch.stack(tiles)


def _grid(tiles: Tensor, nrow: int) -> Tensor:
    return make_grid(tiles, nrow=nrow, padding=PADDING, pad_value=PAD_COLOUR[0])


def box_grid(
    images: Tensor,
    pred_boxes: Optional[Tensor] = None,
    true_boxes: Optional[Tensor] = None,
    pred_labels: Optional[Tensor] = None,
    true_labels: Optional[Tensor] = None,
    class_names: Optional[Sequence[str]] = None,
    scale: int = 1,
    nrow: int = 8,
    legend: bool = True,
    true_box_labels: Optional[Tensor] = None,
    max_side: Optional[int] = None,
    coarse_boxes: Optional[Tensor] = None,
) -> Tensor:
    """:func:`box_tiles` laid out in rows of ``nrow`` (``PADDING`` px between tiles), with a legend
    strip underneath naming the colours of what is drawn.

    Returns:
        (3, H', W') uint8.
    """
    tiles = box_tiles(
        images,
        pred_boxes,
        true_boxes,
        pred_labels,
        true_labels,
        class_names,
        scale,
        true_box_labels,
        max_side,
        coarse_boxes,
    )
    grid = _grid(tiles, nrow)
    if not legend:
        return grid
    items: List[Tuple[str, Colour, Optional[Colour]]] = []
    glimpses = 0 if pred_boxes is None else (1 if pred_boxes.dim() == 2 else pred_boxes.shape[1])
    if glimpses == 1:
        items.append(("predicted box", TEXT_COLOUR, PRED_COLOUR))
    items += [
        (f"glimpse {k + 1} box", TEXT_COLOUR, glimpse_colour(k))
        for k in range(glimpses if glimpses > 1 else 0)
    ]
    if coarse_boxes is not None:
        items.append(("first look (before refinement)", TEXT_COLOUR, COARSE_COLOUR))
    if true_boxes is not None and true_box_labels is not None:
        items.append(("true box of the label's class", TEXT_COLOUR, TRUE_COLOUR))
        items.append(("true box of another class", TEXT_COLOUR, OTHER_TRUE_COLOUR))
    elif true_boxes is not None:
        items.append(("true box", TEXT_COLOUR, TRUE_COLOUR))
    if pred_labels is not None or true_labels is not None:
        title = " / ".join(
            what
            for what, there in (
                ("predicted class (red, left)", pred_labels),
                ("true class (green, right)", true_labels),
            )
            if there is not None
        )
        items.append((f"title: {title}", TEXT_COLOUR, None))
    if pred_labels is not None and true_labels is not None:
        items.append(("wrong prediction", TEXT_COLOUR, WRONG_COLOUR))
    if not items:
        return grid
    return torch.cat([grid, _strip(grid.shape[-1], items, _font_size(160))], 1)


# -- glimpses ---------------------------------------------------------------------------------------
def glimpse_grid(
    glimpses: Tensor,
    retina: Optional[Tensor] = None,
    scale: int = 1,
    nrow: int = 8,
    retina_scales: Optional[Sequence[float]] = None,
    legend: bool = True,
) -> Tensor:
    """What the classifier saw, one cell per glimpse: the glimpse upscaled by ``scale`` (the same as
    the inputs' pictures), with the retina's context levels beside it, left to right.

    Layout: one glimpse per image (``(B, C, h, w)``) in rows of ``nrow`` cells; K glimpses per image
    (``(B, K, C, h, w)``) one row per image, cell k framed in ``glimpse_colour(k)`` like its box.

    Args:
        glimpses: (B, C, h, w) or (B, K, C, h, w) float in [0, 1].
        retina: None, or (B, K, S, C, h, w) every retina level (level 0 is the glimpse itself).
        scale: integer upscaling.
        nrow: cells per row when there is one glimpse per image.
        retina_scales: the S box-size multipliers, for the legend (default 1, 2, 4, ...).

    Returns:
        (3, H', W') uint8.
    """
    g = glimpses.unsqueeze(1) if glimpses.dim() == 4 else glimpses
    if g.dim() != 5:
        raise ValueError(f"glimpses must be (B, C, h, w) or (B, K, C, h, w), got {tuple(glimpses.shape)}")
    b, k = g.shape[:2]
    levels = g.unsqueeze(2) if retina is None else retina
    if levels.dim() != 6 or levels.shape[:2] != (b, k):
        raise ValueError(f"retina must be (B, K, S, C, h, w) with B, K = {b}, {k}, got {tuple(levels.shape)}")
    s = levels.shape[2]
    pictures = to_rgb(levels.reshape(-1, *levels.shape[-3:]), scale)
    pictures = pictures.view(b, k, s, *pictures.shape[1:])
    sep = torch.full((3, pictures.shape[-2], 2), PAD_COLOUR[0], dtype=torch.uint8)
    cells = []
    for i in range(b):
        for j in range(k):
            parts = [p for level in pictures[i, j] for p in (level, sep)][:-1]
            cells.append(_framed(torch.cat(parts, -1), glimpse_colour(j) if k > 1 else PAD_COLOUR))
    grid = _grid(torch.stack(cells), k if k > 1 else nrow)
    if not legend:
        return grid
    items: List[Tuple[str, Colour, Optional[Colour]]] = []
    if k > 1:
        items += [(f"glimpse {j + 1}", TEXT_COLOUR, glimpse_colour(j)) for j in range(k)]
        items.append(("one row per image", TEXT_COLOUR, None))
    if s > 1:
        factors = list(retina_scales) if retina_scales is not None else [2**i for i in range(s)]
        names = ", ".join("the box" if f == 1 else f"{f:g}x the box" for f in factors)
        items.append((f"left to right: {names}", TEXT_COLOUR, None))
    if not items:
        return grid
    return torch.cat([grid, _strip(grid.shape[-1], items, _font_size(160))], 1)
