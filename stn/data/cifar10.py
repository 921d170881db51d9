"""CIFAR-10 through torchvision's reader of the python batches, held in memory as uint8 tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch
from torchvision import datasets

from .augment import CropFlip
from .base import Batch, DataMissingError, TensorDataModule, TensorSplit

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Per-channel mean and standard deviation of the 50,000 training images in [0, 1] (the true std;
# the often copied (0.2023, 0.1994, 0.2010) is a mean of per-image stds).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def load_cifar10(data_dir: str | Path, download: bool = True) -> Tuple[TensorSplit, TensorSplit]:
    """Read CIFAR-10 from ``<data_dir>/cifar-10-batches-py`` (python pickles), downloading if allowed.

    torchvision checks the md5 of every batch file, so only the original files load.

    Returns:
        (train, test) splits: images uint8 (N, 3, 32, 32), labels int64 (N,).
    """
    root = Path(data_dir).expanduser()
    splits = []
    for train in (True, False):
        try:
            ds = datasets.CIFAR10(str(root), train=train, download=download)
        except Exception as err:  # RuntimeError (missing/corrupt), URLError, OSError...
            raise DataMissingError(
                "CIFAR-10",
                root / datasets.CIFAR10.base_folder,
                "Put the original python batches (data_batch_1..5, test_batch, batches.meta from "
                "cifar-10-python.tar.gz) in <data_dir>/cifar-10-batches-py/. For a folder of "
                "images use the imagefolder data config instead.",
                err,
            ) from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        splits.append(TensorSplit(images, torch.as_tensor(ds.targets, dtype=torch.long)))
    return splits[0], splits[1]


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10, 32x32 colour, 10 classes; 50,000 train (less ``val_size``) and 10,000 test.

    Training batches are randomly cropped from the padded images and flipped left-right, in one
    batched gather on the training device (:class:`~stn.data.augment.CropFlip`).

    Args:
        crop_padding: pixels of padding for the random crop (0: no crop).
        padding_mode: ``"reflect"`` (airbench's choice), ``"zeros"`` or ``"replicate"``.
        flip: random horizontal flips.
        **kwargs: as in :class:`~stn.data.base.TensorDataModule`.
    """

    classes = CIFAR10_CLASSES
    image_shape = (3, 32, 32)
    mean, std = CIFAR10_MEAN, CIFAR10_STD

    def __init__(
        self,
        data_dir: str,
        *,
        crop_padding: int = 4,
        padding_mode: str = "reflect",
        flip: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(data_dir, **kwargs)
        self.augment = CropFlip(crop_padding, padding_mode, flip)

    def load(self) -> Tuple[TensorSplit, TensorSplit]:
        return load_cifar10(self.data_dir, self.download)

    def train_transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        return self.augment(batch, generator)
