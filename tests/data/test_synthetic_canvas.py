"""Synthetic canvases (stn.data.synthetic.canvas): tight boxes, exact placement, translation, clutter."""

from __future__ import annotations

import pytest
import torch

from stn.data.synthetic import (
    add_clutter,
    clutter,
    place,
    shift_images,
    tight_boxes,
    translate,
)
from tests.data.synthetic_digits import DEVICES, digits, gen

pytestmark = pytest.mark.usefixtures("single_thread")


def test_tight_boxes_hand_cases_and_brute_force():
    m = torch.zeros(3, 2, 6, 7, dtype=torch.uint8)
    m[0, 0, 2, 3] = 9  # one pixel: (3, 2, 4, 3)
    m[1, 1, 1:5, 0:7] = 1  # full width, other channel
    expected = torch.tensor([[3.0, 2, 4, 3], [0, 1, 7, 5], [0, 0, 0, 0]])  # third: empty
    torch.testing.assert_close(tight_boxes(m), expected)
    masks = torch.rand(50, 9, 11, generator=gen(1)) > 0.97
    for mask, box in zip(masks, tight_boxes(masks)):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        want = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]
        assert box.tolist() == [float(v) for v in want]


def test_place_is_an_exact_copy():
    d, _ = digits(4)
    pos = torch.tensor([[0, 0], [32, 32], [5, 17], [32, 0]])
    canvas = place(d, 60, pos)
    assert canvas.shape == (4, 1, 60, 60) and canvas.dtype == torch.uint8
    for i, (x, y) in enumerate(pos.tolist()):
        assert torch.equal(canvas[i, :, y : y + 28, x : x + 28], d[i])
        assert canvas[i].sum() == d[i].sum()  # nothing anywhere else
    back = shift_images(canvas, -pos, 28)  # shift_images undoes it exactly
    assert torch.equal(back, d)


@pytest.mark.parametrize("device", DEVICES)
def test_translate_boxes_are_the_digit_box_shifted(device):
    d, boxes = digits(64)
    out = translate(d.to(device), 60, gen(3, device))
    pos = out.params["position"].cpu()
    assert out.image.shape == (64, 1, 60, 60) and out.image.dtype == torch.uint8
    assert out.image.device.type == device and out.box.dtype == torch.float32
    assert pos.min() >= 0 and pos.max() <= 60 - 28
    torch.testing.assert_close(out.box.cpu(), boxes + pos.repeat(1, 2).float())
    assert torch.equal(out.image.sum((1, 2, 3)).cpu(), d.sum((1, 2, 3)))  # fully inside
    # positions are uniform over every valid place, ends included
    small = translate(d.repeat(40, 1, 1, 1), (31, 30), gen(4)).params["position"]  # (H, W)
    assert set(small[:, 0].tolist()) == {0, 1, 2} and set(small[:, 1].tolist()) == {0, 1, 2, 3}


def test_clutter_matches_a_reference_loop():
    d, boxes = digits(6, seed=5, low=1, high=100)
    sources, _ = digits(9, seed=6, low=101, high=255)
    k, p, size = 5, 8, 60
    out = clutter(d, size, k, p, gen(7), sources=sources)
    prm = {n: v.tolist() for n, v in out.params.items()}
    for i in range(6):
        ref = torch.zeros(1, size, size, dtype=torch.uint8)
        x, y = prm["position"][i]
        ref[:, y : y + 28, x : x + 28] = d[i]
        for j in range(k):
            s = prm["piece_source"][i][j]
            cx, cy = prm["piece_crop"][i][j]
            tx, ty = prm["piece_position"][i][j]
            assert 0 <= cx <= 28 - p and 0 <= cy <= 28 - p and 0 <= tx <= size - p and 0 <= ty <= size - p
            piece = sources[s, :, cy : cy + p, cx : cx + p]
            ref[:, ty : ty + p, tx : tx + p] = torch.maximum(ref[:, ty : ty + p, tx : tx + p], piece)
        assert torch.equal(out.image[i], ref)
    assert out.params["piece_source"].shape == (6, k)
    # the box is the digit's alone, whatever the clutter does
    torch.testing.assert_close(out.box, boxes + out.params["position"].repeat(1, 2).float())
    # max composition: digit pixels are never erased
    placed = place(d, size, out.params["position"])
    assert (out.image >= placed).all()


def test_clutter_from_the_batch_never_uses_the_own_digit():
    # each digit a constant block of its own value: a canvas holds its value and others' only
    d = torch.arange(1, 9, dtype=torch.uint8)[:, None, None, None].expand(8, 1, 28, 28).contiguous()
    out = clutter(d, 40, 6, 8, gen(8))  # sources: the batch
    own = torch.arange(8)[:, None]
    assert (out.params["piece_source"] != own).all()
    assert (out.params["piece_source"] >= 0).all() and (out.params["piece_source"] < 8).all()
    image, params = add_clutter(torch.zeros(3, 1, 30, 30, dtype=torch.uint8), d, 0, 8, gen(0))
    assert image.sum() == 0 and params["piece_source"].shape == (3, 0)  # no pieces: no clutter
