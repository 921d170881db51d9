"""Tests for stn.ops.glimpse: oracles (roi_align, grid_sample, F.interpolate), gradients, layouts,
padding and fill, anti-aliasing, special boxes, bad input, and a box found by gradient descent."""

from __future__ import annotations

import importlib
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou, roi_align

from stn.ops import glimpse

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PADDING_MODES = ["zeros", "border", "reflection"]


pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------------------------------
# layouts and shapes


def test_layouts_shapes_and_dtype(glimpse_gen, make_boxes):
    images = torch.rand(3, 2, 10, 12, generator=glimpse_gen, dtype=torch.float64)
    boxes = make_boxes(3, 10, 12, glimpse_gen, dtype=torch.float64)
    assert glimpse(images, boxes, 5).shape == (3, 2, 5, 5)
    assert glimpse(images, boxes, (4, 6)).dtype == torch.float64
    boxes_k = make_boxes(6, 10, 12, glimpse_gen).view(3, 2, 4)
    assert glimpse(images, boxes_k, (4, 6)).shape == (3, 2, 2, 4, 6)
    idx = torch.tensor([2, 0, 2, 2, 1])
    assert glimpse(images, make_boxes(5, 10, 12, glimpse_gen), (4, 6), indices=idx).shape == (5, 2, 4, 6)
    # float32 boxes with float64 images: converted, gradients come back in the boxes' dtype
    b32 = boxes.float().requires_grad_()
    glimpse(images, b32, 3).sum().backward()
    assert b32.grad.dtype == torch.float32


def test_identity_box_returns_the_image(glimpse_gen, tap_engine):
    """To 1e-6 by the tap engine; by grid_sample (plain bilinear, the default), whose samples are
    moved 2 eps of the normalized grid right/down of the pixel centres (for a consistent
    gradient at that kink), to 2 eps * (13 + 9) pixel steps (the move plus grid_sample's own
    rounding)."""
    images = torch.rand(2, 3, 9, 13, generator=glimpse_gen)
    full = torch.tensor([[0.0, 0.0, 13.0, 9.0]]).expand(2, 4)
    for mode in PADDING_MODES:
        for antialias in (False, True):
            with tap_engine():
                out = glimpse(images, full, (9, 13), padding_mode=mode, antialias=antialias)
            torch.testing.assert_close(out, images, atol=1e-6, rtol=0)
            out = glimpse(images, full, (9, 13), padding_mode=mode, antialias=antialias)
            torch.testing.assert_close(out, images, atol=2 * torch.finfo().eps * (13 + 9), rtol=0)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    n=st.integers(0, 6),
    size=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    seed=st.integers(0, 2**31 - 1),
    antialias=st.booleans(),
    mode=st.sampled_from(PADDING_MODES),
)
def test_indices_layout_equals_one_glimpse_per_box(b, n, size, seed, antialias, mode, make_boxes):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 2, 7, 9, generator=g, dtype=torch.float64)
    boxes = make_boxes(n, 7, 9, g, dtype=torch.float64)
    idx = torch.randint(0, b, (n,), generator=g)
    out = glimpse(images, boxes, size, indices=idx, antialias=antialias, padding_mode=mode)
    assert out.shape == (n, 2, *size)
    for k in range(n):
        i = int(idx[k])
        one = glimpse(images[i : i + 1], boxes[k : k + 1], size, antialias=antialias, padding_mode=mode)
        torch.testing.assert_close(out[k : k + 1], one, atol=1e-12, rtol=0)


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 3),
    k=st.integers(0, 3),
    seed=st.integers(0, 2**31 - 1),
    antialias=st.booleans(),
)
def test_per_image_boxes_equal_flattened_indices(b, k, seed, antialias, make_boxes):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, 8, 6, generator=g)
    boxes = make_boxes(b * k, 8, 6, g).view(b, k, 4)
    out = glimpse(images, boxes, (3, 4), antialias=antialias)
    assert out.shape == (b, k, 3, 3, 4)
    idx = torch.arange(b).repeat_interleave(k)
    flat = glimpse(images, boxes.reshape(-1, 4), (3, 4), indices=idx, antialias=antialias)
    torch.testing.assert_close(out.reshape(-1, 3, 3, 4), flat, atol=0, rtol=0)


@pytest.mark.parametrize("layout", ["B", "BK", "indices"])
def test_empty_batches(layout):
    if layout == "B":
        images, boxes, kw, shape = torch.rand(0, 2, 5, 5), torch.zeros(0, 4), {}, (0, 2, 3, 4)
    elif layout == "BK":
        images, boxes, kw, shape = torch.rand(2, 2, 5, 5), torch.zeros(2, 0, 4), {}, (2, 0, 2, 3, 4)
    else:
        images, boxes = torch.rand(2, 2, 5, 5), torch.zeros(0, 4)
        kw, shape = {"indices": torch.zeros(0, dtype=torch.long)}, (0, 2, 3, 4)
    images.requires_grad_()
    boxes.requires_grad_()
    for antialias in (False, True):
        out = glimpse(images, boxes, (3, 4), antialias=antialias, fill=0.5, **kw)
        assert out.shape == shape
        out.sum().backward()
        assert images.grad.shape == images.shape and not images.grad.any()
        assert boxes.grad.shape == boxes.shape


