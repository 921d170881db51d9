"""The datamodule contract and in-memory splits: one uint8 tensor per split on the training device.

Batches are the dicts of :mod:`stn.data.loaders`; :class:`TensorDataModule` says what every
datamodule tells the models and callbacks (shape, classes, statistics, boxes) and builds its
loaders in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import lightning as L
import torch

from .loaders import Batch, EpochLoader, TensorLoader, to_float
from .resume import ResumableData, ResumableLoader
from .split import TensorSplit

__all__ = ["DataMissingError", "TensorDataModule", "TensorSplit", "check_statistics"]


class DataMissingError(RuntimeError):
    """The dataset files are not where we looked and could not be downloaded."""

    def __init__(
        self,
        name: str,
        folder: Path,
        hint: str,
        cause: Optional[BaseException] = None,
        downloadable: bool = True,
    ):
        msg = (
            f"{name} not found in {folder}"
            + (" and it could not be downloaded" if downloadable else "")
            + (f" ({type(cause).__name__}: {cause})" if cause else "")
            + f".\n{hint}\nSet the data folder with `paths.data_dir=<folder>` or the environment "
            "variable STN_DATA_DIR."
        )
        super().__init__(msg)


def check_statistics(
    mean: Optional[Sequence[float]], std: Optional[Sequence[float]], channels: int
) -> Tuple[Optional[Tuple[float, ...]], Optional[Tuple[float, ...]]]:
    """Given per-channel ``mean`` and ``std`` (or None: measured later) as tuples of floats.

    Raises ValueError naming the argument for a wrong number of values or a std that is not
    positive.
    """
    out = []
    for name, value in (("mean", mean), ("std", std)):
        if value is not None:
            value = tuple(float(v) for v in value)
            if len(value) != channels:
                raise ValueError(f"{name} must have one value per channel ({channels}), got {list(value)}")
        out.append(value)
    if out[1] is not None and min(out[1]) <= 0:
        raise ValueError(f"std must be positive, got {list(out[1])}")
    return out[0], out[1]


class ResumableTensorLoader(ResumableLoader, TensorLoader):
    """:class:`TensorLoader` that a run resumed from a mid-epoch checkpoint continues exactly."""


class TensorDataModule(ResumableData, L.LightningDataModule):
    """Base class of the datamodules: the contract models and callbacks rely on, and the loaders.

    What every datamodule declares (:func:`stn.tasks.build` sizes and normalizes the model from
    it). Reading these never loads data nor generates canvases: a value measured from the data
    (the mean and std of generated canvases or of an image folder) is set by :meth:`setup`, and
    reading it before raises ``RuntimeError`` saying so.

    - :attr:`classes` (names in label order) and :attr:`num_classes`;
    - :attr:`image_shape`: ``(C, H, W)`` of the batches' images;
    - :attr:`mean`, :attr:`std`: per-channel statistics of the images in [0, 1], for models that
      normalize;
    - :attr:`has_boxes`: whether batches carry true ``"box"`` es.

    Subclasses implement :meth:`load` (read the files once, return train and test splits as
    uint8 tensors on the CPU), declare the attributes above (class attributes or properties) and
    may override :meth:`train_transform` / :meth:`eval_transform`. The last ``val_size``
    training samples (after a seeded shuffle) form the validation split.

    Args:
        data_dir: folder with the dataset files (``paths.data_dir``).
        batch_size: training batch size (per process).
        eval_batch_size: validation/test batch size; default ``batch_size``.
        val_size: samples held out of the training split for validation (0: validate on test).
        seed: seed for shuffling and random transforms (the run's seed).
        download: let torchvision download missing files.
        device: ``"auto"`` puts the data on the Trainer's device; or an explicit device.
        split_seed: seed for what is held out for validation and for fixed generated splits;
            separate from ``seed`` so runs with different seeds see the same validation and test
            data.
    """

    #: class names in label order
    classes: Sequence[str] = ()
    #: whether batches carry ``"box"``: (B, 4) true boxes ``(x1, y1, x2, y2)`` in image pixels
    has_boxes: bool = False

    def __init__(
        self,
        data_dir: str,
        *,
        batch_size: int = 128,
        eval_batch_size: Optional[int] = None,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = True,
        device: str = "auto",
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.seed = seed
        self.split_seed = split_seed
        self.download = download
        self.device = device
        self.splits: Dict[str, TensorSplit] = {}

    # -- the contract -----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of the images in a batch."""
        raise NotImplementedError(f"{type(self).__name__} must declare image_shape (C, H, W)")

    @property
    def mean(self) -> Tuple[float, ...]:
        """Per-channel mean of the images in [0, 1]."""
        raise NotImplementedError(f"{type(self).__name__} must declare mean (one value per channel)")

    @property
    def std(self) -> Tuple[float, ...]:
        """Per-channel standard deviation of the images in [0, 1]."""
        raise NotImplementedError(f"{type(self).__name__} must declare std (one value per channel)")

    def measured(self, name: str, value: Any, hint: str = "") -> Any:
        """``value``, the attribute ``name`` that :meth:`setup` measures; a clear error while unset."""
        if value is None:
            raise RuntimeError(
                f"{type(self).__name__}.{name} is measured from the data by setup(): call setup() "
                f"before reading it{hint}"
            )
        return value

    # -- for subclasses ---------------------------------------------------------------------------
    def load(self) -> Tuple[TensorSplit, TensorSplit]:
        """Read the dataset: (train, test) uint8 splits on the CPU."""
        raise NotImplementedError

    def train_transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        return to_float(batch, generator)

    def eval_transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        return to_float(batch, generator)

    # -- Lightning hooks --------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        train, test = self.load()
        if self.val_size >= len(train):
            raise ValueError(f"val_size={self.val_size} must be smaller than the training set ({len(train)})")
        if self.val_size:
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.split_seed))
            self.splits = {
                "train": train.subset(perm[self.val_size :]),
                "val": train.subset(perm[: self.val_size]),
                "test": test,
            }
        else:
            self.splits = {"train": train, "val": test, "test": test}

    def _device(self) -> torch.device:
        if self.device != "auto":
            return torch.device(self.device)
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    # -- loaders ----------------------------------------------------------------------------------
    def make_loader(self, name: str, **options) -> EpochLoader:
        """The loader of split ``name`` with the :class:`~stn.data.loaders.EpochLoader` options;
        subclasses that do not hold their splits in memory return another loader here. The
        training loader resumes mid-epoch (:class:`~stn.data.resume.ResumableLoader`)."""
        return (ResumableTensorLoader if name == "train" else TensorLoader)(self.splits[name], **options)

    def _loader(self, name: str, train: bool) -> EpochLoader:
        self.setup()
        trainer = self.trainer
        loader = self.make_loader(
            name,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            transform=self.train_transform if train else self.eval_transform,
            seed=self.seed,
            device=self._device(),
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
            rank=trainer.global_rank if trainer is not None and train else 0,
            world_size=trainer.world_size if trainer is not None and train else 1,
        )
        return self.resumable(loader) if isinstance(loader, ResumableLoader) else loader

    def train_dataloader(self) -> EpochLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> EpochLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> EpochLoader:
        return self._loader("test", train=False)
