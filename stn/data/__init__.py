"""Data: LightningDataModules that hold whole datasets as uint8 tensors on the training device and
cut batches there without per-sample Python (image folders too big for memory are streamed), and
the synthetic MNIST variants (translated, cluttered, distorted)."""

from .augment import CropFlip, random_crop_flip
from .base import DataMissingError, TensorDataModule, TensorSplit
from .cifar10 import CIFAR10DataModule, load_cifar10
from .imagefolder import ImageFolderDataModule
from .loaders import EpochLoader, StreamLoader, TensorLoader
from .mnist import MNISTDataModule, load_mnist
from .synthetic import (
    ClutteredMNISTDataModule,
    DistortedMNISTDataModule,
    TranslatedMNISTDataModule,
    clutter,
    distort,
    tight_boxes,
    translate,
)

__all__ = [
    "CIFAR10DataModule",
    "ClutteredMNISTDataModule",
    "CropFlip",
    "DataMissingError",
    "DistortedMNISTDataModule",
    "EpochLoader",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "StreamLoader",
    "TensorDataModule",
    "TensorLoader",
    "TensorSplit",
    "TranslatedMNISTDataModule",
    "clutter",
    "distort",
    "load_cifar10",
    "load_mnist",
    "random_crop_flip",
    "tight_boxes",
    "translate",
]
