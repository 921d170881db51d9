"""stn.pictures: tensors in, uint8 pictures out; boxes, class titles, frames, glimpses, legends."""

from __future__ import annotations

import pytest
import torch

from stn import pictures
from stn.pictures import FRAME, PAD_COLOUR, PRED_COLOUR, TRUE_COLOUR, box_grid, box_tiles, glimpse_grid

pytestmark = pytest.mark.usefixtures("single_thread")


def colour_mask(picture: torch.Tensor, colour) -> torch.Tensor:
    """(H, W) bool: pixels of exactly ``colour`` in a (3, H, W) uint8 picture."""
    return (picture == torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)).all(0)


def reddish(picture: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: red-dominated pixels (anti-aliased red text)."""
    r, g, b = picture.int()
    return (r > 150) & (g < 110) & (b < 110)


def greenish(picture: torch.Tensor) -> torch.Tensor:
    r, g, b = picture.int()
    return (g > 150) & (r < 110) & (b < 110)


def bbox_of(mask: torch.Tensor):
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def digit(size=10):
    image = torch.zeros(1, 1, size, size)
    image[0, 0, 3:6, 2:7] = 1.0  # its box: (2, 3, 7, 6)
    return image, torch.tensor([[2.0, 3.0, 7.0, 6.0]])


def test_outline_is_drawn_just_outside_the_box():
    image, box = digit()
    tile = box_tiles(image, true_boxes=box)[0]
    assert tile.dtype == torch.uint8 and tile.shape == (3, 10 + 2 * FRAME, 10 + 2 * FRAME)
    inner = tile[:, FRAME:-FRAME, FRAME:-FRAME]  # the frame around the tile is the padding grey
    assert bbox_of(colour_mask(inner, TRUE_COLOUR)) == (1, 2, 7, 6)  # one pixel around the digit
    assert (inner[:, 3:6, 2:7] == 255).all()  # the digit's pixels are untouched
    # upscaled: the same box outline scale times further out, still outside the digit
    tile = box_tiles(image, true_boxes=box, scale=3)[0][:, FRAME:-FRAME, FRAME:-FRAME]
    assert bbox_of(colour_mask(tile, TRUE_COLOUR)) == (5, 8, 21, 18)
    assert (tile[:, 9:18, 6:21] == 255).all()


def test_predicted_boxes_take_their_glimpse_colours_and_non_finite_ones_are_skipped():
    image = torch.zeros(2, 1, 20, 20)
    boxes = torch.tensor(
        [
            [[2.0, 2.0, 8.0, 8.0], [10.0, 10.0, 18.0, 18.0]],
            [[float("nan"), 0.0, 5.0, 5.0], [1.0, 1.0, 9.0, 9.0]],
        ]
    )
    tiles = box_tiles(image, pred_boxes=boxes)
    first, second = pictures.glimpse_colour(0), pictures.glimpse_colour(1)
    assert first == PRED_COLOUR and first != second
    assert bbox_of(colour_mask(tiles[0], first)) == (1 + FRAME, 1 + FRAME, 8 + FRAME, 8 + FRAME)
    assert bbox_of(colour_mask(tiles[0], second)) == (9 + FRAME, 9 + FRAME, 18 + FRAME, 18 + FRAME)
    assert not colour_mask(tiles[1], first).any()  # the NaN box of glimpse 1 is not drawn
    assert bbox_of(colour_mask(tiles[1], second)) == (FRAME, FRAME, 9 + FRAME, 9 + FRAME)


def test_tiles_carry_the_classes_and_wrong_ones_a_red_frame():
    image, box = digit(40)
    plain = box_tiles(image, box, box)[0]
    right = box_tiles(image, box, box, torch.tensor([3]), torch.tensor([3]))[0]
    wrong = box_tiles(image, box, box, torch.tensor([5]), torch.tensor([3]))[0]
    title = right.shape[1] - plain.shape[1]
    assert title > 8 and right.shape == wrong.shape and right.shape[2] == plain.shape[2]
    # below the title the picture is the unlabelled one, frame aside
    assert torch.equal(right[:, FRAME + title : -FRAME, FRAME:-FRAME], plain[:, FRAME:-FRAME, FRAME:-FRAME])
    strip = right[:, FRAME : FRAME + title, FRAME:-FRAME]
    # predicted class in red on the left half, true class in green on the right half
    half = strip.shape[-1] // 2
    assert reddish(strip[..., :half]).any() and not reddish(strip[..., half:]).any()
    assert greenish(strip[..., half:]).any() and not greenish(strip[..., :half]).any()
    # another predicted class draws other text; the frame says right (grey) or wrong (red)
    assert not torch.equal(right[:, :title], wrong[:, :title])
    assert (
        colour_mask(right[:, :FRAME], PAD_COLOUR).all() and colour_mask(wrong[:, :FRAME], PRED_COLOUR).all()
    )
    # class names replace the indices
    named = box_tiles(image, None, None, torch.tensor([1]), torch.tensor([1]), class_names=["cat", "dog"])[0]
    indices = box_tiles(image, None, None, torch.tensor([1]), torch.tensor([1]))[0]
    assert named.shape == indices.shape and not torch.equal(named, indices)


def test_box_grid_layout_and_legend():
    images = torch.rand(5, 3, 12, 16)
    labels = torch.arange(5)
    grid = box_grid(images, true_boxes=torch.tensor([[1.0, 1.0, 6.0, 6.0]]).repeat(5, 1), scale=2, nrow=3)
    bare = box_grid(
        images, true_boxes=torch.tensor([[1.0, 1.0, 6.0, 6.0]]).repeat(5, 1), scale=2, nrow=3, legend=False
    )
    tile_h, tile_w = 2 * 12 + 2 * FRAME, 2 * 16 + 2 * FRAME
    assert bare.shape == (3, 2 * tile_h + 3 * pictures.PADDING, 3 * tile_w + 4 * pictures.PADDING)
    legend = grid[:, bare.shape[1] :]
    assert grid.shape[2] == bare.shape[2] and legend.shape[1] > 10
    assert torch.equal(grid[:, : bare.shape[1]], bare)
    assert colour_mask(legend, TRUE_COLOUR).any()  # the true-box swatch
    assert not colour_mask(legend, PRED_COLOUR).any()  # nothing predicted, nothing red
    titled = box_grid(images, torch.zeros(5, 4), None, labels, labels, scale=2, nrow=3)
    assert titled.shape[1] > grid.shape[1] and reddish(titled[:, titled.shape[1] - 40 :]).any()


def test_glimpse_grid_rows_of_eight_or_one_row_per_image_with_retina_levels_beside():
    one = glimpse_grid(torch.rand(10, 1, 7, 7), scale=4, nrow=8, legend=False)
    cell = 4 * 7 + 2 * FRAME
    assert one.shape == (3, 2 * cell + 3 * pictures.PADDING, 8 * cell + 9 * pictures.PADDING)
    # 3 images x 2 glimpses x retina levels [1, 2]: one row per image, the 2 levels side by side
    retina = torch.rand(3, 2, 2, 1, 7, 7)
    many = glimpse_grid(retina[:, :, 0], retina, scale=4, retina_scales=[1, 2], legend=False)
    cell_w = 2 * 4 * 7 + 2 + 2 * FRAME
    assert many.shape == (3, 3 * cell + 4 * pictures.PADDING, 2 * cell_w + 3 * pictures.PADDING)
    # each glimpse framed in its box's colour
    pad = pictures.PADDING
    first = many[:, pad : pad + cell, pad : pad + cell_w]
    second = many[:, pad : pad + cell, 2 * pad + cell_w : 2 * pad + 2 * cell_w]
    assert colour_mask(first[:, :FRAME], pictures.glimpse_colour(0)).all()
    assert colour_mask(second[:, :FRAME], pictures.glimpse_colour(1)).all()
    # the levels are the retina's, upscaled: level 2 of image 0, glimpse 0 at the right of the cell
    level = first[:, FRAME:-FRAME, FRAME + 4 * 7 + 2 : -FRAME]
    assert torch.equal(level, pictures.to_rgb(retina[0, 0, 1][None], 4)[0])
    with_legend = glimpse_grid(retina[:, :, 0], retina, scale=4, retina_scales=[1, 2])
    assert with_legend.shape[1] > many.shape[1]


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="images must be"):
        box_grid(torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="pred_boxes"):
        box_grid(torch.rand(2, 1, 8, 8), pred_boxes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="true_labels"):
        box_grid(torch.rand(2, 1, 8, 8), true_labels=torch.zeros(3))
    with pytest.raises(ValueError, match="scale"):
        box_grid(torch.rand(2, 1, 8, 8), scale=0)
    with pytest.raises(ValueError, match="retina"):
        glimpse_grid(torch.rand(2, 1, 8, 8), retina=torch.rand(2, 1, 8, 8))


def test_fit_lowers_the_upscaling_then_shrinks_with_the_boxes():
    images = torch.zeros(1, 1, 200, 100)
    assert pictures.fit(images, 4, 512)[1:] == (2, (1.0, 1.0))  # 4x would be 800 px high
    assert pictures.fit(images, 4, None)[1] == 4
    small, scale, factors = pictures.fit(torch.zeros(1, 1, 1000, 500), 4, 250)
    assert small.shape[-2:] == (250, 125) and scale == 1 and factors == (0.25, 0.25)
    with pytest.raises(ValueError, match="max_side must be None or a positive integer"):
        pictures.fit(images, 1, 0)


def test_true_boxes_of_other_classes_are_pale_green_and_named_in_the_legend():
    image = torch.zeros(1, 1, 20, 20)
    boxes = torch.tensor([[[2.0, 2.0, 8.0, 8.0], [10.0, 10.0, 18.0, 18.0]]])
    tile = box_tiles(
        image, true_boxes=boxes, true_labels=torch.tensor([3]), true_box_labels=torch.tensor([[3, 5]])
    )
    tile = tile[0, :, -20 - FRAME : -FRAME, FRAME:-FRAME]
    assert bbox_of(colour_mask(tile, TRUE_COLOUR)) == (1, 1, 8, 8)
    assert bbox_of(colour_mask(tile, pictures.OTHER_TRUE_COLOUR)) == (9, 9, 18, 18)
    kw = dict(true_boxes=boxes, true_labels=torch.tensor([3]), true_box_labels=torch.tensor([[3, 5]]))
    legend = box_grid(image, **kw)[:, box_grid(image, legend=False, **kw).shape[1] :]
    assert colour_mask(legend, pictures.OTHER_TRUE_COLOUR).any()  # its swatch in the legend
    with pytest.raises(ValueError, match="true_box_labels needs true_boxes and true_labels"):
        box_tiles(image, true_boxes=boxes, true_box_labels=torch.tensor([[3, 5]]))


def test_first_look_boxes_are_grey_under_the_refined_ones_and_named_in_the_legend():
    image = torch.zeros(1, 1, 20, 20)
    coarse, refined = torch.tensor([[1.0, 1.0, 19.0, 19.0]]), torch.tensor([[5.0, 5.0, 12.0, 12.0]])
    tile = box_tiles(image, pred_boxes=refined, coarse_boxes=coarse)[0, :, FRAME:-FRAME, FRAME:-FRAME]
    assert bbox_of(colour_mask(tile, pictures.COARSE_COLOUR)) == (0, 0, 19, 19)
    assert bbox_of(colour_mask(tile, PRED_COLOUR)) == (4, 4, 12, 12)
    kw = dict(pred_boxes=refined, coarse_boxes=coarse)
    legend = box_grid(image, **kw)[:, box_grid(image, legend=False, **kw).shape[1] :]
    assert colour_mask(legend, pictures.COARSE_COLOUR).any()
    assert not colour_mask(box_grid(image, pred_boxes=refined), pictures.COARSE_COLOUR).any()
    with pytest.raises(ValueError, match="coarse_boxes"):
        box_tiles(image, coarse_boxes=torch.zeros(2, 4))
