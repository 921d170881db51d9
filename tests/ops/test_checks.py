"""The shared checks: one parser per kind of argument, the same answer in the ops and the models."""

from __future__ import annotations

import pytest
import torch

from stn.models import AttentionModel
from stn.ops import affine_glimpse, glimpse
from stn.ops._checks import check_fill, check_size, fill_values, index_layers

IMAGES = torch.rand(2, 3, 8, 8)
BOXES = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 8.0, 8.0]])
THETA = torch.eye(2, 3).expand(2, 2, 3)


@pytest.mark.parametrize("fill", [True, False, [True, 0.0, 0.0], torch.tensor([True, False, True])])
def test_booleans_are_not_fills_anywhere(fill):
    with pytest.raises(TypeError, match="fill must be a number"):
        glimpse(IMAGES, BOXES, 4, fill=fill)
    with pytest.raises(TypeError, match="fill must be a number"):
        affine_glimpse(IMAGES, THETA, 4, fill=fill)
    with pytest.raises(TypeError, match="fill must be a number"):
        AttentionModel(in_channels=3, num_classes=10, image_size=8, mean=(0.5,), std=(0.25,), fill=fill)


def test_fill_forms_give_the_same_values():
    want = torch.tensor([0.5, 0.5, 0.5])
    for fill in (0.5, 1 / 2, [0.5], (0.5, 0.5, 0.5), torch.tensor(0.5), torch.tensor([0.5, 0.5, 0.5])):
        assert torch.equal(fill_values(fill, IMAGES, "zeros"), want)
    assert fill_values(0, IMAGES, "border") is None and fill_values([0, 0, 0], IMAGES, "zeros") is None
    assert check_fill([1, 2, 3], 3) == (1.0, 2.0, 3.0) and check_fill(2, 3) == 2.0
    with pytest.raises(ValueError, match=r"one value per channel \(3\), got 2 values"):
        check_fill([0.1, 0.2], 3)
    with pytest.raises(TypeError, match="got str"):
        check_fill("white", 3)


def test_one_size_parser_for_ops_models_and_data():
    assert check_size(5) == (5, 5) and check_size([4, 6], "image_size") == (4, 6)
    assert check_size(torch.Size([2, 3])) == (2, 3)
    for bad in ("big", (2.5, 3), (1, 2, 3), True):
        # a TypeError for the ops' callers and a ValueError for config values, one message
        with pytest.raises(TypeError, match="image_size must be an int or a pair"):
            check_size(bad, "image_size")
        with pytest.raises(ValueError, match="image_size must be an int or a pair"):
            check_size(bad, "image_size")
    with pytest.raises(ValueError, match=r"image_size must be positive, got \(0, 3\)"):
        check_size((0, 3), "image_size")


def test_layers_rank_by_order_of_appearance():  # moved from test_paste.py with index_layers
    idx = torch.tensor([3, 0, 3, 1, 0, 3, 2])
    assert index_layers(idx, 4).tolist() == [0, 0, 1, 0, 1, 2, 0]
    assert index_layers(torch.zeros(0, dtype=torch.long), 2).tolist() == []
