"""TensorLoader and TensorSplit: batch format, determinism, sharding, devices."""

from __future__ import annotations

import pytest
import torch

from stn.data import TensorLoader, TensorSplit
from stn.data.augment import CropFlip


def make_split(n: int = 103, boxes: bool = False) -> TensorSplit:
    # Each image carries its index in its first two pixels so batches can be traced back.
    images = torch.randint(
        0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    idx = torch.arange(n)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = (idx // 256).to(torch.uint8), (idx % 256).to(torch.uint8)
    box = torch.stack([idx, idx, idx + 1, idx + 2], 1).float() if boxes else None
    return TensorSplit(images, idx % 7, box)


def ids(batch) -> list[int]:
    img = (batch["image"] * 255).round().long()
    return (img[:, 0, 0, 0] * 256 + img[:, 0, 0, 1]).tolist()


def epoch_ids(loader) -> list[list[int]]:
    return [ids(b) for b in loader]


def test_batch_format_and_lengths():
    split = make_split(103, boxes=True)
    loader = TensorLoader(split, 10)
    batches = list(loader)
    assert len(loader) == len(batches) == 11
    b = batches[0]
    assert set(b) == {"image", "label", "box"}
    assert b["image"].shape == (10, 1, 8, 8) and b["image"].dtype == torch.float32
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
    assert b["label"].dtype == torch.int64 and b["box"].dtype == torch.float32
    assert batches[-1]["image"].shape[0] == 3
    # unshuffled: samples in order, labels and boxes travel with their images
    order = sum(epoch_ids(loader), [])
    assert order == list(range(103))
    assert torch.equal(torch.cat([b["label"] for b in batches]), split.labels)
    assert torch.equal(torch.cat([b["box"] for b in batches]), split.boxes)
    assert len(TensorLoader(split, 10, drop_last=True)) == 10


def test_shuffle_is_a_permutation_and_keeps_labels():
    split = make_split()
    loader = TensorLoader(split, 16, shuffle=True, seed=3)
    batches = list(loader)
    order = sum((ids(b) for b in batches), [])
    assert sorted(order) == list(range(len(split))) and order != sorted(order)
    labels = torch.cat([b["label"] for b in batches])
    assert torch.equal(labels, split.labels[torch.tensor(order)])


def test_same_seed_and_epoch_same_batches_other_epoch_other_order():
    split = make_split()
    epoch = {"e": 0}
    a = TensorLoader(split, 16, shuffle=True, seed=5, epoch_fn=lambda: epoch["e"])
    b = TensorLoader(split, 16, shuffle=True, seed=5, epoch_fn=lambda: epoch["e"])
    e0 = epoch_ids(a)
    assert e0 == epoch_ids(b) == epoch_ids(a)  # fixed by (seed, epoch), not by call count
    epoch["e"] = 1
    e1 = epoch_ids(a)
    assert e1 != e0 and sorted(sum(e1, [])) == sorted(sum(e0, []))
    assert epoch_ids(TensorLoader(split, 16, shuffle=True, seed=6, epoch_fn=lambda: 1)) != e1
    # without epoch_fn, each pass over the loader is the next epoch
    c = TensorLoader(split, 16, shuffle=True, seed=5)
    assert epoch_ids(c) == e0 and epoch_ids(c) == e1


def test_random_transform_is_reproducible():
    split = make_split(64)
    aug = CropFlip(padding=2, padding_mode="zeros", flip=True)
    run = lambda: [b["image"] for b in TensorLoader(split, 16, transform=aug, seed=1, epoch_fn=lambda: 0)]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(run(), run()))
    other = [b["image"] for b in TensorLoader(split, 16, transform=aug, seed=2, epoch_fn=lambda: 0)]
    assert not all(torch.equal(x, y) for x, y in zip(run(), other))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_shards_are_disjoint_and_equal_length(world_size):
    split = make_split(103)
    loaders = [
        TensorLoader(
            split, 8, shuffle=True, drop_last=True, seed=0, epoch_fn=lambda: 2, rank=r, world_size=world_size
        )
        for r in range(world_size)
    ]
    lengths = {len(lo) for lo in loaders}
    assert lengths == {(103 // 8) // world_size}
    shards = [sum(epoch_ids(lo), []) for lo in loaders]
    assert all(len(s) == len(loaders[0]) * 8 for s in shards)
    flat = sum(shards, [])
    assert len(flat) == len(set(flat))  # no sample on two ranks
    # together the ranks see a prefix of the single-process epoch's batches
    single = epoch_ids(TensorLoader(split, 8, shuffle=True, drop_last=True, seed=0, epoch_fn=lambda: 2))
    assert sorted(flat) == sorted(sum(single[: len(loaders[0]) * world_size], []))


def _devices():
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    if torch.backends.mps.is_available():
        devs.append("mps")
    return devs


@pytest.mark.parametrize("device", _devices())
def test_batches_on_requested_device(device):
    split = make_split(40, boxes=True)
    aug = CropFlip(padding=2, flip=True)
    for batch in TensorLoader(split, 16, shuffle=True, transform=aug, device=device):
        for key, dtype in (("image", torch.float32), ("label", torch.int64), ("box", torch.float32)):
            assert batch[key].device.type == device and batch[key].dtype == dtype
    assert split.images.device.type == "cpu"  # the caller's split is not moved


def test_tensor_split_checks():
    with pytest.raises(ValueError, match="uint8"):
        TensorSplit(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        TensorSplit(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="boxes"):
        TensorSplit(
            torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), torch.zeros(2, 3)
        )
    with pytest.raises(ValueError, match="batch_size"):
        TensorLoader(make_split(4), 0)
