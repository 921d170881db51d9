"""stn.convert: every input kind (PIL modes, numpy, tensors, lists) to (C, H, W) in [0, 1], the
channel and size conversions with their frames, the way back, and clear rejections."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from stn.convert import (
    Preprocess,
    as_images,
    boxes_to_input,
    numpy_to_tensor,
    pil_to_tensor,
    tensor_to_numpy,
    tensor_to_pil,
    to_channels,
)

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, size=(5, 7), dtype=np.uint8)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def reopened(image: Image.Image, fmt: str = "PNG") -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, fmt)
    buf.seek(0)
    return Image.open(buf)


def test_pil_grey_and_rgb_are_scaled_by_255():
    grey = pil_to_tensor(Image.fromarray(GREY))
    assert grey.shape == (1, 5, 7) and grey.dtype == torch.float32
    assert torch.equal(grey[0], torch.from_numpy(GREY).float() / 255)
    rgb = pil_to_tensor(Image.fromarray(RGB))
    assert torch.equal(rgb, torch.from_numpy(RGB).permute(2, 0, 1).float() / 255)


def test_pil_rgba_keeps_alpha_and_la_too():
    rgba = np.concatenate([RGB, np.full((5, 7, 1), 7, np.uint8)], axis=2)
    t = pil_to_tensor(Image.fromarray(rgba, "RGBA"))
    assert t.shape == (4, 5, 7) and torch.allclose(t[3], torch.full((5, 7), 7 / 255))
    la = pil_to_tensor(Image.fromarray(np.stack([GREY, GREY], -1), "LA"))
    assert la.shape == (2, 5, 7)


def test_pil_palette_becomes_its_colours():
    palette = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    t = pil_to_tensor(reopened(palette))
    want = torch.from_numpy(np.array(palette.convert("RGB"))).permute(2, 0, 1).float() / 255
    assert t.shape == (3, 5, 7) and torch.equal(t, want)
    palette.info["transparency"] = 0
    assert pil_to_tensor(palette).shape == (4, 5, 7)


def test_pil_16_bit_is_scaled_by_65535_not_clipped():
    values = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1800 + 1000).astype(np.uint16)
    image = reopened(Image.fromarray(values))
    assert image.mode.startswith("I")
    t = pil_to_tensor(image)
    assert t.shape == (1, 5, 7)
    assert torch.allclose(t[0], torch.from_numpy(values.astype(np.float64) / 65535).float())
    assert t.max() > 0.9  # PIL's own convert("L") would clip every value above 255 to 1.0


def test_pil_jpeg_and_bilevel():
    jpeg = pil_to_tensor(reopened(Image.fromarray(RGB), "JPEG"))
    assert jpeg.shape == (3, 5, 7) and 0 <= jpeg.min() and jpeg.max() <= 1
    bits = pil_to_tensor(Image.fromarray(GREY > 128))
    assert bits.shape == (1, 5, 7) and set(bits.unique().tolist()) <= {0.0, 1.0}


def test_numpy_uint8_uint16_float_and_channel_last():
    assert torch.equal(numpy_to_tensor(GREY), torch.from_numpy(GREY)[None].float() / 255)
    assert torch.equal(numpy_to_tensor(RGB), torch.from_numpy(RGB).permute(2, 0, 1).float() / 255)
    assert numpy_to_tensor(GREY.astype(np.uint16) * 257).max() == pytest.approx(GREY.max() / 255)
    f = RGB.astype(np.float64) / 255
    assert torch.allclose(numpy_to_tensor(f), numpy_to_tensor(RGB))
    assert numpy_to_tensor(GREY[:, :, None]).shape == (1, 5, 7)


def test_tensors_uint8_and_float_single_and_batch():
    chw = torch.from_numpy(RGB).permute(2, 0, 1)
    (one,) = as_images(chw)
    assert torch.equal(one, chw.float() / 255)
    batch = as_images(torch.stack([chw, chw]).float() / 255)
    assert len(batch) == 2 and torch.equal(batch[1], one)


def test_lists_mix_kinds_and_sizes():
    images = as_images([Image.fromarray(GREY), RGB, torch.rand(1, 9, 4), torch.rand(2, 3, 3, 3)])
    assert [tuple(t.shape) for t in images] == [(1, 5, 7), (3, 5, 7), (1, 9, 4), (3, 3, 3), (3, 3, 3)]


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (np.zeros((2, 3, 4, 5), np.uint8), ValueError, ["(H, W) or (H, W, C)", "(2, 3, 4, 5)"]),
        (np.zeros((6, 6, 5), np.uint8), ValueError, ["1-4 channels", "(6, 6, 5)"]),
        (np.zeros((3, 28, 28), np.uint8), ValueError, ["(3, 28, 28)", "channel-first"]),
        (np.zeros((0, 4), np.uint8), ValueError, ["empty", "(1, 0, 4)"]),
        (np.zeros((4,), np.uint8), ValueError, ["(4,)"]),
        (np.linspace(0, 2, 16).reshape(4, 4), ValueError, ["[0, 1]", "0..2", "255"]),
        (np.full((4, 4), np.nan), ValueError, ["[0, 1]", "nan"]),
        (np.zeros((4, 4), np.int32), TypeError, ["int32"]),
        (torch.zeros(4, 4), ValueError, ["(C, H, W) or (B, C, H, W)", "(4, 4)", "x[None]"]),
        (torch.zeros(1, 2, 3, 4, 4), ValueError, ["(1, 2, 3, 4, 4)"]),
        (torch.zeros(5, 8, 8), ValueError, ["1-4 channels", "(5, 8, 8)"]),
        (torch.zeros(2, 5, 8, 8), ValueError, ["(2, 5, 8, 8)"]),
        (torch.zeros(0, 3, 8, 8), ValueError, ["empty", "(0, 3, 8, 8)"]),
        (torch.zeros(3, 0, 8), ValueError, ["empty"]),
        ([], ValueError, ["empty list"]),
        ([torch.zeros(3, 4, 4), torch.zeros(5, 4, 4)], ValueError, ["image 1 of the list", "(5, 4, 4)"]),
        ([[np.zeros((2, 2))]], TypeError, ["nested"]),
        ("photo.png", TypeError, ["str"]),
        (None, TypeError, ["NoneType"]),
    ],
)
def test_bad_inputs_are_rejected_naming_what_was_received(bad, error, words):
    with pytest.raises(error) as err:
        as_images(bad)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_other_pil_modes_convert_or_are_named():
    assert pil_to_tensor(Image.fromarray(RGB).convert("CMYK")).shape == (3, 5, 7)
    assert pil_to_tensor(Image.new("PA", (7, 5))).shape == (4, 5, 7)
    assert pil_to_tensor(Image.new("YCbCr", (7, 5))).shape == (3, 5, 7)
    assert pil_to_tensor(Image.new("LAB", (7, 5))).shape == (3, 5, 7)
    with pytest.raises(ValueError, match="'La'"):  # premultiplied grey + alpha: PIL cannot convert it
        pil_to_tensor(Image.new("La", (2, 2)))
    with pytest.raises(ValueError, match=r"\[0, 1\], got 3\.\.3"):
        pil_to_tensor(Image.fromarray(np.full((2, 2), 3.0, np.float32), "F"))


def test_to_channels_drops_alpha_repeats_grey_and_takes_luma():
    rgba = torch.rand(4, 3, 3)
    assert torch.equal(to_channels(rgba, 3), rgba[:3])
    grey = torch.rand(1, 3, 3)
    assert torch.equal(to_channels(grey, 3), grey.expand(3, 3, 3))
    assert torch.allclose(to_channels(to_channels(grey, 3), 1), grey, atol=1e-7)
    luma = to_channels(rgba, 1)
    want = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
    assert torch.allclose(luma[0], want, atol=1e-6)
    # PIL's "L" is the same luma, to rounding
    pil_l = pil_to_tensor(Image.fromarray(RGB).convert("L"))
    assert (to_channels(pil_to_tensor(Image.fromarray(RGB)), 1) - pil_l).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        to_channels(grey, 2)


def test_preprocess_resize_and_its_frame():
    image = torch.rand(3, 40, 60)
    out, frame = Preprocess(1, (20, 30))(image)
    assert out.shape == (1, 20, 30) and frame == (2.0, 2.0, 0.0, 0.0)
    same, frame = Preprocess(3, (40, 60))(image)
    assert torch.equal(same, image) and frame == (1.0, 1.0, 0.0, 0.0)


def test_preprocess_shorter_side_then_center_crop_maps_boxes_back():
    # a 100x200 image: shorter side to 50 (-> 50x100), then the centre 50x50: x from 25 to 75
    image = torch.zeros(1, 100, 200)
    image[:, 30:70, 90:110] = 1  # a bright block in the input's pixels x 90..110, y 30..70
    out, frame = Preprocess(1, (50, 50), resize=50, center_crop=True)(image)
    assert out.shape == (1, 50, 50) and frame == (2.0, 2.0, 50.0, 0.0)
    ys, xs = torch.nonzero(out[0] > 0.5, as_tuple=True)
    model_box = torch.tensor([[[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]], dtype=torch.float32)
    back = boxes_to_input(model_box, torch.tensor([frame]))
    assert back.tolist() == [[[90.0, 30.0, 110.0, 70.0]]]


def test_back_to_numpy_and_pil():
    t = torch.from_numpy(RGB).permute(2, 0, 1).float() / 255
    assert np.array_equal(tensor_to_numpy(t), RGB)
    assert np.array_equal(np.asarray(tensor_to_pil(t[:1])), RGB[:, :, 0])
    assert np.array_equal(tensor_to_numpy(torch.from_numpy(RGB).permute(2, 0, 1)), RGB)  # uint8 as is
    with pytest.raises(ValueError, match=r"\(4, 5, 7\)"):
        tensor_to_numpy(torch.rand(4, 5, 7))
