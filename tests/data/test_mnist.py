"""MNIST from IDX files: shapes, labels, validation split, config, missing data, real counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from stn.data import DataMissingError, MNISTDataModule, load_mnist


def read_idx_labels(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert int.from_bytes(data[:4], "big") == 0x00000801
    return np.frombuffer(data, dtype=np.uint8, offset=8)


def rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(x.numpy().tobytes()) for x in images}


def test_load_mnist_shapes_and_labels(tiny_mnist_dir):
    train, test = load_mnist(tiny_mnist_dir, download=False)
    assert train.images.shape == (6000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    raw = tiny_mnist_dir / "MNIST" / "raw"
    assert np.array_equal(train.labels.numpy(), read_idx_labels(raw / "train-labels-idx1-ubyte"))
    assert np.array_equal(test.labels.numpy(), read_idx_labels(raw / "t10k-labels-idx1-ubyte"))


def test_validation_split_is_seeded_and_disjoint(tiny_mnist_dir):
    dm = MNISTDataModule(str(tiny_mnist_dir), val_size=1000, split_seed=1, download=False)
    dm.setup()
    assert [len(dm.splits[k]) for k in ("train", "val", "test")] == [5000, 1000, 1000]
    train, val = rows(dm.splits["train"].images), rows(dm.splits["val"].images)
    assert not train & val and len(train | val) == 6000
    # the run's seed (shuffling) does not change what is held out
    again = MNISTDataModule(str(tiny_mnist_dir), val_size=1000, split_seed=1, seed=7, download=False)
    again.setup()
    assert torch.equal(again.splits["val"].images, dm.splits["val"].images)
    other = MNISTDataModule(str(tiny_mnist_dir), val_size=1000, split_seed=2, download=False)
    other.setup()
    assert rows(other.splits["val"].images) != val
    # no held-out split: validate on the test set
    whole = MNISTDataModule(str(tiny_mnist_dir), val_size=0, download=False)
    whole.setup()
    assert whole.splits["val"] is whole.splits["test"] and len(whole.splits["train"]) == 6000


def test_batches(tiny_mnist_dir):
    dm = MNISTDataModule(
        str(tiny_mnist_dir), batch_size=64, eval_batch_size=500, val_size=1000, download=False
    )
    assert dm.num_classes == 10 and dm.image_shape == (1, 28, 28) and len(dm.mean) == len(dm.std) == 1
    train = dm.train_dataloader()
    batch = next(iter(train))
    assert len(train) == 5000 // 64
    assert batch["image"].shape == (64, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    assert set(batch) == {"image", "label"} and not dm.has_boxes
    assert [b["image"].shape[0] for b in dm.test_dataloader()] == [500, 500]


def test_config_builds_the_module(tiny_mnist_dir, data_config):
    cfg = data_config("mnist", tiny_mnist_dir)
    assert cfg._target_ == "stn.data.mnist.MNISTDataModule"
    dm = instantiate(cfg)
    assert isinstance(dm, MNISTDataModule) and dm.data_dir == Path(tiny_mnist_dir)
    dm.setup()  # the config's default val_size fits the tiny set
    assert len(dm.splits["val"]) == cfg.val_size


def test_missing_data_names_the_folder(tmp_path):
    with pytest.raises(DataMissingError) as err:
        MNISTDataModule(str(tmp_path / "nowhere"), download=False).setup()
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg


TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.realdata
def test_real_mnist_has_the_official_label_counts(real_mnist_dir):
    train, test = load_mnist(real_mnist_dir, download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == TRAIN_COUNTS
    assert torch.bincount(test.labels).tolist() == TEST_COUNTS
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_tiny_data_is_learnable(tiny_mnist_dir):
    # the fixtures' class-placed squares: a few optimizer steps take even a linear model far above
    # chance (one thread: small ops on a busy 2-core machine are slower with more)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        dm = MNISTDataModule(str(tiny_mnist_dir), batch_size=64, val_size=1000, download=False)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        for _, batch in zip(range(30), dm.train_dataloader()):
            loss = torch.nn.functional.cross_entropy(net(batch["image"]), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            correct = sum((net(b["image"]).argmax(1) == b["label"]).sum().item() for b in dm.val_dataloader())
    finally:
        torch.set_num_threads(threads)
    assert correct / 1000 > 0.5


def test_offline_falls_back_to_the_shipped_copy(tmp_path, monkeypatch, caplog):
    """No MNIST in data_dir and the download fails (forced here: no network is touched): the copy
    shipped with stn (stn/data/bundled/mnist) is read, with a warning naming the folder."""
    from urllib.error import URLError

    from torchvision import datasets

    calls = []

    def no_network(self):
        calls.append(self.root)
        raise URLError("network is unreachable (forced by the test)")

    monkeypatch.setattr(datasets.MNIST, "download", no_network)
    empty = tmp_path / "empty"
    with caplog.at_level("WARNING", logger="stn.data.mnist"):
        train, test = load_mnist(empty, download=True)
    assert calls, "the download was not even tried"
    assert "copy of MNIST shipped with stn" in caplog.text and str(empty / "MNIST" / "raw") in caplog.text
    assert "network is unreachable" in caplog.text
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == TRAIN_COUNTS
    assert torch.bincount(test.labels).tolist() == TEST_COUNTS
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert 0 < train.images.float().mean() / 255 < 0.2  # dark background, bright strokes
    # the datamodule (and so `python train.py`) gets the same
    dm = MNISTDataModule(str(empty), val_size=5000)
    dm.setup()
    assert [len(dm.splits[k]) for k in ("train", "val", "test")] == [55000, 5000, 10000]


def test_shipped_copy_equals_the_real_files(real_mnist_dir):
    from stn.data.mnist import load_bundled_mnist

    for shipped, real in zip(load_bundled_mnist(), load_mnist(real_mnist_dir, download=False)):
        assert torch.equal(shipped.images, real.images) and torch.equal(shipped.labels, real.labels)


def test_a_truncated_idx_file_is_named(tmp_path):
    import gzip

    from stn.data.mnist import read_idx_gz

    path = tmp_path / "short-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 1, 0, 0, 0, 10, 1, 2, 3]))  # says 10 labels, holds 3
    with pytest.raises(ValueError, match="short-idx1-ubyte.gz is not a complete IDX file"):
        read_idx_gz(path)