# --------------------------------------------------------------------------------------------------
# oracles


def test_equals_roi_align_inside_the_image(glimpse_gen, make_boxes):
    images = torch.rand(4, 3, 20, 24, generator=glimpse_gen)
    boxes = make_boxes(10, 20, 24, glimpse_gen, inside=True)
    idx = torch.tensor([0, 3, 3, 1, 2, 0, 0, 1, 3, 2])
    rois = torch.cat([idx[:, None].float(), boxes], 1)
    for size in [(7, 7), (3, 11), (28, 28)]:
        ref = roi_align(images, rois, size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
        out = glimpse(images, boxes, size, indices=idx)
        assert (out - ref).abs().max() <= 1e-5
    # roi_align clamps samples within a pixel of the edge to the edge pixel: "border" does too
    edge = torch.tensor([[0.0, 0.0, 24.0, 20.0], [0.0, 3.0, 5.0, 20.0]])
    rois = torch.cat([torch.zeros(2, 1), edge], 1)
    ref = roi_align(images, rois, (30, 40), 1.0, 1, True)
    out = glimpse(images, edge, (30, 40), indices=torch.zeros(2, dtype=torch.long), padding_mode="border")
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", PADDING_MODES)
def test_equals_grid_sample_for_any_box(mode, glimpse_gen, make_boxes, glimpse_oracle):
    images = torch.rand(3, 2, 15, 19, generator=glimpse_gen)
    boxes = make_boxes(12, 15, 19, glimpse_gen)  # partly and fully outside, some tiny
    boxes[0] = torch.tensor([-30.0, -20.0, -25.0, -2.0])  # entirely outside
    boxes[1] = torch.tensor([14.5, 3.2, 2.1, 12.9])  # inverted in x
    boxes[2] = torch.tensor([3.3, 4.4, 3.3, 9.0])  # zero width
    idx = torch.randint(0, 3, (12,), generator=glimpse_gen)
    for size in [(5, 7), (1, 1), (31, 2)]:
        out = glimpse(images, boxes, size, indices=idx, padding_mode=mode)
        ref = glimpse_oracle(images, boxes, size, indices=idx, padding_mode=mode)
        assert (out - ref).abs().max() <= 1e-5
    # float64: agreement to rounding
    d = images.double()
    out = glimpse(d, boxes.double(), (6, 5), indices=idx, padding_mode=mode)
    ref = glimpse_oracle(d, boxes.double(), (6, 5), indices=idx, padding_mode=mode)
    assert (out - ref).abs().max() <= 1e-10


@settings(max_examples=30, deadline=None)
@given(
    hw=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    seed=st.integers(0, 2**31 - 1),
    mode=st.sampled_from(PADDING_MODES),
    per_image=st.integers(0, 3),
)
def test_equals_grid_sample_property(hw, size, seed, mode, per_image, make_boxes, glimpse_oracle):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 2, *hw, generator=g, dtype=torch.float64)
    boxes = make_boxes(2 * per_image, *hw, g, min_size=0.0, dtype=torch.float64).view(2, per_image, 4)
    out = glimpse(images, boxes, size, padding_mode=mode)
    ref = glimpse_oracle(images, boxes, size, padding_mode=mode)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def test_fill_is_the_value_outside_the_image(glimpse_gen, make_boxes, glimpse_oracle):
    images = torch.rand(2, 3, 10, 10, generator=glimpse_gen)
    boxes = make_boxes(2, 10, 10, glimpse_gen)
    boxes[0] = torch.tensor([-4.3, -2.2, 6.1, 14.7])
    for fill in [0.5, [0.1, -2.0, 3.0], torch.tensor([0.2, 0.4, 0.6])]:
        out = glimpse(images, boxes, (6, 8), fill=fill)
        ref = glimpse_oracle(images, boxes, (6, 8), fill=fill)
        assert (out - ref).abs().max() <= 1e-5
    # a box far outside is pure fill; inside the image fill changes nothing
    far = torch.tensor([[100.0, 100.0, 110.0, 120.0], [2.0, 2.0, 8.0, 8.0]])
    out = glimpse(images, far, 4, fill=[1.0, 2.0, 3.0])
    assert torch.equal(out[0], torch.tensor([1.0, 2.0, 3.0])[:, None, None].expand(3, 4, 4))
    torch.testing.assert_close(out[1], glimpse(images, far, 4)[1])


def test_fill_gradient():
    images = torch.rand(2, 2, 6, 7, dtype=torch.float64)
    boxes = torch.tensor([[-3.3, -1.7, 5.2, 8.9], [1.1, 2.3, 9.7, 4.4]], dtype=torch.float64)
    fill = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: glimpse(images, boxes, (3, 4), fill=f), (fill,))
    assert torch.autograd.gradcheck(lambda f: glimpse(images, boxes, (3, 4), fill=f, antialias=True), (fill,))


# --------------------------------------------------------------------------------------------------
# anti-aliasing


