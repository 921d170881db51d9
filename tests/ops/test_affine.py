"""Tests for stn.ops.affine: affine_glimpse, box_affine_theta, box_rotation_theta."""

from __future__ import annotations

import contextlib
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stn.ops import boxes_to_theta, glimpse
from stn.ops.affine import affine_glimpse, box_affine_theta, box_rotation_theta

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --------------------------------------------------------------------------------------------------
# helpers


def oracle(images, theta, size, indices=None, padding_mode="zeros", fill=0.0):
    """affine_grid + grid_sample on gathered images; fill via grid_sample(img - fill) + fill."""
    h, w = (size, size) if isinstance(size, int) else size
    b, c = images.shape[:2]
    if indices is None:
        lead = tuple(theta.shape[:-2])
        per_image = theta.shape[1] if theta.dim() == 4 else 1
        idx = torch.arange(b, device=images.device).repeat_interleave(per_image)
    else:
        lead, idx = (theta.shape[0],), indices
    flat = theta.reshape(-1, 2, 3)
    if flat.shape[0] == 0:
        return images.new_zeros(*lead, c, h, w)
    fill_t = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    src = images[idx] - fill_t
    grid = F.affine_grid(flat, [flat.shape[0], c, h, w], align_corners=False)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False) + fill_t
    return out.reshape(*lead, c, h, w)


def random_theta(*lead, dtype=torch.float32, generator=None, spread=0.6):
    """Thetas with rotation, shear, scale and shifts that reach outside the image."""
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype)
    return eye + spread * torch.randn(*lead, 2, 3, dtype=dtype, generator=generator)


def random_boxes(n, height, width, *, inside=True, generator=None, dtype=torch.float32):
    g = generator
    if inside:
        x1 = torch.rand(n, generator=g) * (width - 2)
        y1 = torch.rand(n, generator=g) * (height - 2)
        x2 = x1 + 1 + torch.rand(n, generator=g) * (width - 1 - x1)
        y2 = y1 + 1 + torch.rand(n, generator=g) * (height - 1 - y1)
    else:
        x1 = torch.rand(n, generator=g) * (width + 4) - 4
        y1 = torch.rand(n, generator=g) * (height + 4) - 4
        x2 = x1 + 1 + torch.rand(n, generator=g) * width
        y2 = y1 + 1 + torch.rand(n, generator=g) * height
    return torch.stack([x1, y1, x2, y2], -1).to(dtype)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


pytestmark = pytest.mark.usefixtures("single_thread")


@contextlib.contextmanager
def indices_strategy(strategy):
    """Force the indices layout to gather images[indices] ("gather") or stack grids ("stack")."""
    module = importlib.import_module("stn.ops.affine")
    saved = module._STACK_RATIO
    module._STACK_RATIO = {"gather": 0.0, "stack": math.inf, "auto": saved}[strategy]
    try:
        yield
    finally:
        module._STACK_RATIO = saved


# --------------------------------------------------------------------------------------------------
# affine_glimpse: oracle


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("layout", ["b", "bk", "indices"])
def test_matches_affine_grid_grid_sample(layout, padding_mode, gen):
    images = torch.rand(3, 2, 7, 9, generator=gen)
    indices = None
    if layout == "b":
        theta = random_theta(3, generator=gen)
    elif layout == "bk":
        theta = random_theta(3, 4, generator=gen)
    else:
        indices = torch.tensor([2, 0, 2, 2, 1, 0])
        theta = random_theta(6, generator=gen)
    out = affine_glimpse(images, theta, (5, 4), indices=indices, padding_mode=padding_mode)
    expected = oracle(images, theta, (5, 4), indices=indices, padding_mode=padding_mode)
    assert out.shape == expected.shape
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "fill", [0.5, -2.0, [0.25, 1.0, -1.0], torch.tensor([0.1, 0.2, 0.3]), torch.tensor(0.7)]
)
@pytest.mark.parametrize("layout", ["b", "bk", "indices"])
def test_fill_matches_shifted_oracle(layout, fill, gen):
    images = torch.rand(2, 3, 6, 5, generator=gen)
    indices = None
    if layout == "b":
        theta = random_theta(2, generator=gen, spread=1.0)
    elif layout == "bk":
        theta = random_theta(2, 3, generator=gen, spread=1.0)
    else:
        indices = torch.tensor([1, 1, 0])
        theta = random_theta(3, generator=gen, spread=1.0)
    out = affine_glimpse(images, theta, 4, indices=indices, fill=fill)
    expected = oracle(images, theta, 4, indices=indices, fill=fill)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_fill_outside_is_exact_fill():
    images = torch.rand(1, 2, 4, 4)
    far = torch.tensor([[[1.0, 0.0, 5.0], [0.0, 1.0, 0.0]]])  # entirely right of the image
    out = affine_glimpse(images, far, 3, fill=[0.25, -1.0])
    assert torch.equal(out[0, 0], torch.full((3, 3), 0.25))
    assert torch.equal(out[0, 1], torch.full((3, 3), -1.0))


