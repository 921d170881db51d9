"""Tests for stn.ops.boxes: conventions, conversions and their round trips."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stn.ops import (
    box_convert,
    boxes_to_theta,
    denormalize_boxes,
    full_image_boxes,
    normalize_boxes,
    theta_to_boxes,
)


def _boxes(n, height, width, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(n, generator=g, dtype=dtype) * width
    y1 = torch.rand(n, generator=g, dtype=dtype) * height
    x2 = x1 + 0.5 + torch.rand(n, generator=g, dtype=dtype) * width
    y2 = y1 + 0.5 + torch.rand(n, generator=g, dtype=dtype) * height
    return torch.stack([x1, y1, x2, y2], -1)


@pytest.mark.parametrize("range_", ["-1,1", "0,1"])
def test_normalize_round_trip_and_ranges(range_):
    boxes = _boxes(20, 30, 50).view(4, 5, 4)
    norm = normalize_boxes(boxes, (30, 50), range=range_)
    assert norm.shape == boxes.shape
    torch.testing.assert_close(denormalize_boxes(norm, (30, 50), range=range_), boxes)
    full = normalize_boxes(torch.tensor([[0.0, 0.0, 50.0, 30.0]]), (30, 50), range=range_)
    lo = -1.0 if range_ == "-1,1" else 0.0
    assert full.tolist() == [[lo, lo, 1.0, 1.0]]
    # x is scaled by W, y by H
    centre = normalize_boxes(torch.tensor([[25.0, 15.0, 25.0, 15.0]]), (30, 50), range=range_)
    mid = 0.0 if range_ == "-1,1" else 0.5
    assert centre.tolist() == [[mid] * 4]


def test_normalize_int_size_and_errors():
    boxes = torch.tensor([[2.0, 4.0, 6.0, 8.0]])
    torch.testing.assert_close(normalize_boxes(boxes, 8), normalize_boxes(boxes, (8, 8)))
    with pytest.raises(ValueError, match="range must be one of"):
        normalize_boxes(boxes, 8, range="0,255")
    with pytest.raises(ValueError, match=r"image_size must be positive, got \(0, 8\)"):
        normalize_boxes(boxes, (0, 8))
    with pytest.raises(ValueError, match=r"boxes must have last dimension 4 .* got shape \(1, 3\)"):
        denormalize_boxes(boxes[:, :3], 8)
    with pytest.raises(TypeError, match="boxes must be floating point"):
        normalize_boxes(boxes.long(), 8)


def test_boxes_to_theta_samples_the_bin_centres():
    """affine_grid(boxes_to_theta(box)) samples x1 + (j + 0.5) * (x2 - x1) / w (and likewise y)."""
    height, width, h, w = 30, 50, 4, 7
    boxes = torch.cat(
        [_boxes(6, height, width), torch.tensor([[40.0, 3.0, 10.0, 20.0]], dtype=torch.float64)]
    )
    theta = boxes_to_theta(boxes, (height, width))
    assert theta.shape == (7, 2, 3)
    grid = F.affine_grid(theta, [7, 1, h, w], align_corners=False)  # normalized [-1, 1] coords
    px = (grid[..., 0] + 1) / 2 * width
    py = (grid[..., 1] + 1) / 2 * height
    x1, y1, x2, y2 = boxes.unbind(-1)
    j = torch.arange(w, dtype=torch.float64) + 0.5
    i = torch.arange(h, dtype=torch.float64) + 0.5
    want_x = x1[:, None] + j * ((x2 - x1) / w)[:, None]
    want_y = y1[:, None] + i * ((y2 - y1) / h)[:, None]
    torch.testing.assert_close(px, want_x[:, None, :].expand(7, h, w))
    torch.testing.assert_close(py, want_y[:, :, None].expand(7, h, w))


def test_boxes_to_theta_is_differentiable():
    boxes = _boxes(3, 10, 12).requires_grad_()
    assert torch.autograd.gradcheck(lambda b: boxes_to_theta(b, (10, 12)), (boxes,))


@settings(max_examples=40, deadline=None)
@given(
    hw=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    seed=st.integers(0, 2**31 - 1),
)
def test_theta_round_trip(hw, seed):
    boxes = _boxes(5, *hw, seed=seed)
    torch.testing.assert_close(theta_to_boxes(boxes_to_theta(boxes, hw), hw), boxes)


def test_theta_to_boxes_of_flipped_theta_is_the_sorted_box():
    box = torch.tensor([[30.0, 5.0, 10.0, 25.0]], dtype=torch.float64)  # inverted in x
    sorted_box = torch.tensor([[10.0, 5.0, 30.0, 25.0]], dtype=torch.float64)
    torch.testing.assert_close(theta_to_boxes(boxes_to_theta(box, (40, 40)), (40, 40)), sorted_box)


@pytest.mark.parametrize("angle", [0.3, -1.1, math.pi / 2, 2.5])
def test_theta_to_boxes_of_rotation_is_the_bounding_box(angle):
    """A rotated theta samples a parallelogram; theta_to_boxes gives its axis-aligned bounding box."""
    height, width = 40, 60
    c, s = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[[0.5 * c, -0.3 * s, 0.1], [0.5 * s, 0.3 * c, -0.2]]], dtype=torch.float64)
    # corners of the sampled region: theta applied to the output frame's corners (+-1, +-1)
    corners = torch.tensor([[-1, -1, 1], [1, -1, 1], [-1, 1, 1], [1, 1, 1]], dtype=torch.float64)
    pts = corners @ theta[0].T  # (4, 2) normalized
    px = (pts[:, 0] + 1) / 2 * width
    py = (pts[:, 1] + 1) / 2 * height
    want = torch.stack([px.min(), py.min(), px.max(), py.max()])[None]
    got = theta_to_boxes(theta, (height, width))
    torch.testing.assert_close(got, want)
    # and every sample of affine_grid (on a fine grid) lies inside it, touching each side
    grid = F.affine_grid(theta, [1, 1, 64, 64], align_corners=False)[0].reshape(-1, 2)
    gx = (grid[:, 0] + 1) / 2 * width
    gy = (grid[:, 1] + 1) / 2 * height
    assert gx.min() >= got[0, 0] and gx.max() <= got[0, 2]
    assert gy.min() >= got[0, 1] and gy.max() <= got[0, 3]
    assert got[0, 2] - gx.max() < 2.0 and gx.min() - got[0, 0] < 2.0


def test_theta_to_boxes_errors():
    with pytest.raises(ValueError, match=r"theta must have shape \(\.\.\., 2, 3\), got \(2, 3, 3\)"):
        theta_to_boxes(torch.zeros(2, 3, 3), 8)
    with pytest.raises(TypeError, match="theta must be a torch.Tensor"):
        theta_to_boxes([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 8)


def test_full_image_boxes():
    boxes = full_image_boxes(3, (20, 30), dtype=torch.float64)
    assert boxes.shape == (3, 4) and boxes.dtype == torch.float64
    assert boxes.tolist() == [[0.0, 0.0, 30.0, 20.0]] * 3
    boxes[0, 0] = 5.0  # a real tensor, not an expanded view: rows are independent
    assert boxes[1, 0] == 0.0
    theta = boxes_to_theta(full_image_boxes(2, 7), 7)
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3))
    assert full_image_boxes(0, 5).shape == (0, 4)


def test_box_convert_reexport():
    boxes = torch.tensor([[2.0, 4.0, 10.0, 8.0]])
    torch.testing.assert_close(box_convert(boxes, "xyxy", "cxcywh"), torch.tensor([[6.0, 6.0, 8.0, 4.0]]))