@pytest.mark.parametrize(
    "box,size",
    [
        ((4, 2, 44, 34), (8, 10)),  # integer factors 4x4
        ((0, 0, 37, 29), (6, 13)),  # non-integer factors
        ((5, 3, 50, 40), (37, 9)),  # downscale in x only (y: 37 from 37)
        ((10, 7, 21, 40), (20, 5)),  # upscale in x, downscale in y
    ],
)
def test_antialias_interior_equals_interpolate(box, size, glimpse_gen):
    images = torch.rand(2, 3, 41, 52, generator=glimpse_gen)
    x1, y1, x2, y2 = box
    crop = images[..., y1:y2, x1:x2]
    ref = F.interpolate(crop, size, mode="bilinear", antialias=True, align_corners=False)
    out = glimpse(images, torch.tensor([box], dtype=torch.float32).expand(2, 4), size, antialias=True)
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert (out[interior] - ref[interior]).abs().max() <= 1e-5


def test_antialias_changes_nothing_when_upsampling(glimpse_gen, tap_engine):
    """Bit-exact against the tap engine's plain bilinear, and as close as rounding allows to the
    default plain path (grid_sample)."""
    images = torch.rand(3, 2, 30, 30, generator=glimpse_gen)
    boxes = torch.tensor(
        [[2.3, 4.1, 9.9, 12.2], [-3.0, 25.5, 4.5, 31.0], [18.7, 1.2, 11.3, 8.8]]
    )  # last: inverted
    for mode in PADDING_MODES:
        a = glimpse(images, boxes, (16, 9), padding_mode=mode, antialias=True)
        with tap_engine():
            b = glimpse(images, boxes, (16, 9), padding_mode=mode)
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        torch.testing.assert_close(a, glimpse(images, boxes, (16, 9), padding_mode=mode))


def test_antialias_gradient_at_pixel_centres_matches_bilinear(glimpse_gen, tap_engine):
    """A box sampling exactly at pixel centres (a = 1): anti-aliasing changes nothing, gradients
    included, even when another box of the batch is downscaled (and takes the triangle filter).
    Plain bilinear by the tap engine, which, unlike grid_sample's normalized grid, hits pixel
    centres exactly."""
    images = torch.rand(2, 2, 12, 16, generator=glimpse_gen, dtype=torch.float64)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 12.0], [-3.3, 1.1, 15.2, 11.7]], dtype=torch.float64)
    grads = []
    for antialias in (False, True):
        b = boxes.clone().requires_grad_()
        with tap_engine():
            out = glimpse(images, b, (12, 16), antialias=antialias)
        out.mul(torch.arange(12.0)[:, None]).sum().backward()
        grads.append(b.grad[0])
    assert grads[0].abs().min() > 1e-3  # the right derivative, not zero
    torch.testing.assert_close(grads[1], grads[0])


def test_antialias_averages_the_footprint(glimpse_gen):
    noise = torch.rand(4, 1, 64, 64, generator=glimpse_gen)
    full = torch.tensor([[0.0, 0.0, 64.0, 64.0]]).expand(4, 4)
    plain = glimpse(noise, full, 8)
    smooth = glimpse(noise, full, 8, antialias=True, padding_mode="reflection")
    # bilinear reads 4 pixels per output, the triangle filter ~16x16: far less variance
    assert smooth.std() < 0.35 * plain.std()
    torch.testing.assert_close(smooth.mean(), noise.mean(), atol=0.02, rtol=0)
    # a constant image stays constant (border padding: the footprint past the edge is the edge)
    const = torch.full((1, 2, 20, 30), 0.7)
    out = glimpse(
        const, torch.tensor([[-5.5, -3.1, 33.3, 26.2]]), (3, 4), antialias=True, padding_mode="border"
    )
    torch.testing.assert_close(out, torch.full_like(out, 0.7))


# --------------------------------------------------------------------------------------------------
# gradients


def _grad_inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 2, 7, 9, generator=g, dtype=dtype, requires_grad=True)
    # non-integer coordinates: no sample or filter edge on a pixel centre (bilinear kinks)
    boxes = torch.tensor(
        [
            [1.37, 0.71, 6.13, 5.93],
            [-2.21, 3.17, 11.73, 9.41],
            [8.11, 6.23, 0.37, 1.13],
            [2.9, 1.6, 4.3, 2.2],
        ],
        dtype=dtype,
        requires_grad=True,
    )
    idx = torch.tensor([1, 0, 1, 1])
    return images, boxes, idx


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("mode", PADDING_MODES)
def test_gradcheck_images_and_boxes(mode, antialias):
    images, boxes, idx = _grad_inputs()
    fill = 0.3 if mode == "zeros" else 0.0

    def fn(i, b):
        return glimpse(i, b, (4, 3), indices=idx, padding_mode=mode, antialias=antialias, fill=fill)

    assert torch.autograd.gradcheck(fn, (images, boxes), atol=1e-7)


