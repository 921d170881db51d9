"""Tests for stn.ops.paste."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stn.ops import boxes_to_theta, glimpse
from stn.ops.affine import affine_glimpse, box_rotation_theta
from stn.ops.paste import paste

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --------------------------------------------------------------------------------------------------
# helpers


def oracle(images, patches, boxes, indices):
    """One patch at a time with grid_sample: inverse box theta, sample the patch and ones."""
    out = list(images.unbind(0))
    b, c, height, width = images.shape
    row = torch.tensor([[0.0, 0.0, 1.0]], dtype=images.dtype)
    for patch, box, i in zip(patches, boxes, indices.tolist()):
        forward = torch.cat([boxes_to_theta(box, (height, width)), row], dim=0)
        inverse = torch.linalg.inv(forward)[:2]
        grid = F.affine_grid(inverse[None], [1, c, height, width], align_corners=False)
        values = F.grid_sample(patch[None], grid, align_corners=False)[0]
        cover = F.grid_sample(torch.ones_like(patch[None, :1]), grid, align_corners=False)[0]
        out[i] = out[i] * (1 - cover) + values
    return torch.stack(out) if out else images.clone()


def flat_layout(images, patches, boxes, indices):
    """(patches, boxes, indices) of any layout as flat (N, ...) tensors in paste order."""
    b = images.shape[0]
    if indices is not None:
        return patches, boxes, indices
    if boxes.dim() == 2:
        return patches, boxes, torch.arange(b)
    k = boxes.shape[1]
    return patches.flatten(0, 1), boxes.reshape(-1, 4), torch.arange(b).repeat_interleave(k)


def fractional_boxes(n, height, width, generator, dtype=torch.float32):
    """Boxes with fractional edges, some crossing the image border, of various scales."""
    g = generator
    x1 = torch.rand(n, generator=g, dtype=torch.float64) * (width + 2) - 3
    y1 = torch.rand(n, generator=g, dtype=torch.float64) * (height + 2) - 3
    x2 = x1 + 1.3 + torch.rand(n, generator=g, dtype=torch.float64) * width
    y2 = y1 + 1.3 + torch.rand(n, generator=g, dtype=torch.float64) * height
    return torch.stack([x1, y1, x2, y2], -1).to(dtype)


def make(layout, b, c, height, width, h, w, generator, dtype=torch.float32, indices=(0, 2, 0, 1, 0)):
    images = torch.rand(b, c, height, width, generator=generator, dtype=dtype)
    if layout == "b":
        patches = torch.rand(b, c, h, w, generator=generator, dtype=dtype)
        boxes = fractional_boxes(b, height, width, generator, dtype)
        idx = None
    elif layout == "bk":
        patches = torch.rand(b, 3, c, h, w, generator=generator, dtype=dtype)
        boxes = fractional_boxes(3 * b, height, width, generator, dtype).reshape(b, 3, 4)
        idx = None
    else:
        idx = torch.tensor([i for i in indices if i < b], dtype=torch.long)
        patches = torch.rand(len(idx), c, h, w, generator=generator, dtype=dtype)
        boxes = fractional_boxes(len(idx), height, width, generator, dtype)
    return images, patches, boxes, idx


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------------------------------
# exactness


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["b", "bk", "indices"])
def test_integer_box_of_patch_size_is_bit_exact(layout, dtype, gen):
    b, c, height, width, h, w = 3, 2, 11, 13, 3, 5
    images = torch.rand(b, c, height, width, generator=gen, dtype=dtype)
    # Integer corners, some hanging over the border (those are clipped).
    corners = [(1, 2), (7, 6), (-2, 9), (10, -1), (4, 4), (0, 0)]
    if layout == "b":
        idx, chosen = torch.arange(3), corners[:3]
    elif layout == "bk":
        idx, chosen = torch.arange(3).repeat_interleave(2), corners
    else:
        idx, chosen = torch.tensor([2, 0, 2, 1]), [corners[0], corners[1], corners[3], corners[2]]
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y in chosen], dtype=dtype)
    patches = torch.rand(len(chosen), c, h, w, generator=gen, dtype=dtype)
    if layout == "bk":
        out = paste(images, patches.reshape(3, 2, c, h, w), boxes.reshape(3, 2, 4))
    else:
        out = paste(images, patches, boxes, indices=None if layout == "b" else idx)

    expected = images.clone()  # reference by slicing, later patches over earlier ones
    for patch, (x, y), i in zip(patches, chosen, idx.tolist()):
        xs, ys = slice(max(x, 0), min(x + w, width)), slice(max(y, 0), min(y + h, height))
        expected[i, :, ys, xs] = patch[:, ys.start - y : ys.stop - y, xs.start - x : xs.stop - x]
    assert torch.equal(out, expected)


def test_paste_then_glimpse_returns_patch(gen, tap_engine):
    images = torch.rand(2, 3, 10, 12, generator=gen)
    patches = torch.rand(2, 2, 3, 4, 5, generator=gen)
    boxes = torch.tensor(
        [[[1.0, 2.0, 6.0, 6.0], [6.0, 5.0, 11.0, 9.0]], [[0.0, 0.0, 5.0, 4.0], [7.0, 6.0, 12.0, 10.0]]]
    )
    out = paste(images, patches, boxes)
    # the tap engine samples integer boxes at pixel centres with weights exactly 1 and 0: bit-exact;
    # the default grid_sample path through its normalized grid to rounding.
    with tap_engine():
        assert torch.equal(glimpse(out, boxes, (4, 5)), patches)
    torch.testing.assert_close(glimpse(out, boxes, (4, 5)), patches, atol=1e-5, rtol=0)
    theta = boxes_to_theta(boxes, (10, 12))
    torch.testing.assert_close(affine_glimpse(out, theta, (4, 5)), patches, atol=1e-5, rtol=0)


def test_full_image_box_replaces_image(gen):
    images = torch.rand(2, 3, 6, 7, generator=gen)
    patches = torch.rand(2, 3, 6, 7, generator=gen)
    out = paste(images, patches, torch.tensor([[0.0, 0.0, 7.0, 6.0]] * 2))
    assert torch.equal(out, patches)


# --------------------------------------------------------------------------------------------------
# oracle (fractional boxes, scales, flips, clipping)


@pytest.mark.parametrize("layout", ["b", "bk", "indices"])
def test_matches_grid_sample_oracle(layout, gen):
    images, patches, boxes, idx = make(layout, 3, 2, 9, 11, 4, 3, gen)
    out = paste(images, patches, boxes, indices=idx)
    expected = oracle(images, *flat_layout(images, patches, boxes, idx))
    assert out.shape == images.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_flipped_and_tiny_boxes_match_oracle(gen):
    images = torch.rand(4, 1, 8, 8, generator=gen)
    patches = torch.rand(4, 1, 3, 3, generator=gen)
    boxes = torch.tensor(
        [
            [6.2, 1.1, 1.7, 5.3],  # flipped in x
            [1.5, 7.1, 6.4, 2.2],  # flipped in y
            [3.3, 3.4, 3.6, 3.9],  # much smaller than the patch
            [-30.0, -20.0, 40.0, 50.0],  # much larger than the image
        ]
    )
    out = paste(images, patches, boxes)
    torch.testing.assert_close(out, oracle(images, patches, boxes, torch.arange(4)), atol=1e-5, rtol=1e-5)


def test_degenerate_box_pastes_nothing_with_finite_gradients(gen):
    images = torch.rand(2, 1, 5, 5, generator=gen)
    patches = torch.rand(2, 1, 2, 2, generator=gen, requires_grad=True)
    boxes = torch.tensor([[2.5, 1.0, 2.5, 4.0], [1.0, 3.0, 4.0, 3.0]], requires_grad=True)
    out = paste(images, patches, boxes)
    assert torch.equal(out, images)
    out.sum().backward()
    assert torch.isfinite(boxes.grad).all() and torch.isfinite(patches.grad).all()


def test_non_finite_box_makes_only_its_image_nan(gen):
    images = torch.rand(3, 1, 5, 5, generator=gen, requires_grad=True)
    patches = torch.rand(3, 1, 2, 2, generator=gen, requires_grad=True)
    boxes = torch.tensor(
        [[1.0, 1.0, 3.0, 3.0], [float("nan"), 1.0, 3.0, 3.0], [0.5, float("inf"), 3.0, 3.0]],
        requires_grad=True,
    )
    out = paste(images, patches, boxes)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all() and torch.isnan(out[2]).all()
    out[0].sum().backward()
    assert torch.isfinite(images.grad).all() and torch.isfinite(patches.grad).all()
    assert images.grad[1:].abs().sum() == 0
    assert torch.isfinite(boxes.grad).all()


def test_fully_covered_pixels_do_not_leak_the_image(gen):
    # Fractional boxes: pixels well inside the box have coverage exactly 1, so the image is gone.
    images = torch.full((64, 1, 12, 12), 1e6)
    offsets = torch.rand(64, 2, generator=gen) * 2
    boxes = torch.cat([offsets, offsets + 9.7], dim=1)
    out = paste(images, torch.zeros(64, 1, 5, 5), boxes)
    assert torch.equal(out[:, :, 4:8, 4:8], torch.zeros(64, 1, 4, 4))


def test_fractional_edge_coverage_is_area_fraction():
    # A box of the patch's size shifted by 0.3 pixel: the first column is covered 70%.
    images = torch.zeros(1, 1, 1, 6)
    patches = torch.ones(1, 1, 1, 3)
    out = paste(images, patches, torch.tensor([[1.3, 0.0, 4.3, 1.0]]))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.7, 1.0, 1.0, 0.3, 0.0]))


# --------------------------------------------------------------------------------------------------
# order


def test_later_patches_over_earlier_ones():
    images = torch.zeros(2, 1, 6, 6)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 6.0, 6.0]])
    ones, twos = torch.ones(1, 4, 4), torch.full((1, 4, 4), 2.0)

    # (B, K): K order.
    out = paste(images, torch.stack([ones, twos]).expand(2, 2, 1, 4, 4), boxes.expand(2, 2, 4))
    assert out[0, 0, 3, 3] == 2 and out[1, 0, 3, 3] == 2 and out[0, 0, 0, 0] == 1 and out[0, 0, 5, 5] == 2

    # indices: order of appearance per image, interleaved across images.
    patches = torch.stack([ones, ones, twos, twos])
    out = paste(images, patches, boxes[[0, 1, 1, 0]], indices=torch.tensor([0, 1, 0, 1]))
    assert out[0, 0, 3, 3] == 2 and out[1, 0, 3, 3] == 2  # image 0: 1 then 2; image 1: 1 then 2
    out = paste(images, patches.flip(0), boxes[[0, 1, 1, 0]], indices=torch.tensor([0, 1, 0, 1]))
    assert out[0, 0, 3, 3] == 1 and out[1, 0, 3, 3] == 1


# --------------------------------------------------------------------------------------------------
# out of place


@pytest.mark.parametrize("layout", ["b", "bk", "indices"])
def test_inputs_are_not_modified(layout, gen):
    images, patches, boxes, idx = make(layout, 3, 2, 8, 8, 3, 3, gen)
    images.requires_grad_()
    patches.requires_grad_()
    boxes.requires_grad_()
    tensors = [t for t in (images, patches, boxes, idx) if t is not None]
    clones = [t.detach().clone() for t in tensors]
    versions = [t._version for t in tensors]
    out = paste(images, patches, boxes, indices=idx)
    (out * torch.rand_like(out)).sum().backward()
    for t, c, v in zip(tensors, clones, versions):
        assert torch.equal(t.detach(), c)
        assert t._version == v
    assert out.data_ptr() != images.data_ptr()


def test_nothing_to_paste_returns_a_new_tensor():
    images = torch.rand(2, 1, 4, 4)
    for out in (
        paste(images, torch.zeros(2, 0, 1, 3, 3), torch.zeros(2, 0, 4)),
        paste(images, torch.zeros(0, 1, 3, 3), torch.zeros(0, 4), indices=torch.zeros(0, dtype=torch.long)),
    ):
        assert torch.equal(out, images) and out is not images and out.data_ptr() != images.data_ptr()


def test_batch_zero():
    images = torch.rand(0, 3, 5, 5, requires_grad=True)
    out = paste(images, torch.rand(0, 3, 2, 2), torch.zeros(0, 4))
    assert out.shape == (0, 3, 5, 5)
    out.sum().backward()
    assert images.grad.shape == images.shape
    assert paste(images, torch.rand(0, 2, 3, 2, 2), torch.zeros(0, 2, 4)).shape == (0, 3, 5, 5)


def test_patches_dtype_is_cast_to_images(gen):
    images = torch.rand(1, 1, 4, 4, generator=gen)
    out = paste(images, torch.rand(1, 1, 2, 2, dtype=torch.float64), torch.tensor([[1.0, 1.0, 3.0, 3.0]]))
    assert out.dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("layout", ["b", "bk", "indices"])
def test_gradcheck_images_patches_boxes(layout, gen):
    images, patches, boxes, idx = make(layout, 2, 2, 6, 7, 3, 2, gen, dtype=torch.float64, indices=(1, 0, 1))
    for t in (images, patches, boxes):
        t.requires_grad_()

    def fn(img, p, b):
        return paste(img, p, b, indices=idx)

    assert torch.autograd.gradcheck(fn, (images, patches, boxes))


def test_box_gradient_at_integer_box_is_nonzero():
    # Integer boxes (e.g. an identity initialization) must still move: one-sided derivative,
    # as grid_sample gives.
    images = torch.zeros(1, 1, 6, 6)
    patches = torch.ones(1, 1, 2, 2)
    boxes = torch.tensor([[2.0, 2.0, 4.0, 4.0]], requires_grad=True)
    paste(images, patches, boxes).sum().backward()
    assert boxes.grad.abs().sum() > 0


def test_training_style_rotate_and_paste_back(gen):
    """Several glimpses of one image, rotated, edited by a layer, pasted back: backward works."""
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    images = torch.rand(2, 3, 16, 16, generator=gen, requires_grad=True)
    boxes = torch.tensor(
        [[1.5, 2.0, 9.5, 10.0], [6.0, 5.5, 14.0, 13.5], [3.0, 3.0, 11.0, 11.0]], requires_grad=True
    )
    angles = torch.tensor([0.3, -0.2, 1.0], requires_grad=True)
    indices = torch.tensor([0, 0, 1])  # two patches on image 0, overlapping

    theta = box_rotation_theta(boxes, angles, (16, 16))
    crops = affine_glimpse(images, theta, 8, indices=indices)
    edited = torch.sigmoid(conv(crops))
    pasted = paste(images, edited, boxes, indices=indices)
    loss = (pasted - 0.5).square().mean()
    loss.backward()
    for t in (images, boxes, angles, conv.weight):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0

    # Same with the (B, K) layout and an in-place op on the result downstream.
    images.grad = None
    boxes_bk = boxes[:2].unsqueeze(0).expand(2, 2, 4)
    crops = glimpse(images, boxes_bk, 8)
    pasted = paste(images, torch.sigmoid(conv(crops.flatten(0, 1))).unflatten(0, (2, 2)), boxes_bk)
    pasted.mul_(2).relu_()
    pasted.mean().backward()
    assert images.grad is not None


# --------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_errors():
    images = torch.rand(2, 3, 8, 8)
    patches = torch.rand(2, 3, 4, 4)
    boxes = torch.zeros(2, 4)
    with pytest.raises(TypeError, match="patches must be a torch.Tensor"):
        paste(images, patches.numpy(), boxes)
    with pytest.raises(TypeError, match="patches must be floating point"):
        paste(images, patches.to(torch.uint8), boxes)
    with pytest.raises(
        ValueError,
        match=r"patches must have 3 channels like images of shape \(2, 3, 8, 8\), "
        r"got patches of shape \(2, 1, 4, 4\)",
    ):
        paste(images, patches[:, :1], boxes)
    with pytest.raises(
        ValueError,
        match=r"patches must be \(B, C, h, w\) with leading shape \(2,\) to match boxes of shape "
        r"\(2, 4\), got patches of shape \(3, 3, 4, 4\)",
    ):
        paste(images, torch.rand(3, 3, 4, 4), boxes)
    with pytest.raises(ValueError, match=r"patches must be \(B, K, C, h, w\) with leading shape \(2, 2\)"):
        paste(images, torch.rand(2, 3, 4, 4), torch.zeros(2, 2, 4))
    with pytest.raises(
        ValueError, match=r"patches must be \(B, K, C, h, w\) with leading shape \(2, 2\).*\(2, 3, 3, 4, 4\)"
    ):
        paste(images, torch.rand(2, 3, 3, 4, 4), torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match=r"patches must be \(N, C, h, w\) with leading shape \(3,\)"):
        paste(images, patches, torch.zeros(3, 4), indices=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"boxes of shape \(3, 4\) must have one row per image"):
        paste(images, torch.rand(3, 3, 4, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="boxes must have last dimension 4"):
        paste(images, patches, torch.zeros(2, 5))
    with pytest.raises(TypeError, match="boxes must be floating point"):
        paste(images, patches, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 2\)"):
        paste(images, patches, boxes, indices=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"one entry per box"):
        paste(images, patches, boxes, indices=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="images must be 4-d"):
        paste(images[0], patches, boxes)
    with pytest.raises(ValueError, match="patches must have non-empty spatial"):
        paste(images, torch.rand(2, 3, 0, 4), boxes)


# --------------------------------------------------------------------------------------------------
# property tests


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(0, 3),
    channels=st.integers(1, 3),
    image_size=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    patch_size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    layout=st.sampled_from(["b", "bk", "indices"]),
    index_list=st.lists(st.integers(0, 2), max_size=7),
    seed=st.integers(0, 2**16),
)
def test_property_matches_oracle(batch, channels, image_size, patch_size, layout, index_list, seed):
    g = torch.Generator().manual_seed(seed)
    images, patches, boxes, idx = make(
        layout, batch, channels, *image_size, *patch_size, g, indices=index_list
    )
    out = paste(images, patches, boxes, indices=idx)
    expected = oracle(images, *flat_layout(images, patches, boxes, idx))
    assert out.shape == images.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    image_size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    patch_size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    corners=st.lists(
        st.tuples(st.integers(-4, 9), st.integers(-4, 9), st.integers(0, 2)), min_size=1, max_size=5
    ),
)
def test_property_integer_boxes_bit_exact(batch, image_size, patch_size, corners):
    (height, width), (h, w) = image_size, patch_size
    images = torch.rand(batch, 2, height, width)
    corners = [(x, y, i % batch) for x, y, i in corners]
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, _ in corners], dtype=torch.float32)
    idx = torch.tensor([i for _, _, i in corners])
    patches = torch.rand(len(corners), 2, h, w)
    out = paste(images, patches, boxes, indices=idx)
    expected = images.clone()
    for patch, (x, y, i) in zip(patches, corners):
        xs, ys = slice(max(x, 0), min(x + w, width)), slice(max(y, 0), min(y + h, height))
        if xs.start < xs.stop and ys.start < ys.stop:
            expected[i, :, ys, xs] = patch[:, ys.start - y : ys.stop - y, xs.start - x : xs.stop - x]
    assert torch.equal(out, expected)


# --------------------------------------------------------------------------------------------------
# CUDA


@CUDA
@pytest.mark.parametrize("layout", ["b", "bk", "indices"])
def test_cuda_matches_cpu(layout, gen):
    images, patches, boxes, idx = make(layout, 3, 2, 9, 11, 4, 3, gen)
    cpu = paste(images, patches, boxes, indices=idx)
    args = [t.cuda().requires_grad_() for t in (images, patches, boxes)]
    out = paste(*args, indices=None if idx is None else idx.cuda())
    torch.testing.assert_close(out.cpu(), cpu, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in args)


@CUDA
def test_cuda_integer_box_bit_exact_and_device_check(gen):
    images = torch.rand(2, 3, 8, 8, device="cuda")
    patches = torch.rand(2, 3, 3, 4, device="cuda")
    boxes = torch.tensor([[1.0, 2.0, 5.0, 5.0], [4.0, 5.0, 8.0, 8.0]], device="cuda")
    out = paste(images, patches, boxes)
    expected = images.clone()
    expected[0, :, 2:5, 1:5] = patches[0]
    expected[1, :, 5:8, 4:8] = patches[1]
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="patches is on cpu but images are on cuda"):
        paste(images, patches.cpu(), boxes)
