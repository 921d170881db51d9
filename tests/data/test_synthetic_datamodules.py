"""Synthetic datamodules: seeded splits, per-epoch training canvases, batches, mean/std, argument checks."""

from __future__ import annotations

import pytest
import torch

from stn.data.synthetic import (
    ClutteredMNISTDataModule,
    DistortedMNISTDataModule,
    TranslatedMNISTDataModule,
    tight_boxes,
)
from tests.data.synthetic_digits import DEVICES, N_TEST, N_TRAIN, VAL, make

pytestmark = pytest.mark.usefixtures("single_thread")


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
