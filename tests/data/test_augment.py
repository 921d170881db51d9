"""Batched random crop + flip: same result as torchvision's pad-crop-flip, labels and boxes kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stn.data.augment import CropFlip, random_crop_flip

TORCH_MODE = {"reflect": "reflect", "zeros": "constant", "replicate": "replicate"}


def candidates(img: torch.Tensor, padding: int, mode: str) -> list[torch.Tensor]:
    """Every crop (and its mirror) torchvision's RandomCrop + RandomHorizontalFlip could return."""
    h, w = img.shape[-2:]
    padded = F.pad(img[None].float(), [padding] * 4, mode=TORCH_MODE[mode])[0].to(img.dtype)
    out = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out += [crop, crop.flip(-1)]
    return out


@pytest.mark.parametrize("mode", ["reflect", "zeros", "replicate"])
def test_matches_pad_crop_flip(mode):
    images = torch.randint(
        1, 256, (32, 2, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    out, _ = random_crop_flip(images, torch.Generator().manual_seed(1), padding=2, padding_mode=mode)
    assert out.shape == images.shape and out.dtype == images.dtype
    for x, y in zip(images, out):
        assert any(torch.equal(y, c) for c in candidates(x, 2, mode))
    changed = (out != images).flatten(1).any(1)
    assert changed.float().mean() > 0.8  # 1 in 50 draws is the identity
    # flips alone: each sample mirrored or not, about half of them mirrored
    only_flip, _ = random_crop_flip(images, torch.Generator().manual_seed(1), padding=0, padding_mode=mode)
    mirrored = [torch.equal(y, x.flip(-1)) for x, y in zip(images, only_flip)]
    assert all(m or torch.equal(y, x) for m, x, y in zip(mirrored, images, only_flip))
    assert 8 <= sum(mirrored) <= 24


def test_reproducible_and_identity_when_off():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    a, _ = random_crop_flip(images, torch.Generator().manual_seed(7), padding=3)
    b, _ = random_crop_flip(images, torch.Generator().manual_seed(7), padding=3)
    assert torch.equal(a, b)
    same, _ = random_crop_flip(images, torch.Generator().manual_seed(7), padding=0, flip=False)
    assert torch.equal(same, images)
    x = images.float() / 255  # any dtype works
    assert random_crop_flip(x, torch.Generator().manual_seed(7), padding=3)[0].dtype == torch.float32


def test_boxes_follow_the_content():
    # A bright rectangle exactly filling its box; after the shift and flip it must still fill the
    # moved box (zero padding, boxes far enough from the edges to stay inside).
    gen = torch.Generator().manual_seed(0)
    n, h, w = 32, 20, 24
    images = torch.zeros(n, 1, h, w, dtype=torch.uint8)
    boxes = torch.zeros(n, 4)
    for i in range(n):
        x1, y1 = torch.randint(4, 10, (2,), generator=gen).tolist()
        bw, bh = torch.randint(2, 8, (2,), generator=gen).tolist()
        images[i, 0, y1 : y1 + bh, x1 : x1 + bw] = 255
        boxes[i] = torch.tensor([x1, y1, x1 + bw, y1 + bh])
    out, moved = random_crop_flip(images, gen, padding=4, padding_mode="zeros", boxes=boxes)
    for img, box in zip(out, moved):
        ys, xs = torch.nonzero(img[0], as_tuple=True)
        found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        assert torch.equal(found, box)


def test_boxes_are_clipped_to_the_image():
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(50, 1)
    images = torch.zeros(50, 1, 8, 8, dtype=torch.uint8)
    _, moved = random_crop_flip(images, torch.Generator().manual_seed(0), padding=3, boxes=boxes)
    assert moved.min() >= 0 and moved.max() <= 8
    assert (moved[:, 2] > moved[:, 0]).all() and (moved[:, 3] > moved[:, 1]).all()


def test_crop_flip_transform_keeps_labels_and_returns_floats():
    batch = {"image": torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), "label": torch.arange(8)}
    out = CropFlip(4, "reflect", True)(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out["label"], batch["label"]) and "box" not in out
    assert out["image"].dtype == torch.float32 and out["image"].shape == (8, 3, 32, 32)
    assert 0 <= out["image"].min() and out["image"].max() <= 1
    assert not torch.equal(out["image"], batch["image"].float() / 255)
    assert batch["image"].dtype == torch.uint8  # the input batch is left alone


def test_bad_arguments():
    x = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="padding_mode"):
        random_crop_flip(x, None, padding_mode="wrap")
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(x, None, padding=4)  # reflect needs padding < size
    with pytest.raises(ValueError, match="B, C, H, W"):
        random_crop_flip(x[0], None)
    with pytest.raises(ValueError, match="padding_mode"):
        CropFlip(2, "mirror")
