"""Image folders: decoding, sizes, splits, the decoded-tensor cache, streaming fallback, configs."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from stn.data import DataMissingError, ImageFolderDataModule, StreamLoader
from stn.data.imagefolder import ImageDecoder

CLASSES = ["ant", "bee", "cat"]


def write_png(img: torch.Tensor, path: str) -> None:
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)


def read_png(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


def module(root, **kw) -> ImageFolderDataModule:
    kw.setdefault("num_workers", 0)
    kw.setdefault("val_size", 0)
    return ImageFolderDataModule(str(root), **kw)


def rows(images: torch.Tensor) -> list[bytes]:
    return sorted(bytes(x.numpy().tobytes()) for x in images)


def test_loads_classes_labels_and_pixels(tiny_imagefolder_dir):
    dm = module(tiny_imagefolder_dir)
    assert dm.classes == CLASSES and dm.num_classes == 3
    dm.setup()
    train, test = dm.splits["train"], dm.splits["test"]
    assert train.images.shape == (60, 3, 32, 32) and test.images.shape == (24, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and dm.image_shape == (3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [20, 20, 20]  # notes.txt was skipped
    assert dm.splits["val"] is test  # val_size=0 and no val/ folder
    # files come in ImageFolder order; a PNG decodes exactly, a grey PNG to three equal channels
    png = tiny_imagefolder_dir / "train" / "bee" / "002.png"
    assert torch.equal(train.images[22], read_png(png))
    assert train.labels[22] == 1
    grey = train.images[0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_grey_and_resized(tiny_imagefolder_dir):
    dm = module(tiny_imagefolder_dir, channels=1, image_size=[16, 24])
    assert dm.image_shape == (1, 16, 24)
    dm.setup()
    assert dm.splits["train"].images.shape == (60, 1, 16, 24)
    crop = module(tiny_imagefolder_dir, image_size=20, resize=24, center_crop=True)
    crop.setup()
    assert crop.splits["test"].images.shape == (24, 3, 20, 20)


def test_decoder_resize_and_crop(tmp_path):
    img = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    write_png(img, str(tmp_path / "a.png"))
    path = str(tmp_path / "a.png")
    assert ImageDecoder()(path).shape == (3, 40, 60)
    assert ImageDecoder(resize=20)(path).shape == (3, 20, 30)  # shorter side, aspect kept
    assert ImageDecoder(image_size=[10, 10])(path).shape == (3, 10, 10)  # squashed
    cropped = ImageDecoder(image_size=[40, 40], center_crop=True)(path)
    assert torch.equal(cropped, img[:, :, 10:50])
    with pytest.raises(ValueError, match="channels"):
        ImageDecoder(channels=4)


def test_mixed_sizes_need_image_size(tiny_imagefolder_dir, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(tiny_imagefolder_dir, root)
    write_png(torch.zeros(3, 40, 30, dtype=torch.uint8), str(root / "train" / "cat" / "big.png"))
    with pytest.raises(ValueError, match="image_size"):
        module(root).setup()
    dm = module(root, image_size=32)
    dm.setup()
    assert dm.splits["train"].images.shape == (61, 3, 32, 32)


def test_val_fraction_is_seeded_and_disjoint(tiny_imagefolder_dir):
    dm = module(tiny_imagefolder_dir, val_size=0.25, split_seed=3)
    dm.setup()
    train, val = rows(dm.splits["train"].images), rows(dm.splits["val"].images)
    assert len(train) == 45 and len(val) == 15 and not set(train) & set(val)
    again = module(tiny_imagefolder_dir, val_size=15, split_seed=3, seed=99)  # the run seed does not matter
    again.setup()
    assert rows(again.splits["val"].images) == val
    other = module(tiny_imagefolder_dir, val_size=15, split_seed=4)
    other.setup()
    assert rows(other.splits["val"].images) != val
    with pytest.raises(ValueError, match="val_size"):
        module(tiny_imagefolder_dir, val_size=60).setup()


def test_val_folder_is_used(tiny_imagefolder_dir, tmp_path):
    root = tmp_path / "withval"
    shutil.copytree(tiny_imagefolder_dir, root)
    shutil.copytree(root / "test", root / "val")
    shutil.rmtree(root / "val" / "bee")  # a split may lack classes
    dm = module(root, val_size=10)  # ignored: val/ exists
    dm.setup()
    assert len(dm.splits["train"]) == 60 and len(dm.splits["val"]) == 16
    assert set(dm.splits["val"].labels.tolist()) == {0, 2}
    shutil.copytree(root / "test" / "ant", root / "test" / "dragonfly")
    with pytest.raises(ValueError, match="dragonfly"):
        module(root).setup()


def test_cache_is_hit_then_invalidated(tiny_imagefolder_dir, tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    shutil.copytree(tiny_imagefolder_dir, root)
    first = module(root, cache_dir=str(cache))
    first.setup()
    assert first.cache_hits == {"train": False, "test": False}
    assert len(list(cache.glob("*.pt"))) == 2
    second = module(root, cache_dir=str(cache))
    second.setup()
    assert second.cache_hits == {"train": True, "test": True}
    assert torch.equal(second.splits["train"].images, first.splits["train"].images)
    assert torch.equal(second.splits["train"].labels, first.splits["train"].labels)
    # other options: another cache file; the first stays
    grey = module(root, cache_dir=str(cache), channels=1)
    grey.setup()
    assert grey.cache_hits["train"] is False and len(list(cache.glob("*.pt"))) == 4
    # a changed file: decoded again, the stale cache replaced
    changed = root / "train" / "bee" / "002.png"
    write_png(torch.full((3, 32, 32), 7, dtype=torch.uint8), str(changed))
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # even on coarse clocks
    third = module(root, cache_dir=str(cache))
    third.setup()
    assert third.cache_hits == {"train": False, "test": True}
    assert (third.splits["train"].images[22] == 7).all()
    assert len(list(cache.glob("*.pt"))) == 4
    # a removed file too
    (root / "test" / "cat" / "002.png").unlink()
    fourth = module(root, cache_dir=str(cache))
    fourth.setup()
    assert fourth.cache_hits["test"] is False and len(fourth.splits["test"]) == 23


def test_unreadable_cache_is_replaced(tiny_imagefolder_dir, tmp_path):
    module(tiny_imagefolder_dir, cache_dir=str(tmp_path)).setup()
    for f in tmp_path.glob("*.pt"):
        f.write_bytes(b"garbage")
    dm = module(tiny_imagefolder_dir, cache_dir=str(tmp_path))
    dm.setup()
    assert dm.cache_hits == {"train": False, "test": False} and len(dm.splits["train"]) == 60


def test_mean_std_computed_or_given(tiny_imagefolder_dir):
    dm = module(tiny_imagefolder_dir, val_size=12)
    dm.setup()
    x = dm.splits["train"].images.double() / 255
    want_mean = x.mean(dim=(0, 2, 3))
    want_std = x.permute(1, 0, 2, 3).flatten(1).std(dim=1, unbiased=False)
    assert torch.allclose(torch.tensor(dm.mean).double(), want_mean, atol=1e-4)
    assert torch.allclose(torch.tensor(dm.std).double(), want_std, atol=1e-4)
    given = module(tiny_imagefolder_dir, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert given.mean == (0.5, 0.5, 0.5) and given.std == (0.25, 0.25, 0.25) and not given.splits
    half = module(tiny_imagefolder_dir, val_size=12, std=[0.25, 0.25, 0.25])
    assert half.std == (0.25, 0.25, 0.25)  # given: known before setup
    with pytest.raises(RuntimeError, match=r"ImageFolderDataModule.mean is measured .* call setup\(\)"):
        _ = half.mean  # measured: reading it decodes nothing
    assert not half.splits and not half.streams
    half.setup()
    assert half.std == (0.25, 0.25, 0.25) and half.mean == dm.mean
    with pytest.raises(ValueError, match="mean"):
        module(tiny_imagefolder_dir, mean=[0.5])


def test_train_batches_augmented(tiny_imagefolder_dir):
    dm = module(tiny_imagefolder_dir, batch_size=16, crop_padding=4, flip=True)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 32) and batch["image"].dtype == torch.float32
    raw = {"image": dm.splits["train"].images[:16], "label": dm.splits["train"].labels[:16]}
    aug = dm.train_transform(raw, torch.Generator().manual_seed(0))
    assert torch.equal(aug["label"], raw["label"])
    assert not torch.equal(aug["image"], raw["image"].float() / 255)


def _batches(loader) -> list[dict]:
    return [{k: v.clone() for k, v in b.items()} for b in loader]


def test_streaming_fallback_matches_memory(tiny_imagefolder_dir):
    mem = module(tiny_imagefolder_dir, val_size=12, batch_size=8)
    stream = module(tiny_imagefolder_dir, val_size=12, batch_size=8, max_memory_gb=0)
    with pytest.raises(RuntimeError, match="streaming"):
        _ = stream.streaming  # decided by setup()
    stream.setup()
    mem.setup()
    assert stream.streaming and not mem.streaming and not stream.splits
    assert stream.image_shape == mem.image_shape == (3, 32, 32)
    for name in ("val", "test"):
        got = _batches(getattr(stream, f"{name}_dataloader")())
        want = _batches(getattr(mem, f"{name}_dataloader")())
        assert [set(b) for b in got] == [set(b) for b in want] == [{"image", "label"}] * len(want)
        for g, w in zip(got, want):
            assert g["image"].dtype == torch.float32 and g["label"].dtype == torch.int64
            assert torch.equal(g["image"], w["image"]) and torch.equal(g["label"], w["label"])
    train = stream.train_dataloader()
    assert isinstance(train, StreamLoader) and len(train) == 48 // 8
    assert len(stream.mean) == 3


def test_streaming_is_deterministic_and_sharded(tiny_imagefolder_dir):
    def loader(epoch, rank=0, world_size=1, workers=0):
        dm = module(tiny_imagefolder_dir, batch_size=4, max_memory_gb=0, num_workers=workers, crop_padding=2)
        dm.setup()
        return StreamLoader(
            dm._loader("train", True).loader.dataset,
            4,
            shuffle=True,
            drop_last=True,
            seed=0,
            transform=dm.train_transform,
            epoch_fn=lambda: epoch,
            rank=rank,
            world_size=world_size,
            num_workers=workers,
        )

    a, b = _batches(loader(0)), _batches(loader(0, workers=1))
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    c = _batches(loader(1))
    assert not all(torch.equal(x["label"], y["label"]) for x, y in zip(a, c))
    shards = [loader(0, r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 60 // 2 // 4
    seen = [rows((torch.cat([x["image"] for x in _batches(s)]) * 255).round().byte()) for s in shards]
    assert not set(seen[0]) & set(seen[1])


def test_missing_folder_names_it_and_the_layout(tmp_path):
    with pytest.raises(DataMissingError) as err:
        module(tmp_path / "nothing").setup()
    msg = str(err.value)
    assert str(tmp_path / "nothing" / "train") in msg and "<data_dir>/train/<class>/<image>" in msg
    (tmp_path / "half" / "train" / "a").mkdir(parents=True)
    write_png(torch.zeros(3, 4, 4, dtype=torch.uint8), str(tmp_path / "half" / "train" / "a" / "x.png"))
    with pytest.raises(DataMissingError, match="test"):
        module(tmp_path / "half").setup()


def test_configs_build_the_module(tiny_imagefolder_dir, tmp_path, data_config):
    cfg = data_config("imagefolder", tmp_path, tmp_path / "cache", f"data.data_dir='{tiny_imagefolder_dir}'")
    dm = instantiate(cfg, num_workers=0)
    assert isinstance(dm, ImageFolderDataModule) and dm.cache_dir == tmp_path / "cache"
    dm.setup()
    assert len(dm.splits["val"]) == 6  # 10% of 60
    jpeg = data_config("cifar10_jpeg", tmp_path)
    assert jpeg.data_dir == str(tmp_path / "cifar10-jpeg") and jpeg._target_ == cfg._target_
    assert list(jpeg.image_size) == [32, 32] and jpeg.crop_padding == 4 and jpeg.flip
    jdm = instantiate(jpeg)
    assert jdm.image_shape == (3, 32, 32) and jdm.mean == (0.4914, 0.4822, 0.4465)


@pytest.mark.realdata
def test_real_cifar10_jpeg_listing(real_cifar10_jpeg_dir):
    # listing only (decoding all 60,000 files takes several seconds; see the report for timings)
    dm = module(real_cifar10_jpeg_dir, image_size=32)
    assert dm.classes == [
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
    ]
    test = dm._samples(dm._folder("test"))
    assert len(test) == 10000 and torch.bincount(torch.tensor([s[1] for s in test])).tolist() == [1000] * 10
    assert dm.decoder(test[0][0]).shape == (3, 32, 32)
