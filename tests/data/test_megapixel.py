"""Megapixel MNIST on small canvases: the recipe, exact renders, fixed splits, memory per batch.

The tiny IDX files hold rectangles of ink (every pixel of the rectangle nonzero, so a digit's
tight box is its rectangle) with values 1..127 for training digits and 128..255 for test digits.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from stn.data.megapixel import DIGIT, MegapixelMNISTDataModule, noise_patterns
from stn.data.mnist import load_mnist
from stn.data.preview import compose_data_config
from stn.data.synthetic import tight_boxes

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:train.yaml did not compose"),
]

N_TRAIN, N_TEST = 300, 100


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def rect_mnist(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rect_mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n, (low, high) in (("train", N_TRAIN, (1, 127)), ("t10k", N_TEST, (128, 255))):
        images = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):
            w, h = rng.integers(3, 15, size=2)
            x, y = rng.integers(4, 24 - w + 1), rng.integers(4, 24 - h + 1)
            images[i, y : y + h, x : x + w] = rng.integers(low, high + 1, size=(h, w))
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", rng.permutation(np.arange(n) % 10))
    return root


def make(root, **kw) -> MegapixelMNISTDataModule:
    kw = {"canvas_size": 160, "train_size": 60, "test_size": 20, "val_size": 10, "batch_size": 8, **kw}
    dm = MegapixelMNISTDataModule(str(root), download=False, device="cpu", **kw)
    dm.setup()
    return dm


def render(dm, split="test", n=None):
    specs = dm.splits[split]
    return specs.batch(torch.arange(len(specs) if n is None else n))


def reference(specs, i: int) -> torch.Tensor:
    """Canvas ``i`` pasted the slow way: digits, then noise patches one after another."""
    s = specs.canvas_size
    canvas = torch.zeros(s, s, dtype=torch.uint8)
    for d, (x, y) in zip(specs.index[i], specs.position[i]):
        canvas[y : y + DIGIT, x : x + DIGIT] = specs.digits[d, 0]
    for p, (x, y) in zip(specs.noise_index[i], specs.noise_position[i]):
        canvas[y : y + DIGIT, x : x + DIGIT] = specs.noise[p]
    return canvas


def test_recipe_digits_labels_and_tight_boxes(rect_mnist):
    dm = make(rect_mnist, num_noise=0)
    batch, specs = render(dm), dm.splits["test"]
    image, boxes, digit_labels, label = batch["image"], batch["boxes"], batch["digit_labels"], batch["label"]
    n = len(label)
    assert image.shape == (n, 1, 160, 160) and image.dtype == torch.uint8
    assert boxes.shape == (n, 5, 4) and digit_labels.shape == (n, 5)
    # 3 of the label's class, 2 of others
    assert (digit_labels[:, :3] == label[:, None]).all() and (digit_labels[:, 3:] != label[:, None]).all()
    assert torch.equal(digit_labels, load_mnist(rect_mnist, download=False)[1].labels[specs.index])
    # the 28x28 digit images never overlap one another
    pos = specs.position
    near = (pos[:, :, None] - pos[:, None]).abs() < DIGIT
    overlap = near.all(-1) & ~torch.eye(5, dtype=torch.bool)
    assert not overlap.any()
    # each box is tight around that digit's ink, and there is no ink outside the boxes
    for i in range(n):
        outside = torch.ones(160, 160, dtype=torch.bool)
        for k in range(5):
            x, y = pos[i, k].tolist()
            crop = image[i, 0, y : y + DIGIT, x : x + DIGIT]
            tight = tight_boxes(crop[None]) + torch.tensor([x, y, x, y])
            torch.testing.assert_close(boxes[i, k][None], tight)
            x1, y1, x2, y2 = boxes[i, k].long().tolist()
            outside[y1:y2, x1:x2] = False
        assert not image[i, 0][outside].any()
    # test canvases use test digits (values >= 128), training canvases training digits (<= 127)
    assert ((image == 0) | (image >= 128)).all()
    assert (render(dm, "train")["image"] <= 127).all()


def test_noise_count_and_paste_order_match_a_sequential_paste(rect_mnist):
    dm = make(rect_mnist, num_noise=12, noise_patterns=7)
    specs = dm.splits["val"]
    batch = render(dm, "val")
    assert specs.noise_index.shape == (len(specs), 12) and int(specs.noise_index.max()) < 7
    assert specs.noise.shape == (7, 28, 28)
    # patches lie inside [28, S - 28) as in the reference
    assert (specs.noise_position >= 28).all() and (specs.noise_position + DIGIT <= 160 - 1).all()
    for i in range(len(specs)):
        assert torch.equal(batch["image"][i, 0], reference(specs, i))
    # noise lands on digits sometimes and erases their ink there (black pixels of the patch too)
    clean = make(rect_mnist, num_noise=0)
    assert torch.equal(clean.splits["val"].position, specs.position)  # same digits and places
    assert not torch.equal(render(clean, "val")["image"], batch["image"])


def test_noise_patterns_are_two_lines_of_bright_ink():
    bank = noise_patterns(50, torch.Generator().manual_seed(0))
    assert bank.shape == (50, 28, 28) and bank.dtype == torch.uint8
    ink = bank[bank > 0]
    assert ink.min() >= int(0.8 * 255) and ink.max() <= 255
    counts = (bank > 0).flatten(1).sum(1)
    # two lines of 28-40 pixels each, overlapping at most along their length
    assert (counts >= 28).all() and (counts <= 80).all()
    assert (bank[:, 0, 0] > 0).any()  # lines start at a corner


def test_val_and_test_canvases_are_fixed_by_split_seed(rect_mnist):
    a, b, c = make(rect_mnist, seed=1), make(rect_mnist, seed=2), make(rect_mnist, split_seed=3)
    for split in ("val", "test"):
        ra, rb, rc = render(a, split), render(b, split), render(c, split)
        for key in ("image", "label", "boxes", "digit_labels"):
            assert torch.equal(ra[key], rb[key]), (split, key)
        assert not torch.equal(ra["image"], rc["image"])
    # loaders give the same canvases every epoch, in order for evaluation
    first = [x["image"] for x in a.val_dataloader()]
    second = [x["image"] for x in a.val_dataloader()]
    assert all(torch.equal(p, q) for p, q in zip(first, second))
    torch.testing.assert_close(torch.cat(first), render(a, "val")["image"].float() / 255)


def test_batches_are_float_in_unit_range_and_training_shuffles(rect_mnist):
    dm = make(rect_mnist)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "boxes", "digit_labels"}
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (8, 1, 160, 160)
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    loader = dm.train_dataloader()
    epochs = [torch.cat([x["label"] for x in loader]) for _ in range(2)]
    assert not torch.equal(epochs[0], epochs[1])  # a new order each epoch
    assert torch.equal(epochs[0].sort().values, epochs[1].sort().values)  # of the same canvases
    assert len(dm.mean) == 1 and 0 < dm.mean[0] < 0.5 and dm.std[0] > 0


def test_memory_is_per_batch_not_per_dataset(rect_mnist):
    """A split stores a few numbers per canvas whatever the canvas size; only a batch is rendered."""
    sizes = {}
    for canvas in (160, 1500):
        dm = make(rect_mnist, canvas_size=canvas, train_size=200, val_size=20)
        specs = dm.splits["train"]
        per_canvas = sum(getattr(specs, k).nbytes for k in specs._PER_CANVAS) / len(specs)
        sizes[canvas] = per_canvas
        for t in vars(specs).values():
            if isinstance(t, torch.Tensor):  # nothing of the canvas's size is stored
                assert t.numel() < 200 * canvas * canvas / 10
        assert render(dm, "train", 3)["image"].shape == (3, 1, canvas, canvas)
    assert sizes[160] == sizes[1500] < 2048  # 1.4 kB of int64: 7 MB for 5000 canvases


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"num_label_digits": 2}, "num_label_digits"),
        ({"num_label_digits": 6}, "num_label_digits"),
        ({"canvas_size": 50}, "canvas_size"),
        ({"num_noise": -1}, "num_noise"),
        ({"std": [0.0]}, "std"),
    ],
)
def test_arguments_are_checked(rect_mnist, kw, name):
    with pytest.raises(ValueError, match=name):
        MegapixelMNISTDataModule(str(rect_mnist), download=False, **kw)


def test_a_canvas_too_small_for_the_digits_is_a_clear_error(rect_mnist):
    with pytest.raises(ValueError, match="canvas_size=60 leaves too little room"):
        make(rect_mnist, canvas_size=60, num_noise=0)


def test_config_builds_the_datamodule_and_scales_down(rect_mnist):
    cfg = compose_data_config("megapixel_mnist", [f"paths.data_dir={rect_mnist}", "data.canvas_size=200"])
    dm = instantiate(cfg)
    assert type(dm) is MegapixelMNISTDataModule and dm.image_shape == (1, 200, 200)
    assert (dm.num_digits, dm.num_label_digits, dm.num_noise) == (5, 3, 50)
    assert (dm.train_size, dm.test_size) == (5000, 1000)


def test_preview_draws_shrunk_canvases_with_both_box_colours(rect_mnist, tmp_path):
    from PIL import Image

    from stn.data.preview import MAX_SIDE, main
    from stn.pictures import FRAME, OTHER_TRUE_COLOUR, PADDING, TRUE_COLOUR

    out = tmp_path / "mp.png"
    main(
        [
            "data=megapixel_mnist",
            f"out={out}",
            "n=2",
            "nrow=2",
            f"paths.data_dir={rect_mnist}",
            "download=false",
            "canvas_size=600",
            "train_size=40",
            "test_size=4",
            "val_size=8",
        ]
    )
    image = np.asarray(Image.open(out).convert("RGB"))
    # two tiles shrunk to 512, framed, padded; titles and a legend make it taller
    tile = MAX_SIDE + 2 * FRAME
    assert image.shape[1] == 2 * tile + 3 * PADDING and image.shape[0] > tile + 2 * PADDING
    pixels = {tuple(p) for p in image.reshape(-1, 3)}
    assert TRUE_COLOUR in pixels and OTHER_TRUE_COLOUR in pixels  # the label's digits and the others
