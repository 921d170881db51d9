"""Batches and the loaders that make them, on the training device, the same on every run.

A batch is a dict:

- ``"image"``: (B, C, H, W) float32 in [0, 1] (models normalize themselves),
- ``"label"``: (B,) int64,
- ``"box"``: (B, 4) float32 true box ``(x1, y1, x2, y2)`` in pixels of ``"image"``, only for
  data that has true boxes (synthetic sets).

Every loader is an :class:`EpochLoader`: it knows its epoch (the Trainer's, or how often it was
iterated), shards batches across data-parallel ranks, and seeds one generator per epoch and rank
from which the batch transform draws all its randomness. :class:`TensorLoader` cuts batches out
of a split held in memory; :class:`StreamLoader` decodes files with DataLoader workers.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .split import TensorSplit

Batch = Dict[str, Tensor]
# A transform maps a batch of raw uint8 samples to a training batch, on the device the data lives
# on, using the generator for all randomness so that runs are reproducible.
BatchTransform = Callable[[Batch, torch.Generator], Batch]


def derive_seed(*values: int) -> int:
    """A seed from several integers (base seed, epoch, rank, ...), the same on every run and machine."""
    out = 0
    for v in values:
        out = (out * 1_000_003 + int(v)) % (2**62)
    return out


def to_float(batch: Batch, generator: Optional[torch.Generator] = None) -> Batch:
    """The default transform: uint8 images to float32 in [0, 1]."""
    out = dict(batch)
    out["image"] = batch["image"].float().div_(255)
    return out


class EpochLoader:
    """What every loader shares: batch size, shuffling, the epoch, its generator and the shard.

    Subclasses implement ``__len__`` and ``__iter__``; ``__iter__`` starts with
    :meth:`begin_epoch`, which gives the epoch (for the shuffling order) and the generator that
    the transform draws from, seeded by ``(seed, epoch, rank)``.

    Args:
        batch_size: samples per batch (per process).
        shuffle: a new order each epoch, seeded by ``(seed, epoch)``.
        drop_last: drop the last incomplete batch.
        transform: batch transform run on ``device``, default :func:`to_float`.
        seed: base seed.
        device: where batches are made.
        epoch_fn: returns the current epoch (the Trainer's); default counts calls to ``__iter__``.
        rank, world_size: data-parallel shard; every rank runs the same number of batches.
    """

    def __init__(
        self,
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
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.transform = transform or to_float
        self.seed = seed
        self.device = torch.device(device or "cpu")
        self.epoch_fn = epoch_fn
        self.rank, self.world_size = rank, world_size
        self._calls = 0

    def begin_epoch(self) -> Tuple[int, torch.Generator]:
        """The epoch now starting and the transforms' generator for it (on ``device``)."""
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._calls
        self._calls += 1
        generator = torch.Generator(device=self.device)
        generator.manual_seed(derive_seed(self.seed, epoch, self.rank))
        return epoch, generator

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        raise NotImplementedError


class TensorLoader(EpochLoader):
    """Iterate over batches of a :class:`~stn.data.split.TensorSplit` without a DataLoader.

    The split is moved to ``device`` once (default: where it is); each batch is an index into it,
    followed by the transform (composition, augmentation, float conversion) run on that device in
    batched tensor code. Under data parallelism each rank takes every ``world_size``-th batch of
    the same permutation.

    Args:
        split: the data.
        batch_size, **options: as in :class:`EpochLoader`.
    """

    def __init__(self, split: TensorSplit, batch_size: int, **options) -> None:
        if options.get("device") is None:
            options["device"] = split.images.device
        super().__init__(batch_size, **options)
        self.split = split.to(self.device)

    def _num_batches_total(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        total = self._num_batches_total()
        # Every rank runs the same number of steps so that collectives stay in lockstep.
        return total // self.world_size if self.world_size > 1 else total

    def __iter__(self) -> Iterator[Batch]:
        epoch, gen = self.begin_epoch()
        n = len(self.split)
        if self.shuffle:
            perm_gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(n, generator=perm_gen).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        for b in range(self.rank, len(self) * self.world_size, self.world_size):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.transform(self.split.batch(idx), gen)


class StreamLoader(EpochLoader):
    """Batches decoded on the fly by DataLoader workers, as the same dicts :class:`TensorLoader` makes.

    Only for data that does not fit in memory. Shuffling and sharding use a
    :class:`~torch.utils.data.DistributedSampler` seeded by ``(seed, epoch)``, so every rank runs
    the same number of batches; the batched transform (augmentation, float conversion) runs on
    ``device``.

    Args:
        dataset: map-style dataset of ``(uint8 image (C, H, W), label)``.
        batch_size, **options: as in :class:`EpochLoader`.
        num_workers: DataLoader worker processes (0: decode in this process).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, num_workers: int = 0, **options) -> None:
        super().__init__(batch_size, **options)
        self.sampler = DistributedSampler(
            dataset, self.world_size, self.rank, shuffle=self.shuffle, seed=self.seed
        )
        self.loader = DataLoader(
            dataset,
            batch_size,
            sampler=self.sampler,
            drop_last=self.drop_last,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        epoch, gen = self.begin_epoch()
        self.sampler.set_epoch(epoch)
        for images, labels in self.loader:
            batch = {
                "image": images.to(self.device, non_blocking=True),
                "label": labels.to(self.device, non_blocking=True),
            }
            yield self.transform(batch, gen)