def test_fill_does_not_touch_samples_inside_the_image(gen):
    images = torch.rand(2, 3, 8, 8, generator=gen)
    theta = torch.tensor([[0.4, 0.2, 0.05], [-0.1, 0.5, 0.1]]).expand(2, 2, 3) + 0.01 * torch.rand(
        2, 2, 3, generator=gen
    )
    assert torch.equal(
        affine_glimpse(images, theta, 5, fill=[3.0, -2.0, 7.0]), affine_glimpse(images, theta, 5)
    )


def test_zero_fill_is_plain_grid_sample(gen):
    images = torch.rand(2, 1, 5, 5, generator=gen)
    theta = random_theta(2, generator=gen)
    a = affine_glimpse(images, theta, 3)
    b = affine_glimpse(images, theta, 3, fill=[0.0])
    assert torch.equal(a, b)


@pytest.mark.parametrize("strategy", ["gather", "stack"])
def test_indices_strategies_match_oracle_and_gradcheck(strategy, gen):
    images = torch.rand(3, 2, 5, 6, dtype=torch.float64, generator=gen)
    indices = torch.tensor([2, 0, 2, 2, 0])  # image 1 unused, image 2 three times
    theta = random_theta(5, dtype=torch.float64, generator=gen, spread=0.8)
    fill = torch.tensor([0.3, -0.4], dtype=torch.float64)
    with indices_strategy(strategy):
        out = affine_glimpse(images, theta, (3, 4), indices=indices, fill=fill)
        torch.testing.assert_close(out, oracle(images, theta, (3, 4), indices=indices, fill=fill))
        args = (images.requires_grad_(), theta.requires_grad_(), fill.requires_grad_())
        assert torch.autograd.gradcheck(
            lambda i, t, f: affine_glimpse(i, t, (3, 4), indices=indices, fill=f), args
        )


def test_k_layout_equals_indices_layout(gen):
    images = torch.rand(3, 2, 6, 6, generator=gen)
    theta = random_theta(3, 2, generator=gen)
    a = affine_glimpse(images, theta, (4, 5), fill=0.3)
    b = affine_glimpse(
        images, theta.reshape(6, 2, 3), (4, 5), indices=torch.arange(3).repeat_interleave(2), fill=0.3
    )
    torch.testing.assert_close(a.reshape(6, 2, 4, 5), b, atol=1e-6, rtol=0)


def test_theta_dtype_is_cast_to_images(gen):
    images = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=gen)
    theta = random_theta(1, generator=gen)  # float32
    out = affine_glimpse(images, theta, 3)
    assert out.dtype == torch.float64


# --------------------------------------------------------------------------------------------------
# affine_glimpse vs glimpse


@pytest.mark.parametrize("layout", ["b", "bk", "indices"])
def test_box_theta_equals_glimpse(layout, gen):
    images = torch.rand(3, 2, 12, 10, generator=gen)
    h, w = 12, 10
    indices = None
    if layout == "b":
        boxes = random_boxes(3, h, w, generator=gen)
    elif layout == "bk":
        boxes = random_boxes(6, h, w, generator=gen).reshape(3, 2, 4)
    else:
        indices = torch.tensor([1, 1, 0, 2, 1])
        boxes = random_boxes(5, h, w, generator=gen)
    out = affine_glimpse(images, boxes_to_theta(boxes, (h, w)), (5, 4), indices=indices)
    expected = glimpse(images, boxes, (5, 4), indices=indices)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("layout", ["b", "bk", "indices"])
