"""CIFAR-10 from the python batches: pixel layout, labels, integrity check, augmentation, config."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from stn.data import CIFAR10DataModule, DataMissingError
from stn.data.cifar10 import CIFAR10_CLASSES, load_cifar10


def read_batch(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def test_load_keeps_pixels_and_labels(tiny_cifar_dir):
    train, test = load_cifar10(tiny_cifar_dir, download=False)
    assert train.images.shape == (6000, 3, 32, 32) and test.images.shape == (1000, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    folder = tiny_cifar_dir / "cifar-10-batches-py"
    first = read_batch(folder / "data_batch_1")
    # rows are the R, G and B planes of 32x32: (3072,) -> (3, 32, 32) without a transpose
    n = len(first["labels"])
    assert np.array_equal(train.images[:n].numpy(), first["data"].reshape(n, 3, 32, 32))
    labels = sum((read_batch(folder / f"data_batch_{i}")["labels"] for i in range(1, 6)), [])
    assert train.labels.tolist() == labels
    assert test.labels.tolist() == read_batch(folder / "test_batch")["labels"]
    assert read_batch(folder / "batches.meta")["label_names"] == list(CIFAR10_CLASSES)


def test_integrity_check_still_runs(tiny_cifar_dir, tmp_path):
    shutil.copytree(tiny_cifar_dir, tmp_path / "copy")
    with open(tmp_path / "copy" / "cifar-10-batches-py" / "test_batch", "ab") as f:
        f.write(b"\0")  # same file, wrong md5
    with pytest.raises(DataMissingError, match="corrupted"):
        load_cifar10(tmp_path / "copy", download=False)


def test_datamodule_batches_and_augmentation(tiny_cifar_dir):
    dm = CIFAR10DataModule(str(tiny_cifar_dir), batch_size=100, val_size=1000, download=False)
    assert dm.classes == CIFAR10_CLASSES and dm.num_classes == 10 and dm.image_shape == (3, 32, 32)
    assert len(dm.mean) == len(dm.std) == 3
    dm.setup()
    assert [len(dm.splits[k]) for k in ("train", "val", "test")] == [5000, 1000, 1000]
    train = dm.train_dataloader()
    batch = next(iter(train))
    assert batch["image"].shape == (100, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    # augmentation on a fixed raw batch: labels and shapes kept, images changed
    raw = {"image": dm.splits["train"].images[:100], "label": dm.splits["train"].labels[:100]}
    aug = dm.train_transform(raw, torch.Generator().manual_seed(0))
    plain = dm.eval_transform(raw, torch.Generator().manual_seed(0))
    assert torch.equal(aug["label"], raw["label"]) and aug["image"].shape == plain["image"].shape
    changed = (aug["image"] != plain["image"]).flatten(1).any(1).float().mean()
    assert changed > 0.9
    assert torch.equal(plain["image"], raw["image"].float() / 255)
    # eval batches are not augmented
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(val["image"], dm.splits["val"].images[:100].float() / 255)


def test_augmentation_off(tiny_cifar_dir):
    dm = CIFAR10DataModule(str(tiny_cifar_dir), val_size=1000, download=False, crop_padding=0, flip=False)
    dm.setup()
    raw = {"image": dm.splits["train"].images[:10], "label": dm.splits["train"].labels[:10]}
    out = dm.train_transform(raw, torch.Generator().manual_seed(0))
    assert torch.equal(out["image"], raw["image"].float() / 255)


def test_config_builds_the_module(tiny_cifar_dir, data_config):
    cfg = data_config("cifar10", tiny_cifar_dir, None, "data.padding_mode=zeros")
    dm = instantiate(cfg)
    assert isinstance(dm, CIFAR10DataModule)
    assert (dm.augment.padding, dm.augment.padding_mode, dm.augment.flip) == (4, "zeros", True)
    dm.setup()
    assert len(dm.splits["val"]) == cfg.val_size


def test_missing_data_names_the_folder(tmp_path):
    with pytest.raises(DataMissingError) as err:
        CIFAR10DataModule(str(tmp_path), download=False).setup()
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)
