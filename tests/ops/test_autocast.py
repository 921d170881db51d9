"""The ops under CPU autocast (bf16), the stand-in for trainer=gpu's bf16-mixed precision.

Inside a bf16-mixed model the localizer's Linear layers return bf16 boxes, while the images stay
float32 (or arrive as bf16 from an earlier autocast op). The reference is the float32 op on the same
(bf16-rounded) boxes: rounding the boxes themselves is the localizer's precision, not the op's.
Glimpses must stay within bf16 rounding of that reference and give finite box gradients.
"""

from __future__ import annotations

import pytest
import torch

from stn.ops import affine_glimpse, boxes_to_theta, glimpse

# bf16 keeps 8 bits of mantissa: a pixel in [0, 1] rounds by up to 2**-9, an interpolation of
# bf16 pixels by a few times that.
ATOL = 0.02


def _inputs(image_dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 2, 32, 30, generator=g)
    boxes = torch.tensor([[2.0, 3.0, 20.0, 25.0], [-4.0, 5.0, 28.0, 30.0], [8.5, 1.25, 14.0, 9.75]])
    return images.to(image_dtype), boxes


@pytest.mark.parametrize("image_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("antialias", [False, True])
def test_glimpse_under_bf16_autocast_matches_float32(image_dtype, antialias):
    images, boxes = _inputs(image_dtype)
    boxes_bf16 = boxes.to(torch.bfloat16).requires_grad_()
    reference = glimpse(images.float(), boxes_bf16.detach().float(), (12, 10), antialias=antialias)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = glimpse(images, boxes_bf16, (12, 10), antialias=antialias)
        loss = out.float().square().mean()
    loss.backward()

    assert out.shape == reference.shape
    assert torch.allclose(out.float(), reference, atol=ATOL), (out.float() - reference).abs().max()
    assert boxes_bf16.grad is not None and torch.isfinite(boxes_bf16.grad.float()).all()
    assert boxes_bf16.grad.abs().sum() > 0


def test_affine_glimpse_under_bf16_autocast_matches_float32():
    images, boxes = _inputs(torch.float32)
    theta_bf16 = boxes_to_theta(boxes, (32, 30)).to(torch.bfloat16).requires_grad_()
    reference = affine_glimpse(images, theta_bf16.detach().float(), (12, 10))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = affine_glimpse(images, theta_bf16, (12, 10))
    out.float().square().mean().backward()

    assert torch.allclose(out.float(), reference, atol=ATOL), (out.float() - reference).abs().max()
    assert torch.isfinite(theta_bf16.grad.float()).all() and theta_bf16.grad.abs().sum() > 0