def test_gradcheck_images_and_theta(layout, padding_mode, gen):
    images = torch.rand(2, 2, 5, 6, dtype=torch.float64, generator=gen).requires_grad_()
    indices = None
    if layout == "b":
        theta = random_theta(2, dtype=torch.float64, generator=gen)
    elif layout == "bk":
        theta = random_theta(2, 2, dtype=torch.float64, generator=gen)
    else:
        indices = torch.tensor([1, 0, 1])
        theta = random_theta(3, dtype=torch.float64, generator=gen)
    theta.requires_grad_()

    def fn(img, th):
        return affine_glimpse(img, th, (3, 4), indices=indices, padding_mode=padding_mode)

    assert torch.autograd.gradcheck(fn, (images, theta))


def test_gradcheck_with_fill(gen):
    images = torch.rand(2, 2, 5, 6, dtype=torch.float64, generator=gen).requires_grad_()
    theta = random_theta(2, 2, dtype=torch.float64, generator=gen, spread=1.0).requires_grad_()
    fill = torch.tensor([0.3, -0.7], dtype=torch.float64, requires_grad=True)

    def fn(img, th, f):
        return affine_glimpse(img, th, (3, 4), fill=f)

    assert torch.autograd.gradcheck(fn, (images, theta, fill))


# --------------------------------------------------------------------------------------------------
# empty batches


def test_batch_zero():
    images = torch.rand(0, 3, 5, 5, requires_grad=True)
    theta = torch.zeros(0, 2, 3, requires_grad=True)
    out = affine_glimpse(images, theta, (2, 3), fill=0.5)
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert images.grad.shape == images.shape and theta.grad.shape == theta.shape

    images = torch.rand(2, 3, 5, 5)
    assert affine_glimpse(images, torch.zeros(2, 0, 2, 3), 4).shape == (2, 0, 3, 4, 4)
    empty = affine_glimpse(images, torch.zeros(0, 2, 3), 4, indices=torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0, 3, 4, 4)


# --------------------------------------------------------------------------------------------------
# non-finite thetas


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("strategy", ["gather", "stack"])
def test_non_finite_theta_gives_nan_glimpse_only(bad, strategy, gen):
    """As glimpse does for bad boxes: the bad theta's glimpse is NaN, the others are unchanged, and
    with that glimpse masked out of the loss every gradient (the bad theta's too) is finite."""
    images = torch.rand(2, 2, 9, 9, generator=gen)
    theta = torch.randn(4, 2, 3, generator=gen) * 0.5
    theta[1, 0, 2] = bad
    idx = torch.tensor([0, 0, 1, 0])  # the bad theta shares image 0 with two good ones
    good = [0, 2, 3]
    with indices_strategy(strategy):
        i, t = images.clone().requires_grad_(), theta.clone().requires_grad_()
        out = affine_glimpse(i, t, 4, indices=idx, fill=0.5)
        assert torch.isnan(out[1]).all()
        ref_i, ref_t = images.clone().requires_grad_(), theta[good].clone().requires_grad_()
        ref = affine_glimpse(ref_i, ref_t, 4, indices=idx[good], fill=0.5)
    torch.testing.assert_close(out[good], ref)
    out[good].sum().backward()
    ref.sum().backward()
    assert torch.isfinite(i.grad).all() and torch.isfinite(t.grad).all()
    assert not t.grad[1].any()
    torch.testing.assert_close(i.grad, ref_i.grad)
    torch.testing.assert_close(t.grad[good], ref_t.grad)
    # the per-image layout likewise
    bk = theta[:2].reshape(1, 2, 2, 3).expand(2, 2, 2, 3).clone().requires_grad_()
    out = affine_glimpse(images, bk, 4)
    assert torch.isnan(out[:, 1]).all() and torch.isfinite(out[:, 0]).all()
    out[:, 0].sum().backward()
    assert torch.isfinite(bk.grad).all() and not bk.grad[:, 1].any()


