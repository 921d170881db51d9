"""MNIST through torchvision's reader, held in memory as uint8 tensors; offline, the copy shipped
with stn (``stn/data/bundled/mnist``, gzip IDX files, CC BY-SA 3.0: see its README.md)."""

from __future__ import annotations

import gzip
import logging
import struct
from importlib import resources
from pathlib import Path
from typing import Tuple

import torch
from torch import Tensor
from torchvision import datasets

from .base import DataMissingError, TensorDataModule, TensorSplit

log = logging.getLogger(__name__)

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
# The package data (found in an installed package too; see pyproject.toml, package-data).
BUNDLED_MNIST = resources.files(__package__) / "bundled" / "mnist"


def load_mnist(data_dir: str | Path, download: bool = True) -> Tuple[TensorSplit, TensorSplit]:
    """Read MNIST from ``<data_dir>/MNIST/raw`` (IDX files), downloading them if allowed.

    When they are not there and ``download`` is true but the download fails (no network), the
    copy shipped with stn is read instead, with a warning; ``download=False`` reads only
    ``data_dir``.

    Returns:
        (train, test) splits: images uint8 (N, 1, 28, 28), labels int64 (N,).
    """
    root = Path(data_dir).expanduser()
    splits = []
    for train in (True, False):
        try:
            ds = datasets.MNIST(str(root), train=train, download=download)
        except Exception as err:  # torchvision raises RuntimeError, URLError, OSError...
            missing = DataMissingError(
                "MNIST",
                root / "MNIST" / "raw",
                "Put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, optionally .gz) in <data_dir>/MNIST/raw/.",
                err,
            )
            if download and BUNDLED_MNIST.joinpath("t10k-labels-idx1-ubyte.gz").is_file():
                log.warning("%s\nUsing the copy of MNIST shipped with stn (%s).", missing, BUNDLED_MNIST)
                return load_bundled_mnist()
            raise missing from None
        splits.append(TensorSplit(ds.data.unsqueeze(1).contiguous(), ds.targets.long()))
    return splits[0], splits[1]


def read_idx_gz(file) -> Tensor:
    """A gzip-compressed IDX file of unsigned bytes (the MNIST format) as a uint8 tensor.

    IDX: two zero bytes, type 0x08 (ubyte), the number of dimensions, each dimension as a
    big-endian int32, then the data.
    """
    with file.open("rb") as raw, gzip.GzipFile(fileobj=raw) as f:
        data = f.read()
    zero, kind, ndim = struct.unpack(">HBB", data[:4])
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    count = 1
    for d in dims:
        count *= d
    if zero != 0 or kind != 0x08 or len(data) != 4 + 4 * ndim + count:
        raise ValueError(f"{file} is not a complete IDX file of unsigned bytes")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=4 + 4 * ndim).view(*dims)


def load_bundled_mnist() -> Tuple[TensorSplit, TensorSplit]:
    """The copy of MNIST shipped with stn: (train, test) as :func:`load_mnist` returns them."""
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx_gz(BUNDLED_MNIST / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx_gz(BUNDLED_MNIST / f"{prefix}-labels-idx1-ubyte.gz")
        splits.append(TensorSplit(images.unsqueeze(1).contiguous(), labels.long()))
    return splits[0], splits[1]


class MNISTDataModule(TensorDataModule):
    """MNIST digits, 28x28 grey, 10 classes; 60,000 train (less ``val_size``) and 10,000 test."""

    classes = tuple(str(i) for i in range(10))
    image_shape = (1, 28, 28)
    mean, std = MNIST_MEAN, MNIST_STD

    def load(self) -> Tuple[TensorSplit, TensorSplit]:
        return load_mnist(self.data_dir, self.download)
