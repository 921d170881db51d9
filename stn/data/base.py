"""In-memory datasets: one uint8 tensor on the training device, batches cut and composed there.

A batch is a dict:

- ``"image"``: (B, C, H, W) float32 in [0, 1] (models normalize themselves),
- ``"label"``: (B,) int64,
- ``"box"``: (B, 4) float32 true box ``(x1, y1, x2, y2)`` in pixels of ``"image"``, only for
  data that has true boxes (synthetic sets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import lightning as L
import torch
from torch import Tensor

Batch = Dict[str, Tensor]
# A transform maps a batch of raw uint8 samples to a training batch, on the device the data lives
# on, using the generator for all randomness so that runs are reproducible.
BatchTransform = Callable[[Batch, torch.Generator], Batch]


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


@dataclass
class TensorSplit:
    """A whole split in memory: uint8 images (N, C, H, W), int64 labels (N,), optional boxes (N, 4)."""

    images: Tensor
    labels: Tensor
    boxes: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(self.labels.shape)}")
        if self.boxes is not None and self.boxes.shape != (n, 4):
            raise ValueError(f"boxes must have shape ({n}, 4), got {tuple(self.boxes.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "TensorSplit":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return TensorSplit(move(self.images), move(self.labels.long()), move(self.boxes))

    def subset(self, index: Tensor) -> "TensorSplit":
        return TensorSplit(
            self.images[index], self.labels[index], None if self.boxes is None else self.boxes[index]
        )


def derive_seed(*values: int) -> int:
    """A seed from several integers, the same on every run and machine."""
    out = 0
    for v in values:
        out = (out * 1_000_003 + int(v)) % (2**62)
    return out


def to_float(batch: Batch, generator: Optional[torch.Generator] = None) -> Batch:
    """The default transform: uint8 images to float32 in [0, 1]."""
    out = dict(batch)
    out["image"] = batch["image"].float().div_(255)
    return out


class TensorLoader:
    """Iterate over batches of a :class:`TensorSplit` without a DataLoader.

    The split is moved to ``device`` once; each batch is an index into it, followed by
    ``transform`` (composition, augmentation, float conversion) run on that device in batched
    tensor code. Shuffling and transforms draw from a generator seeded by ``(seed, epoch)``, so an
    epoch is the same on every run and after resuming. Under data parallelism each rank takes
    every ``world_size``-th batch of the same permutation.

    Args:
        split: the data.
        batch_size: samples per batch.
        shuffle: permute each epoch.
        drop_last: drop the last incomplete batch.
        transform: batch transform, default :func:`to_float`.
        seed: base seed.
        device: where the data lives and batches are made.
        epoch_fn: returns the current epoch (the Trainer's); default counts calls to ``__iter__``.
        rank, world_size: data-parallel shard.
    """

    def __init__(
        self,
        split: TensorSplit,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        transform: Optional[BatchTransform] = None,
        seed: int = 0,
        device: Optional[torch.device] = None,
        epoch_fn: Optional[Callable[[], int]] = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device) if device is not None else split.images.device
        self.split = split.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.transform = transform or to_float
        self.seed = seed
        self.epoch_fn = epoch_fn
        self.rank, self.world_size = rank, world_size
        self._calls = 0

    def _num_batches_total(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        total = self._num_batches_total()
        # Every rank runs the same number of steps so that collectives stay in lockstep.
        return total // self.world_size if self.world_size > 1 else total

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._calls
        self._calls += 1
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.seed, epoch, self.rank))
        n = len(self.split)
        if self.shuffle:
            perm_gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(n, generator=perm_gen).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        for b in range(self.rank, len(self) * self.world_size, self.world_size):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            part = self.split
            batch = {"image": part.images[idx], "label": part.labels[idx]}
            if part.boxes is not None:
                batch["box"] = part.boxes[idx]
            yield self.transform(batch, gen)


class TensorDataModule(L.LightningDataModule):
    """Base class for datasets held in memory as :class:`TensorSplit` objects.

    Subclasses implement :meth:`load` (read the files once, return train and test splits as
    uint8 tensors on the CPU) and may override :meth:`train_transform` / :meth:`eval_transform`.
    The last ``val_size`` training samples (after a seeded shuffle) form the validation split.

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

    #: class names in label order; set by subclasses
    classes: Sequence[str] = ()

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        eval_batch_size: Optional[int] = None,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = True,
        device: str = "auto",
        *,
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

    # -- for subclasses -------------------------------------------------------------------------
    def load(self) -> Tuple[TensorSplit, TensorSplit]:
        """Read the dataset: (train, test) uint8 splits on the CPU."""
        raise NotImplementedError

    def train_transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        return to_float(batch, generator)

    def eval_transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        return to_float(batch, generator)

    # -- shape information for models and callbacks --------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_boxes(self) -> bool:
        self.setup()
        return self.splits["test"].boxes is not None

    # -- Lightning hooks ------------------------------------------------------------------------
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

    def _loader(self, name: str, train: bool) -> TensorLoader:
        self.setup()
        trainer = self.trainer
        return TensorLoader(
            self.splits[name],
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            transform=self.train_transform if train else self.eval_transform,
            seed=self.seed,
            device=self._device(),
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
            rank=trainer.global_rank if trainer is not None and train else 0,
            world_size=trainer.world_size if trainer is not None and train else 1,
        )

    def train_dataloader(self) -> TensorLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> TensorLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> TensorLoader:
        return self._loader("test", train=False)