# --------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_errors():
    images = torch.rand(2, 3, 5, 5)
    theta = torch.zeros(2, 2, 3)
    with pytest.raises(TypeError, match="theta must be a torch.Tensor"):
        affine_glimpse(images, [[1, 0, 0], [0, 1, 0]], 3)
    with pytest.raises(ValueError, match=r"theta must have shape \(\.\.\., 2, 3\), got shape \(2, 3, 3\)"):
        affine_glimpse(images, torch.zeros(2, 3, 3), 3)
    with pytest.raises(TypeError, match="theta must be floating point"):
        affine_glimpse(images, torch.zeros(2, 2, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"one matrix per image \(2 images"):
        affine_glimpse(images, torch.zeros(3, 2, 3), 3)
    with pytest.raises(ValueError, match=r"first dimension 2"):
        affine_glimpse(images, torch.zeros(3, 1, 2, 3), 3)
    with pytest.raises(ValueError, match=r"\(B, 2, 3\), \(B, K, 2, 3\) or \(N, 2, 3\) with indices"):
        affine_glimpse(images, torch.zeros(2, 1, 1, 2, 3), 3)
    with pytest.raises(ValueError, match="images must be 4-d"):
        affine_glimpse(images[0], theta, 3)
    with pytest.raises(TypeError, match="images must be floating point"):
        affine_glimpse(images.to(torch.uint8), theta, 3)
    with pytest.raises(ValueError, match="size must be positive"):
        affine_glimpse(images, theta, (0, 3))
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        affine_glimpse(images, theta, 3, padding_mode="constant")
    with pytest.raises(ValueError, match="fill is only used with padding_mode='zeros'"):
        affine_glimpse(images, theta, 3, padding_mode="border", fill=0.5)
    with pytest.raises(ValueError, match=r"sequence of 3 numbers"):
        affine_glimpse(images, theta, 3, fill=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"one value per channel \(3 channels\).*shape \(2,\)"):
        affine_glimpse(images, theta, 3, fill=torch.zeros(2))
    with pytest.raises(TypeError, match="fill must be a number"):
        affine_glimpse(images, theta, 3, fill="white")
    with pytest.raises(ValueError, match="non-empty spatial"):
        affine_glimpse(torch.rand(2, 3, 0, 5), theta, 3)


def test_bad_indices_errors():
    images = torch.rand(2, 3, 5, 5)
    theta = torch.zeros(3, 2, 3)
    with pytest.raises(TypeError, match="indices must be a torch.Tensor"):
        affine_glimpse(images, theta, 3, indices=[0, 1, 1])
    with pytest.raises(TypeError, match="indices must be an integer"):
        affine_glimpse(images, theta, 3, indices=torch.zeros(3))
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 2\).*got values in \[0, 2\]"):
        affine_glimpse(images, theta, 3, indices=torch.tensor([0, 2, 1]))
    with pytest.raises(IndexError, match=r"got values in \[-1, 1\]"):
        affine_glimpse(images, theta, 3, indices=torch.tensor([0, -1, 1]))
    with pytest.raises(
        ValueError, match=r"one entry per theta: theta has shape \(3, 2, 3\), indices has shape \(2,\)"
    ):
        affine_glimpse(images, theta, 3, indices=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"with indices, theta must be \(N, 2, 3\)"):
        affine_glimpse(images, theta.reshape(3, 1, 2, 3), 3, indices=torch.tensor([0, 1, 1]))


# --------------------------------------------------------------------------------------------------
# box_affine_theta


def test_box_affine_theta_identity_is_box_theta(gen):
    boxes = random_boxes(5, 8, 9, generator=gen)
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.equal(box_affine_theta(boxes, (8, 9), eye), boxes_to_theta(boxes, (8, 9)))


def test_box_affine_theta_is_matrix_product(gen):
    boxes = random_boxes(6, 8, 9, generator=gen, dtype=torch.float64).reshape(2, 3, 4)
    local = random_theta(2, 3, dtype=torch.float64, generator=gen)
    out = box_affine_theta(boxes, (8, 9), local)
    row = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(2, 3, 1, 3)
    expected = boxes_to_theta(boxes, (8, 9)) @ torch.cat([local, row], dim=-2)
    torch.testing.assert_close(out, expected)


