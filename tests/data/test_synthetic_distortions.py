"""Distortion recipes (stn.data.synthetic.distortions) and the reproducibility of every composition."""

from __future__ import annotations

import pytest
import torch

from stn.data.synthetic import (
    DISTORTIONS,
    clutter,
    distort,
    rotate_scale,
    tight_boxes,
    translate,
)
from stn.data.synthetic.distortions import is_convex
from tests.data.synthetic_digits import DEVICES, digits, gen

pytestmark = pytest.mark.usefixtures("single_thread")


def test_rotation_direction_and_identity():
    d = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    d[0, 0, 14, 20] = 200  # right of the centre (14, 14)
    turned = rotate_scale(d, torch.tensor([90.0]), torch.tensor([1.0]), 28)
    assert turned[0, 0].argmax().item() == 7 * 28 + 14  # now above it: counter-clockwise on screen
    assert turned.max() == 200 and turned.sum() == 200  # an exact quarter turn
    many, _ = digits(8)
    for distortion, kw in (
        ("r", dict(max_angle=0)),
        ("p", dict(corner_std=0, scale_range=(1, 1))),
        ("e", dict(alpha=0.0)),
    ):
        out = distort(many, distortion, gen(1), **kw)
        assert torch.equal(out.image, many), distortion  # no blur, no half-pixel shift
    big = distort(many, "r", gen(1), 36, max_angle=0)
    assert torch.equal(big.image[:, :, 4:32, 4:32], many)  # centred on a larger canvas


@pytest.mark.parametrize("distortion", sorted(DISTORTIONS))
def test_distortion_recipes(distortion):
    d, _ = digits(400, seed=9)
    out = distort(d, distortion, gen(10))
    recipe = DISTORTIONS[distortion]
    size = recipe["canvas"]
    assert out.image.shape == (400, 1, size, size) and out.image.dtype == torch.uint8
    assert size == (42 if distortion == "rts" else 28)  # the STN paper's canvases
    angle, scale = out.params["angle"], out.params["scale"]
    assert angle.abs().max() <= recipe["max_angle"]
    assert scale.min() >= recipe["scale_range"][0] and scale.max() <= recipe["scale_range"][1]
    if recipe["max_angle"]:
        assert angle.abs().max() > 0.9 * recipe["max_angle"]  # the range is used
    # boxes: inside the canvas and tight around the nonzero pixels
    box = out.box
    assert (box[:, :2] >= 0).all() and (box[:, 2:] <= size).all() and (box[:, 2:] > box[:, :2]).all()
    torch.testing.assert_close(box, tight_boxes(out.image))
    if distortion == "rts":
        assert out.params["shift"].dtype == torch.long
        work = rotate_scale(d, angle, scale, 48)  # the centred, untranslated digit
        assert torch.equal(out.image.sum((1, 2, 3)), work.sum((1, 2, 3)))  # fully inside: no ink lost
        assert (box[:, 0] == 0).any() or (box[:, 2] == size).any()  # placement reaches the edges
    if distortion == "p":
        off = out.params["corner_offset"]
        assert off.shape == (400, 4, 2) and 4.0 < off.std().item() < 6.0 and abs(off.mean().item()) < 0.5
        corners = torch.tensor([[0.0, 0], [28, 0], [28, 28], [0, 28]])
        quads = 14 + (corners - 14) * scale[:, None, None] + off
        assert is_convex(quads, 0.1).all()  # folded and nearly folded draws were redrawn
    if distortion == "e":
        disp = out.params["displacement"]
        assert disp.shape == (400, 2, 28, 28)
        assert 0.5 < disp.std().item() < 3.0  # alpha=34, sigma=4: about 1.4 px
        # smooth: neighbours move together
        corr = torch.corrcoef(torch.stack([disp[..., :, :-1].flatten(), disp[..., :, 1:].flatten()]))[0, 1]
        assert corr > 0.9


def test_distort_rejects_unknown_names_and_small_canvases():
    d, _ = digits(2)
    with pytest.raises(ValueError, match="distortion"):
        distort(d, "shear", gen())
    with pytest.raises(ValueError, match="canvas_size"):
        distort(d, "r", gen(), 20)


@pytest.mark.parametrize("device", DEVICES)
def test_compositions_are_reproducible_and_follow_the_generator(device):
    d, _ = digits(16)
    d = d.to(device)
    for fn in (
        lambda g: translate(d, 60, g),
        lambda g: clutter(d, 60, 4, 8, g),
        *[(lambda g, k=k: distort(d, k, g)) for k in DISTORTIONS],
    ):
        a, b, c = fn(gen(1, device)), fn(gen(1, device)), fn(gen(2, device))
        assert torch.equal(a.image, b.image) and torch.equal(a.box, b.box)
        assert not torch.equal(a.image, c.image)
        assert a.image.device.type == device and a.box.device.type == device
