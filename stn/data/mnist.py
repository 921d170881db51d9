"""MNIST through torchvision's reader, held in memory as uint8 tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

from torchvision import datasets

from .base import DataMissingError, TensorDataModule, TensorSplit

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def load_mnist(data_dir: str | Path, download: bool = True) -> Tuple[TensorSplit, TensorSplit]:
    """Read MNIST from ``<data_dir>/MNIST/raw`` (IDX files), downloading them if allowed.

    Returns:
        (train, test) splits: images uint8 (N, 1, 28, 28), labels int64 (N,).
    """
    root = Path(data_dir).expanduser()
    splits = []
    for train in (True, False):
        try:
            ds = datasets.MNIST(str(root), train=train, download=download)
        except Exception as err:  # torchvision raises RuntimeError, URLError, OSError...
            raise DataMissingError(
                "MNIST",
                root / "MNIST" / "raw",
                "Put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, optionally .gz) in <data_dir>/MNIST/raw/.",
                err,
            ) from None
        splits.append(TensorSplit(ds.data.unsqueeze(1).contiguous(), ds.targets.long()))
    return splits[0], splits[1]


class MNISTDataModule(TensorDataModule):
    """MNIST digits, 28x28 grey, 10 classes; 60,000 train (less ``val_size``) and 10,000 test."""

    classes = tuple(str(i) for i in range(10))
    image_shape = (1, 28, 28)
    mean, std = MNIST_MEAN, MNIST_STD

    def load(self) -> Tuple[TensorSplit, TensorSplit]:
        return load_mnist(self.data_dir, self.download)