def test_box_affine_theta_flip_is_flipped_glimpse(gen):
    images = torch.rand(2, 3, 10, 12, generator=gen)
    boxes = random_boxes(2, 10, 12, generator=gen)
    flip = torch.tensor([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # broadcasts over boxes
    out = affine_glimpse(images, box_affine_theta(boxes, (10, 12), flip), (4, 6))
    expected = glimpse(images, boxes, (4, 6)).flip(-1, -2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_box_affine_theta_errors():
    with pytest.raises(ValueError, match=r"broadcastable leading dimensions"):
        box_affine_theta(torch.zeros(3, 4), 8, torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match=r"local_theta must have shape \(\.\.\., 2, 3\)"):
        box_affine_theta(torch.zeros(3, 4), 8, torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="boxes must have last dimension 4"):
        box_affine_theta(torch.zeros(3, 5), 8, torch.zeros(3, 2, 3))


def test_box_affine_theta_gradcheck(gen):
    boxes = random_boxes(3, 8, 9, generator=gen, dtype=torch.float64).requires_grad_()
    local = random_theta(3, dtype=torch.float64, generator=gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda b, loc: box_affine_theta(b, (8, 9), loc), (boxes, local))


# --------------------------------------------------------------------------------------------------
# box_rotation_theta


def test_rotation_zero_is_box_theta_and_glimpse(gen):
    images = torch.rand(2, 3, 9, 13, generator=gen)
    boxes = random_boxes(2, 9, 13, generator=gen)
    theta = box_rotation_theta(boxes, torch.zeros(2), (9, 13))
    torch.testing.assert_close(theta, boxes_to_theta(boxes, (9, 13)), atol=0, rtol=0)
    out = affine_glimpse(images, theta, (5, 7))
    torch.testing.assert_close(out, glimpse(images, boxes, (5, 7)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_rotation_quarter_turns_of_square_box_are_rot90(k, gen):
    # Asymmetric content in a non-square image, so any sign or transpose error shows.
    images = torch.rand(2, 3, 9, 12, generator=gen)
    boxes = torch.tensor([[2.0, 1.0, 7.0, 6.0], [6.0, 3.0, 10.0, 7.0]])
    crops = [images[0, :, 1:6, 2:7], images[1, :, 3:7, 6:10]]
    for i, size in enumerate([5, 4]):
        theta = box_rotation_theta(boxes[i : i + 1], k * math.pi / 2, (9, 12))
        out = affine_glimpse(images[i : i + 1], theta, size)[0]
        torch.testing.assert_close(out, torch.rot90(crops[i], k, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_rotation_of_non_square_box_is_rot90_of_turned_region(gen):
    # Box 4 wide, 2 tall, centre (5, 3) in a 7 x 10 image: turned a quarter, it covers
    # x in [4, 6), y in [1, 5); the glimpse keeps the box's (2, 4) size and shows that region
    # rotated counter-clockwise. A shear or a wrong aspect ratio would break the equality.
    images = torch.rand(1, 2, 7, 10, generator=gen)
    boxes = torch.tensor([[3.0, 2.0, 7.0, 4.0]])
    out = affine_glimpse(images, box_rotation_theta(boxes, math.pi / 2, (7, 10)), (2, 4))
    expected = torch.rot90(images[:, :, 1:5, 4:6], 1, dims=(-2, -1))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_rotation_sign_on_a_marked_pixel():
    # A single bright pixel at the top-right of the box ends up top-left after +90 degrees
    # (content turns counter-clockwise on screen, y down).
    images = torch.zeros(1, 1, 4, 4)
    images[0, 0, 0, 3] = 1.0
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    out = affine_glimpse(images, box_rotation_theta(boxes, math.pi / 2, 4), 4)
    assert out[0, 0].argmax().item() == 0  # row 0, column 0
    out = affine_glimpse(images, box_rotation_theta(boxes, -math.pi / 2, 4), 4)
    assert out[0, 0].argmax().item() == 15  # row 3, column 3


@pytest.mark.parametrize("angle", [0.3, -1.1, 2.5])
def test_rotation_has_no_shear_in_pixels(angle):
    image_size = (20, 50)
    boxes = torch.tensor([[5.0, 3.0, 35.0, 11.0]], dtype=torch.float64)  # 30 x 8 box
    theta = box_rotation_theta(boxes, torch.tensor([angle], dtype=torch.float64), image_size)[0]
    # Linear part in pixels: columns are the images of the glimpse's half-axes.
    pixel = torch.diag(torch.tensor([50 / 2, 20 / 2], dtype=torch.float64)) @ theta[:, :2]
    u, v = pixel[:, 0], pixel[:, 1]
    torch.testing.assert_close(u.dot(v), torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(u.norm(), torch.tensor(15.0, dtype=torch.float64))
    torch.testing.assert_close(v.norm(), torch.tensor(4.0, dtype=torch.float64))
    # The centre stays the box centre.
    centre = (theta[:, 2] + 1) / 2 * torch.tensor([50.0, 20.0], dtype=torch.float64)
    torch.testing.assert_close(centre, torch.tensor([20.0, 7.0], dtype=torch.float64))


def test_rotation_broadcasting_and_gradcheck(gen):
    boxes = random_boxes(6, 8, 9, generator=gen, dtype=torch.float64).reshape(2, 3, 4)
    assert box_rotation_theta(boxes, 0.5, (8, 9)).shape == (2, 3, 2, 3)
    assert box_rotation_theta(boxes, torch.zeros(3, dtype=torch.float64), (8, 9)).shape == (2, 3, 2, 3)
    assert box_rotation_theta(boxes[0, 0], torch.zeros(4, dtype=torch.float64), (8, 9)).shape == (4, 2, 3)
    angles = torch.rand(2, 3, dtype=torch.float64, generator=gen).requires_grad_()
    boxes.requires_grad_()
    assert torch.autograd.gradcheck(lambda b, a: box_rotation_theta(b, a, (8, 9)), (boxes, angles))


def test_rotation_errors():
    with pytest.raises(ValueError, match=r"angles of shape \(2,\) must broadcast"):
        box_rotation_theta(torch.zeros(3, 4), torch.zeros(2), 8)
    with pytest.raises(TypeError, match="angles must be a number or a torch.Tensor"):
        box_rotation_theta(torch.zeros(3, 4), [0.0, 1.0, 2.0], 8)
    with pytest.raises(ValueError, match="image_size must be positive"):
        box_rotation_theta(torch.zeros(3, 4), 0.0, (0, 8))


# --------------------------------------------------------------------------------------------------
# property tests


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(0, 3),
    channels=st.integers(1, 3),
    in_size=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    out_size=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    layout=st.sampled_from(["b", "bk", "indices"]),
    k=st.integers(0, 3),
    index_list=st.lists(st.integers(0, 2), max_size=6),
    strategy=st.sampled_from(["gather", "stack", "auto"]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_oracle(batch, channels, in_size, out_size, layout, k, index_list, strategy, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, channels, *in_size, generator=g)
    indices = None
    if layout == "b":
        theta = random_theta(batch, generator=g)
    elif layout == "bk":
        theta = random_theta(batch, k, generator=g)
    else:
        indices = torch.tensor([i for i in index_list if i < batch], dtype=torch.long)
        theta = random_theta(indices.shape[0], generator=g)
    with indices_strategy(strategy):
        out = affine_glimpse(images, theta, out_size, indices=indices, fill=0.25)
    expected = oracle(images, theta, out_size, indices=indices, fill=0.25)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# CUDA


@CUDA
@pytest.mark.parametrize("layout", ["b", "bk", "indices"])
def test_cuda_matches_cpu(layout, gen):
    images = torch.rand(3, 2, 7, 9, generator=gen)
    indices = None
    if layout == "b":
        theta = random_theta(3, generator=gen)
    elif layout == "bk":
        theta = random_theta(3, 2, generator=gen)
    else:
        indices = torch.tensor([2, 0, 2])
        theta = random_theta(3, generator=gen)
    cpu = affine_glimpse(images, theta, (4, 5), indices=indices, fill=[0.1, 0.2])
    images_cuda = images.cuda().requires_grad_()
    theta_cuda = theta.cuda().requires_grad_()
    out = affine_glimpse(
        images_cuda, theta_cuda, (4, 5), indices=None if indices is None else indices.cuda(), fill=[0.1, 0.2]
    )
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), cpu, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    assert images_cuda.grad.device.type == "cuda" and torch.isfinite(theta_cuda.grad).all()


@CUDA
def test_cuda_device_mismatch_is_reported():
    with pytest.raises(ValueError, match="theta is on cpu but images are on cuda"):
        affine_glimpse(torch.rand(1, 1, 4, 4, device="cuda"), torch.zeros(1, 2, 3), 3)