@pytest.mark.parametrize("antialias", [False, True])
def test_gradcheck_every_code_path(glimpse_path, antialias):
    images, boxes, idx = _grad_inputs()
    for mode in PADDING_MODES:

        def fn(i, b, mode=mode):
            return glimpse(i, b, (4, 3), indices=idx, padding_mode=mode, antialias=antialias)

        assert torch.autograd.gradcheck(fn, (images, boxes), atol=1e-7, fast_mode=True)


def test_generic_taps_gradcheck(glimpse_path):
    """The private engine with arbitrary taps (as stn.ops.paste uses it): gradients to the images
    and to both weight tensors, duplicate taps included."""
    sep = importlib.import_module("stn.ops._separable")
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([1, 0, 1])
    ky = torch.randint(0, 5, (3, 4, 3), generator=g)
    kx = torch.randint(0, 6, (3, 2, 2), generator=g)
    kx[0, 0] = torch.tensor([3, 3])  # the same column twice
    wy = torch.randn(3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    wx = torch.randn(3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    out = sep.separable_sample(images, idx, ky, wy, kx, wx)
    dense_y = torch.zeros(3, 4, 5, dtype=torch.float64).scatter_add_(2, ky, wy.detach())
    dense_x = torch.zeros(3, 2, 6, dtype=torch.float64).scatter_add_(2, kx, wx.detach())
    want = dense_y[:, None] @ images.detach()[idx] @ dense_x[:, None].transpose(-1, -2)
    torch.testing.assert_close(out, want)
    fn = lambda i, a, b: sep.separable_sample(i, idx, ky, a, kx, b)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (images, wy, wx))


@pytest.mark.parametrize("antialias", [False, True])
def test_code_paths_agree(antialias, glimpse_gen, make_boxes, all_glimpse_paths):
    """Every backward strategy / chunking gives the default's values and gradients (float32)."""
    images = torch.rand(5, 3, 24, 30, generator=glimpse_gen)
    boxes = make_boxes(9, 24, 30, glimpse_gen)
    # samples exactly on pixel centres along x (a zero bilinear weight with a non-zero
    # derivative, which must not be skipped), downscaled along y
    boxes[3] = torch.tensor([2.0, 1.3, 7.0, 20.7])
    idx = torch.randint(0, 5, (9,), generator=glimpse_gen)
    grad = torch.randn(9, 3, 6, 5, generator=glimpse_gen)
    results = {}
    for name, paths in all_glimpse_paths:
        i, b = images.clone().requires_grad_(), boxes.clone().requires_grad_()
        with paths():
            out = glimpse(i, b, (6, 5), indices=idx, antialias=antialias, fill=0.25)
            out.backward(grad)
        results[name] = (out.detach(), i.grad, b.grad)
    ref = results["cpu-default"]
    # box gradients: float32 sums over every sample (grid_sample's are 3e-5 off float64 here)
    for name, res in results.items():
        for a, r, atol in zip(res, ref, (2e-5, 2e-5, 6e-5)):
            torch.testing.assert_close(a, r, atol=atol, rtol=1e-5, msg=name)


def test_backward_is_deterministic(glimpse_gen, make_boxes):
    images = torch.rand(4, 3, 32, 32, generator=glimpse_gen)
    boxes = make_boxes(40, 32, 32, glimpse_gen)
    idx = torch.randint(0, 4, (40,), generator=glimpse_gen)  # many boxes per image
    grad = torch.randn(40, 3, 8, 8, generator=glimpse_gen)
    runs = []
    for _ in range(2):
        i, b = images.clone().requires_grad_(), boxes.clone().requires_grad_()
        glimpse(i, b, 8, indices=idx, antialias=True).backward(grad)
        runs.append((i.grad, b.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_matches_grid_sample_gradients(glimpse_gen, make_boxes, glimpse_oracle):
    """Gradients w.r.t. images and boxes equal the autograd of affine_grid + grid_sample."""
    images = torch.rand(3, 2, 11, 13, generator=glimpse_gen, dtype=torch.float64)
    boxes = make_boxes(6, 11, 13, glimpse_gen, dtype=torch.float64)
    idx = torch.tensor([0, 2, 2, 1, 0, 2])
    grad = torch.randn(6, 2, 5, 4, generator=glimpse_gen, dtype=torch.float64)
    for mode in PADDING_MODES:
        got, want = [], []
        for fn, store in ((glimpse, got), (glimpse_oracle, want)):
            i, b = images.clone().requires_grad_(), boxes.clone().requires_grad_()
            fn(i, b, (5, 4), indices=idx, padding_mode=mode).backward(grad)
            store += [i.grad, b.grad]
        torch.testing.assert_close(got[0], want[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(got[1], want[1], atol=1e-9, rtol=0)


@pytest.mark.parametrize("antialias", [False, True])
def test_gradient_at_pixel_centres_is_the_right_derivative(antialias, glimpse_gen, tap_engine):
    """Every sample on a pixel centre (a kink of bilinear interpolation): the gradient w.r.t. each
    coordinate is the one-sided difference quotient for increasing it (which moves every sample
    right or down). Anti-aliased, a box exactly as large as the glimpse (a = 1) has a second kink,
    the onset of the blur when it widens (x2, y2); its gradient there is the plain bilinear one
    (test_antialias_gradient_at_pixel_centres_matches_bilinear), so only x1, y1 are checked.
    Plain bilinear by grid_sample (the default) rounds each sample a hair to either side of the
    centre, so each takes one side's derivative: the sum is finite and moves integer boxes."""
    images = torch.rand(2, 2, 11, 13, generator=glimpse_gen, dtype=torch.float64)
    boxes = torch.tensor([[2.0, 3.0, 6.0, 8.0], [0.0, 0.0, 13.0, 11.0]], dtype=torch.float64)
    weights = torch.randn(2, 2, 5, 4, generator=glimpse_gen, dtype=torch.float64)

    def loss(b):
        return (glimpse(images, b, (5, 4), antialias=antialias, padding_mode="border") * weights).sum()

    with tap_engine():
        b = boxes.clone().requires_grad_()
        loss(b).backward()
        eps = 1e-7
        for n in range(2):
            for k in range(2 if antialias and n == 0 else 4):
                moved = boxes.clone()
                moved[n, k] += eps
                assert abs((loss(moved) - loss(boxes)).item() / eps - b.grad[n, k].item()) < 1e-5
    b = boxes.clone().requires_grad_()
    loss(b).backward()
    assert torch.isfinite(b.grad).all() and (b.grad != 0).all()


def test_inputs_not_modified(glimpse_gen, make_boxes):
    images = torch.rand(2, 3, 9, 9, generator=glimpse_gen, requires_grad=True)
    boxes = make_boxes(2, 9, 9, glimpse_gen).requires_grad_()
    saved = images.detach().clone(), boxes.detach().clone()
    glimpse(images, boxes, 4, antialias=True, fill=[1.0, 2.0, 3.0]).sum().backward()
    assert torch.equal(images.detach(), saved[0]) and torch.equal(boxes.detach(), saved[1])


def test_non_contiguous_images(glimpse_gen, make_boxes):
    images = torch.rand(2, 3, 10, 12, generator=glimpse_gen)
    boxes = make_boxes(2, 10, 12, glimpse_gen)
    ref = glimpse(images, boxes, (5, 6), antialias=True)
    cl = images.contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.testing.assert_close(glimpse(cl, boxes, (5, 6), antialias=True), ref)
    glimpse(cl, boxes, (5, 6)).sum().backward()
    assert cl.grad.shape == cl.shape


def test_half_precision_runs_close_to_float64(glimpse_gen):
    images = torch.rand(2, 3, 20, 24, generator=glimpse_gen)
    boxes = torch.tensor([[1.3, 2.2, 15.1, 17.9], [-3.0, 4.0, 30.0, 12.0]])
    for dtype in (torch.float16, torch.bfloat16):
        for antialias in (False, True):
            i, b = images.to(dtype).requires_grad_(), boxes.to(dtype).requires_grad_()
            out = glimpse(i, b, (6, 7), antialias=antialias)
            ref = glimpse(images.double(), boxes.double(), (6, 7), antialias=antialias)
            assert out.dtype == dtype
            assert (out.double() - ref).abs().max() < 0.05
            out.float().sum().backward()
            assert i.grad.dtype == dtype and torch.isfinite(b.grad.float()).all()


# --------------------------------------------------------------------------------------------------
# special boxes


def test_zero_size_box_is_finite():
    images = torch.rand(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    for box in ([3.3, 2.7, 3.3, 2.7], [1.2, 4.6, 6.6, 4.6]):
        boxes = torch.tensor([box], dtype=torch.float64, requires_grad=True)
        for antialias in (False, True):
            out = glimpse(images, boxes, (3, 4), antialias=antialias)
            assert torch.isfinite(out).all()
            images.grad = boxes.grad = None
            out.sum().backward()
            assert torch.isfinite(images.grad).all() and torch.isfinite(boxes.grad).all()
    # a point box repeats one bilinear sample
    point = glimpse(images, torch.tensor([[3.3, 2.7, 3.3, 2.7]], dtype=torch.float64), 2)
    assert torch.allclose(point, point[..., :1, :1].expand_as(point))
    point_box = torch.tensor([[3.3, 2.7, 3.3, 2.7]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: glimpse(images.detach(), b, (3, 2)), (point_box,))


@pytest.mark.parametrize("antialias", [False, True])
def test_inverted_box_samples_mirrored(antialias, glimpse_gen, glimpse_oracle):
    images = torch.rand(2, 3, 30, 40, generator=glimpse_gen)
    box = torch.tensor([[3.3, 2.1, 35.7, 21.9]]).expand(2, 4)
    out = glimpse(images, box, (6, 5), antialias=antialias)
    flip_x = glimpse(images, box[:, [2, 1, 0, 3]], (6, 5), antialias=antialias)
    flip_y = glimpse(images, box[:, [0, 3, 2, 1]], (6, 5), antialias=antialias)
    torch.testing.assert_close(flip_x, out.flip(-1))
    torch.testing.assert_close(flip_y, out.flip(-2))
    if not antialias:  # and exactly what affine_grid does with a negative scale
        torch.testing.assert_close(flip_x, glimpse_oracle(images, box[:, [2, 1, 0, 3]], (6, 5)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_box_gives_nan_glimpse_only(bad, glimpse_gen, make_boxes):
    images = torch.rand(2, 2, 9, 9, generator=glimpse_gen)
    boxes = make_boxes(4, 9, 9, glimpse_gen)
    boxes[1, 2] = bad
    idx = torch.tensor([0, 0, 1, 0])  # the bad box shares image 0 with two good ones
    for antialias in (False, True):
        i, b = images.clone().requires_grad_(), boxes.clone().requires_grad_()
        out = glimpse(i, b, 4, indices=idx, antialias=antialias, fill=0.5)
        assert torch.isnan(out[1]).all()
        good = [0, 2, 3]
        ref = glimpse(images, boxes[good], 4, indices=idx[good], antialias=antialias, fill=0.5)
        torch.testing.assert_close(out[good], ref)
        # masking the bad glimpse out of the loss keeps every gradient finite
        out[good].sum().backward()
        assert torch.isfinite(i.grad).all() and torch.isfinite(b.grad).all()
        assert not b.grad[1].any()
        ri, rb = images.clone().requires_grad_(), boxes[good].clone().requires_grad_()
        glimpse(ri, rb, 4, indices=idx[good], antialias=antialias, fill=0.5).sum().backward()
        torch.testing.assert_close(i.grad, ri.grad)
        torch.testing.assert_close(b.grad[good], rb.grad)


def test_finite_boxes_whose_sum_overflows_are_not_taken_for_non_finite(glimpse_gen, make_boxes):
    # the all-finite check sums the boxes: huge but finite coordinates overflow that sum to inf,
    # and must still sample as boxes (far outside the image: zeros), not turn into NaN glimpses
    images = torch.rand(2, 1, 9, 9, generator=glimpse_gen)
    boxes = make_boxes(2, 9, 9, glimpse_gen)
    boxes[1] = torch.tensor([1e38, 1e38, 1.1e38, 1.1e38])
    assert torch.isinf(boxes.sum())
    for antialias in (False, True):
        out = glimpse(images, boxes, 4, antialias=antialias)
        torch.testing.assert_close(out[0], glimpse(images[:1], boxes[:1], 4, antialias=antialias)[0])
        assert torch.equal(out[1], torch.zeros_like(out[1]))


def _tiled(images, mode, reps):
    """images padded by ``reps`` image sizes on every side the way ``mode`` pads them."""
    if mode == "zeros":
        return F.pad(images, [reps * images.shape[-1]] * 2 + [reps * images.shape[-2]] * 2)
    if mode == "border":
        return F.pad(images, [reps * images.shape[-1]] * 2 + [reps * images.shape[-2]] * 2, mode="replicate")
    # reflection about the image edges: the signal [flip(x), x] repeats with period 2 * size;
    # the unflipped copies are the odd tiles
    for dim in (-1, -2):
        pair = torch.cat([images.flip(dim), images], dim)
        images = torch.cat([pair] * (reps + 1) + [images.flip(dim)], dim)  # 2 * reps + 3 sizes wide
    return images


@pytest.mark.parametrize("mode", PADDING_MODES)
def test_antialias_box_larger_than_image_equals_padded_image(mode, glimpse_gen):
    """Boxes far larger than the image read its padding analytically, with at most one tap per
    image pixel: the same values and box gradients as the same box on the explicitly padded
    image (which it fits, so there every padding position is an ordinary tap)."""
    taps_module = importlib.import_module("stn.ops._taps")
    images = torch.rand(2, 2, 5, 7, generator=glimpse_gen, dtype=torch.float64)
    boxes = torch.tensor([[-9.33, -6.21, 15.13, 10.77], [20.11, -3.03, -12.37, 9.43]], dtype=torch.float64)
    # the footprints (box +- box / glimpse) fit inside; reflected, copy 5 of the tiles is unflipped
    shift = torch.tensor([7.0, 5.0, 7.0, 5.0], dtype=torch.float64) * (5 if mode == "reflection" else 4)
    padded = _tiled(images, mode, 4)
    b, pb = boxes.clone().requires_grad_(), (boxes + shift).requires_grad_()
    taps = taps_module.axis_taps(b[:, 0], b[:, 2], 3, 7, antialias=True, padding_mode=mode)
    assert taps.index.shape[-1] <= 7  # not the 2 * 24 / 3 = 16 a box of 24 px would need
    out = glimpse(images, b, (2, 3), antialias=True, padding_mode=mode)
    ref = glimpse(padded, pb, (2, 3), antialias=True, padding_mode=mode)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(b.grad, pb.grad)
    assert torch.autograd.gradcheck(
        lambda i, bb: glimpse(i, bb, (2, 3), antialias=True, padding_mode=mode),
        (images.clone().requires_grad_(), boxes.clone().requires_grad_()),
    )


def test_antialias_huge_box_costs_no_more_than_the_image():
    """A 1e9-pixel box on a 40x40 image: the taps stop at the image (before the cap this tried to
    allocate 16-32 GB; 1e7 px took 42 s)."""
    images = torch.rand(3, 2, 40, 40)
    boxes = torch.tensor([[-5e8, -5e8, 5e8, 5e8], [-1e9, 3.0, 1e9, 20.0], [1e3, 1e3, 1e9, 1e9]])
    for mode in PADDING_MODES:
        b = boxes.clone().requires_grad_()
        start = time.perf_counter()
        out = glimpse(images, b, (8, 8), antialias=True, padding_mode=mode)
        out.sum().backward()
        assert time.perf_counter() - start < 5.0
        assert torch.isfinite(out).all() and torch.isfinite(b.grad).all()
        if mode == "border":  # every tap beyond the image reads the edge: at most the edge's values
            assert out.min() >= images.min() - 1e-6 and out.max() <= images.max() + 1e-6


def test_huge_boxes_stay_safe():
    images = torch.rand(1, 1, 5, 5)
    boxes = torch.tensor([[-1e30, -1e30, 1e30, 1e30], [1e12, 1e12, 1e12 + 3, 1e12 + 3]])
    idx = torch.zeros(2, dtype=torch.long)
    for mode in PADDING_MODES:
        out = glimpse(images, boxes, 3, indices=idx, padding_mode=mode)  # no crash, no garbage read
        assert out.shape == (2, 1, 3, 3)
    out = glimpse(images, boxes, 3, indices=idx, fill=0.25)
    assert torch.equal(out[1], torch.full((1, 3, 3), 0.25))


@pytest.mark.parametrize("edge", [1e20, 1e30, 3e38])
def test_antialias_boxes_near_float_max_give_fill_and_finite_gradients(edge, glimpse_gen):
    """Anti-aliased boxes with edges up to the float32 maximum: the image is a vanishing part of
    the box, so the glimpse is the fill, and the gradients are finite (the filter's half-width
    squared overflowed to NaN gradients from 1e30, and 3e38 - (-3e38) = inf raised an error)."""
    images = torch.rand(2, 1, 20, 20, generator=glimpse_gen)
    boxes = torch.tensor([[-edge, -edge, edge, edge], [-edge, 2.0, edge, 10.0], [3.0, -edge, 12.0, edge]])
    idx = torch.tensor([0, 1, 1])
    for mode in PADDING_MODES:
        i, b = images.clone().requires_grad_(), boxes.clone().requires_grad_()
        fill = 0.25 if mode == "zeros" else 0.0
        out = glimpse(i, b, 8, indices=idx, antialias=True, padding_mode=mode, fill=fill)
        out.sum().backward()
        assert torch.isfinite(i.grad).all() and torch.isfinite(b.grad).all()
        if mode == "zeros":
            torch.testing.assert_close(out, torch.full_like(out, 0.25))
        else:  # border and reflection read image values only: within their range
            assert out.min() >= images.min() - 1e-6 and out.max() <= images.max() + 1e-6


# --------------------------------------------------------------------------------------------------
# optimization: a box finds a bright square


@pytest.mark.parametrize("antialias", [False, True])
def test_box_descends_onto_bright_square(antialias):
    size = 48
    target_box = torch.tensor([[20.0, 14.0, 34.0, 30.0]])
    image = torch.zeros(1, 1, size, size)
    image[..., 14:30, 20:34] = 1.0
    blur = torch.exp(-0.5 * (torch.arange(-6, 7.0) / 2.5) ** 2)
    blur = blur / blur.sum()
    image = F.conv2d(
        F.conv2d(image, blur.view(1, 1, 1, -1), padding=(0, 6)), blur.view(1, 1, -1, 1), padding=(6, 0)
    )
    target = glimpse(image, target_box, 16, antialias=antialias)
    box = torch.tensor([[9.0, 21.0, 31.0, 42.0]], requires_grad=True)
    assert box_iou(box.detach(), target_box).item() < 0.2
    opt = torch.optim.Adam([box], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        loss = F.mse_loss(glimpse(image, box, 16, antialias=antialias), target)
        loss.backward()
        opt.step()
    assert box_iou(box.detach(), target_box).item() > 0.8


# --------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_messages():
    images = torch.rand(2, 3, 8, 8)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match=r"images must be 4-d .* got shape \(3, 8, 8\)"):
        glimpse(images[0], boxes, 4)
    with pytest.raises(TypeError, match="images must be floating point, got dtype torch.uint8"):
        glimpse(images.to(torch.uint8), boxes, 4)
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        glimpse(images.numpy(), boxes, 4)
    with pytest.raises(ValueError, match=r"boxes must have last dimension 4 .* got shape \(2, 3\)"):
        glimpse(images, boxes[:, :3], 4)
    with pytest.raises(ValueError, match=r"boxes of shape \(3, 4\) must have one row per image \(2 images"):
        glimpse(images, torch.zeros(3, 4), 4)
    with pytest.raises(ValueError, match=r"boxes of shape \(3, 2, 4\) must have first dimension 2"):
        glimpse(images, torch.zeros(3, 2, 4), 4)
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 2\) .* got values in \[0, 2\]"):
        glimpse(images, torch.zeros(3, 4), 4, indices=torch.tensor([0, 2, 1]))
    with pytest.raises(IndexError, match=r"got values in \[-1, 1\]"):
        glimpse(images, torch.zeros(3, 4), 4, indices=torch.tensor([0, -1, 1]))
    with pytest.raises(
        ValueError, match=r"indices must be 1-d with one entry per box: boxes has shape \(3, 4\)"
    ):
        glimpse(images, torch.zeros(3, 4), 4, indices=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="indices must be an integer"):
        glimpse(images, torch.zeros(3, 4), 4, indices=torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"size must be positive, got \(0, 4\)"):
        glimpse(images, boxes, (0, 4))
    with pytest.raises(ValueError, match=r"size must be positive, got \(-3, -3\)"):
        glimpse(images, boxes, -3)
    with pytest.raises(TypeError, match="size must be an int or a pair"):
        glimpse(images, boxes, "big")
    with pytest.raises(TypeError, match=r"size must be an int or a pair \(h, w\) of ints, got \(2.5, 3\)"):
        glimpse(images, boxes, (2.5, 3))
    with pytest.raises(TypeError, match="size must be an int or a pair"):
        glimpse(images, boxes, (1, 2, 3))
    # integer scalars of other types are sizes too
    assert glimpse(images, boxes, torch.tensor(3)).shape == (2, 3, 3, 3)
    assert glimpse(images, boxes, torch.Size([2, 5])).shape == (2, 3, 2, 5)
    with pytest.raises(ValueError, match="padding_mode must be one of .* got 'wrap'"):
        glimpse(images, boxes, 4, padding_mode="wrap")
    with pytest.raises(
        ValueError, match=r"fill must be a number or one value per channel \(3\), got 2 values"
    ):
        glimpse(images, boxes, 4, fill=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"fill must be .* got a tensor of shape \(2, 3\)"):
        glimpse(images, boxes, 4, fill=torch.zeros(2, 3))
    with pytest.raises(
        ValueError, match="fill is only used with padding_mode='zeros', got padding_mode='border'"
    ):
        glimpse(images, boxes, 4, fill=0.5, padding_mode="border")
    with pytest.raises(ValueError, match=r"images must have at least one pixel, got shape \(2, 3, 0, 8\)"):
        glimpse(torch.rand(2, 3, 0, 8), boxes, 4)
    # fill=0 with another padding mode is no conflict
    glimpse(images, boxes, 4, fill=0.0, padding_mode="reflection")


# --------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


@CUDA
@pytest.mark.parametrize("antialias", [False, True])
def test_cuda_matches_cpu_and_is_deterministic(antialias, glimpse_gen, make_boxes):
    images = torch.rand(6, 3, 40, 50, generator=glimpse_gen)
    boxes = make_boxes(20, 40, 50, glimpse_gen)
    idx = torch.randint(0, 6, (20,), generator=glimpse_gen)
    grad = torch.randn(20, 3, 9, 7, generator=glimpse_gen)
    results = []
    # The run of the default (grid_sample for plain bilinear, atomics in its backward), then two
    # under torch.use_deterministic_algorithms, where glimpse promises a bitwise-repeatable backward.
    for device, deterministic in (("cpu", False), ("cuda", False), ("cuda", True), ("cuda", True)):
        torch.use_deterministic_algorithms(deterministic)
        try:
            i = images.to(device).requires_grad_()
            b = boxes.to(device).requires_grad_()
            out = glimpse(i, b, (9, 7), indices=idx.to(device), antialias=antialias, fill=0.3)
            out.backward(grad.to(device))
        finally:
            torch.use_deterministic_algorithms(False)
        results.append([t.cpu() for t in (out, i.grad, b.grad)])
    for run in results[1:]:
        for a, r in zip(run, results[0]):
            torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)
    for a, r in zip(results[2], results[3]):
        assert torch.equal(a, r)


@CUDA
def test_cuda_per_image_layout_and_empty():
    images = torch.rand(3, 2, 16, 16, device="cuda")
    boxes = torch.tensor([[1.5, 2.5, 12.0, 9.0]], device="cuda").expand(3, 2, 4)
    out = glimpse(images, boxes, 5)
    torch.testing.assert_close(out.cpu(), glimpse(images.cpu(), boxes.cpu(), 5), atol=1e-5, rtol=0)
    assert glimpse(images, torch.zeros(3, 0, 4, device="cuda"), 5).shape == (3, 0, 2, 5, 5)


def test_grid_constants_cached_under_inference_mode_serve_training(glimpse_gen):
    """The plain path caches its grid constants per (size, image size, dtype, device): made first
    under torch.inference_mode(), they must still give the same values and box gradients later."""
    images = torch.rand(2, 1, 13, 11, generator=glimpse_gen, dtype=torch.float64)
    boxes = torch.tensor([[1.3, 2.1, 9.6, 12.2], [-2.0, 0.5, 6.5, 7.25]], dtype=torch.float64)
    with torch.inference_mode():
        first = glimpse(images, boxes, (3, 5))
    b = boxes.clone().requires_grad_()
    out = glimpse(images, b, (3, 5))
    torch.testing.assert_close(out, first)
    assert torch.autograd.gradcheck(lambda bb: glimpse(images, bb, (3, 5)), (b,))
