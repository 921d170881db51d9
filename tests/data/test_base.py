"""The datamodule contract: declared without loading anything, keyword-only arguments."""

from __future__ import annotations

import pytest
import torch

from stn.data import (
    CIFAR10DataModule,
    ClutteredMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    StreamLoader,
    TensorDataModule,
    TensorLoader,
    TensorSplit,
    TranslatedMNISTDataModule,
)

MODULES = [
    TensorDataModule,
    MNISTDataModule,
    CIFAR10DataModule,
    ImageFolderDataModule,
    TranslatedMNISTDataModule,
]


@pytest.mark.parametrize("cls", MODULES)
def test_arguments_after_data_dir_are_keywords(cls):
    with pytest.raises(TypeError, match="positional"):
        cls("/nonexistent", 32)


def test_declared_contract_loads_nothing():
    mnist = MNISTDataModule("/nonexistent", download=False)
    assert (mnist.image_shape, mnist.num_classes, mnist.has_boxes) == ((1, 28, 28), 10, False)
    assert len(mnist.mean) == len(mnist.std) == 1
    cluttered = ClutteredMNISTDataModule("/nonexistent", canvas_size=100, download=False)
    assert (cluttered.image_shape, cluttered.num_classes, cluttered.has_boxes) == ((1, 100, 100), 10, True)
    assert not mnist.splits and not cluttered.splits  # "/nonexistent" was never read


def test_base_says_what_a_subclass_must_declare():
    base = TensorDataModule("/nonexistent")
    for name in ("image_shape", "mean", "std"):
        with pytest.raises(NotImplementedError, match=f"TensorDataModule must declare {name}"):
            getattr(base, name)


def test_both_loaders_seed_epochs_alike():
    split = TensorSplit(torch.zeros(8, 1, 2, 2, dtype=torch.uint8), torch.zeros(8, dtype=torch.long))
    dataset = [(torch.zeros(1, 2, 2, dtype=torch.uint8), 0)] * 8

    def draws(loader):
        out = []
        for _ in range(2):  # two epochs, counted by calls
            epoch, gen = loader.begin_epoch()
            out.append((epoch, torch.rand(3, generator=gen)))
        return out

    memory = draws(TensorLoader(split, 4, seed=3, rank=1, world_size=2))
    stream = draws(StreamLoader(dataset, 4, seed=3, rank=1, world_size=2))
    assert [e for e, _ in memory] == [e for e, _ in stream] == [0, 1]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(memory, stream))
    assert not torch.equal(memory[0][1], memory[1][1])  # a new stream each epoch
    other_rank = draws(TensorLoader(split, 4, seed=3, rank=0, world_size=2))
    assert not torch.equal(memory[0][1], other_rank[0][1])
