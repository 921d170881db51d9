from .base import DataMissingError, TensorDataModule, TensorLoader, TensorSplit
from .augment import CropFlip, random_crop_flip
from .mnist import MNISTDataModule, load_mnist
from .cifar10 import CIFAR10DataModule, load_cifar10
from .imagefolder import ImageFolderDataModule, StreamLoader
from .synthetic import (
    ClutteredMNISTDataModule,
    DistortedMNISTDataModule,
    TranslatedMNISTDataModule,
    clutter,
    distort,
    tight_boxes,
    translate,
)
