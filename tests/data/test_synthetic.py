"""Synthetic MNIST sets: geometry of every recipe, true boxes, seeded splits, per-epoch training data.

The tiny IDX files written here hold rectangles of ink (every pixel of the rectangle nonzero, so a
digit's tight box is its rectangle), with values 1..127 in the training file and 128..255 in the
test file: a canvas's pixel values tell which split its clutter came from.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from stn.data.synthetic import (
    DISTORTIONS,
    ClutteredMNISTDataModule,
    DistortedMNISTDataModule,
    TranslatedMNISTDataModule,
    add_clutter,
    clutter,
    distort,
    place,
    rotate_scale,
    shift_images,
    tight_boxes,
    translate,
)
from stn.data.synthetic.distortions import is_convex

N_TRAIN, N_TEST, VAL = 240, 60, 40
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


pytestmark = pytest.mark.usefixtures("single_thread")


# -- tiny data in the real format --------------------------------------------------------------
def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def rect_digits(n: int, low: int, high: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 rectangles of ink in [low, high] within the central 20x20, and their boxes."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        w, h = rng.integers(3, 15, size=2)
        x, y = rng.integers(4, 24 - w + 1), rng.integers(4, 24 - h + 1)
        images[i, y : y + h, x : x + w] = rng.integers(low, high + 1, size=(h, w))
        boxes[i] = (x, y, x + w, y + h)
    return images, boxes


@pytest.fixture(scope="module")
def rect_mnist(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rect_mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, (low, high), seed in (("train", N_TRAIN, (1, 127), 1), ("t10k", N_TEST, (128, 255), 2)):
        images, _ = rect_digits(n, low, high, seed)
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def digits(n: int = 16, seed: int = 0, low: int = 1, high: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    images, boxes = rect_digits(n, low, high, seed)
    return torch.from_numpy(images)[:, None], torch.from_numpy(boxes)


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def make(cls, root, **kw):
    kw.setdefault("val_size", VAL)
    kw.setdefault("batch_size", 32)
    kw.setdefault("device", "cpu")
    return cls(str(root), download=False, **kw)


# -- building blocks ---------------------------------------------------------------------------
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


# -- datamodules -------------------------------------------------------------------------------
CASES = [
    (TranslatedMNISTDataModule, {}, 60),
    (TranslatedMNISTDataModule, {"canvas_size": 40}, 40),
    (ClutteredMNISTDataModule, {}, 60),
    (ClutteredMNISTDataModule, {"canvas_size": 100, "num_pieces": 8}, 100),
    (DistortedMNISTDataModule, {"distortion": "r"}, 28),
    (DistortedMNISTDataModule, {"distortion": "rts"}, 42),
    (DistortedMNISTDataModule, {"distortion": "p"}, 28),
    (DistortedMNISTDataModule, {"distortion": "e", "canvas_size": 32}, 32),
]


@pytest.mark.parametrize("cls, kw, size", CASES)
def test_datamodule_splits(rect_mnist, cls, kw, size):
    dm = make(cls, rect_mnist, **kw)
    assert dm.image_shape == (1, size, size) and dm.num_classes == 10
    dm.setup()
    test, val, train = dm.splits["test"], dm.splits["val"], dm.splits["train"]
    assert len(test) == N_TEST and len(val) == VAL and len(train) == N_TRAIN - VAL
    assert test.images.shape == (N_TEST, 1, size, size) and test.images.dtype == torch.uint8
    assert torch.equal(test.labels, torch.arange(N_TEST) % 10)  # labels kept, in order
    assert train.boxes is None  # fresh canvases every epoch
    raw_train, raw_test = dm.load()
    for split, raw in ((test, raw_test), (val, None)):
        box = split.boxes
        assert (box[:, :2] >= 0).all() and (box[:, 2:] <= size).all() and (box[:, 2:] > box[:, :2]).all()
        if cls is not ClutteredMNISTDataModule:
            torch.testing.assert_close(box, tight_boxes(split.images))
        if cls is not DistortedMNISTDataModule and raw is not None:
            # translated: the box has the size of the digit's own tight box, and all its ink
            torch.testing.assert_close(
                box[:, 2:] - box[:, :2], (lambda b: b[:, 2:] - b[:, :2])(tight_boxes(raw.images))
            )
    if cls is TranslatedMNISTDataModule:  # an exact copy of the digit: every pixel value kept
        assert torch.equal(
            test.images.flatten(1).sort(1).values[:, -784:], raw_test.images.flatten(1).sort(1).values
        )
    if cls is ClutteredMNISTDataModule:
        # clutter for test canvases is cut from test digits (128..255), for validation from
        # validation digits (1..127): no value of the other range appears
        assert ((test.images == 0) | (test.images >= 128)).all()
        assert (val.images <= 127).all()
        # clutter is there: more ink than the digits alone
        assert (
            test.images.float().sum((1, 2, 3)) > raw_test.images.float().sum((1, 2, 3))
        ).float().mean() > 0.8


def test_seeded_splits_are_identical_across_constructions(rect_mnist):
    for cls, kw in ((ClutteredMNISTDataModule, {}), (DistortedMNISTDataModule, {"distortion": "p"})):
        # the run seed (1 vs 2) does not change the fixed splits; split_seed does
        a, b, c = (make(cls, rect_mnist, split_seed=s, seed=r, **kw) for s, r in ((5, 1), (5, 2), (6, 1)))
        for dm in (a, b, c):
            dm.setup()
        for split in ("val", "test"):
            assert torch.equal(a.splits[split].images, b.splits[split].images)
            assert torch.equal(a.splits[split].boxes, b.splits[split].boxes)
            assert not torch.equal(a.splits[split].images, c.splits[split].images)
        assert not torch.equal(a.splits["val"].images[:5], a.splits["test"].images[:5])


@pytest.mark.parametrize("fixed", [False, True])
def test_training_canvases_change_each_epoch_unless_fixed(rect_mnist, fixed):
    dm = make(ClutteredMNISTDataModule, rect_mnist, fixed_train=fixed)
    loader = dm.train_dataloader()
    loader.shuffle = False  # same digits in the first batch of each epoch
    first, second = next(iter(loader)), next(iter(loader))
    assert torch.equal(first["label"], second["label"])
    assert torch.equal(first["image"], second["image"]) == fixed
    assert torch.equal(first["box"], second["box"]) == fixed
    if fixed:
        assert dm.splits["train"].boxes is not None
    # shuffled, as training runs it: a full epoch of batches, each complete
    batches = list(dm.train_dataloader())
    assert len(batches) == (N_TRAIN - VAL) // 32


def test_batches_device_dtype_and_range(rect_mnist):
    for device in DEVICES:
        dm = make(DistortedMNISTDataModule, rect_mnist, distortion="rts", device=device)
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            batch = next(iter(loader))
            assert batch["image"].dtype == torch.float32 and batch["image"].shape[1:] == (1, 42, 42)
            assert batch["label"].dtype == torch.int64 and batch["box"].dtype == torch.float32
            assert batch["box"].shape == (len(batch["label"]), 4)
            assert {v.device.type for v in batch.values()} == {device}
            assert 0 <= batch["image"].min() and batch["image"].max() <= 1 and batch["image"].max() > 0.3
            torch.testing.assert_close(batch["box"], tight_boxes(batch["image"]))


def test_mean_std_computed_from_validation_canvases_or_given(rect_mnist):
    dm = make(TranslatedMNISTDataModule, rect_mnist)
    with pytest.raises(RuntimeError, match=r"TranslatedMNISTDataModule.mean is measured .* setup\(\)"):
        _ = dm.mean  # reading it generates nothing
    val = dm.splits if dm.splits else None
    dm.setup()
    mean, std = dm.mean, dm.std
    images = dm.splits["val"].images.float() / 255
    assert val is None and mean == pytest.approx((images.mean().item(),), abs=1e-4)
    assert std == pytest.approx((images.std().item(),), abs=1e-4)
    given = TranslatedMNISTDataModule("/nonexistent", mean=[0.1], std=[0.2])
    assert given.mean == (0.1,) and given.std == (0.2,) and not given.splits  # nothing loaded
    zero_val = make(DistortedMNISTDataModule, rect_mnist, distortion="r", val_size=0)
    zero_val.setup()
    assert zero_val.splits["val"] is zero_val.splits["test"]


@pytest.mark.parametrize(
    "cls, kw, name",
    [
        (TranslatedMNISTDataModule, {"canvas_size": 20}, "canvas_size"),
        (TranslatedMNISTDataModule, {"canvas_size": 60.5}, "canvas_size"),
        (ClutteredMNISTDataModule, {"num_pieces": -1}, "num_pieces"),
        (ClutteredMNISTDataModule, {"piece_size": 29}, "piece_size"),
        (ClutteredMNISTDataModule, {"piece_size": 0}, "piece_size"),
        (DistortedMNISTDataModule, {"distortion": "x"}, "distortion"),
        (DistortedMNISTDataModule, {"distortion": "r", "canvas_size": 27}, "canvas_size"),
        (DistortedMNISTDataModule, {"scale_range": [1.2, 0.7]}, "scale_range"),
        (DistortedMNISTDataModule, {"max_angle": 200}, "max_angle"),
        (DistortedMNISTDataModule, {"corner_std": -1}, "corner_std"),
        (DistortedMNISTDataModule, {"elastic_sigma": 0}, "elastic_sigma"),
        (TranslatedMNISTDataModule, {"fixed_train": "yes"}, "fixed_train"),
        (TranslatedMNISTDataModule, {"mean": [0.1, 0.2]}, "mean"),
        (TranslatedMNISTDataModule, {"std": [0.0]}, "std"),
    ],
)
def test_arguments_are_checked(cls, kw, name):
    with pytest.raises(ValueError, match=name):
        cls("/nonexistent", **kw)
