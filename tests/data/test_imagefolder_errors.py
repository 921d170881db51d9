"""Image folders with bad files: every unreadable file named, skipped on request; bad layouts (#15)."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stn.data import DataMissingError, ImageFolderDataModule
from stn.data.decode import ImageDecoder, UnreadableImagesError, decode_files


def jpeg_bytes(seed: int = 0) -> bytes:
    img = (np.random.default_rng(seed).random((32, 32, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def corrupt_but_decodable(data: bytes) -> bytes:
    """Bytes inside the entropy-coded scan overwritten: libjpeg still decodes the file, warning
    'Corrupt JPEG data: premature end of data segment' on stderr, and PIL decodes it silently."""
    out = bytearray(data)
    sos = out.find(b"\xff\xda")
    for i in range(sos + 40, sos + 60):
        out[i] = 0xFF if i % 2 else 0xD3
    return bytes(out)


@pytest.fixture
def broken_folder(tiny_imagefolder_dir, tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "images"
    shutil.copytree(tiny_imagefolder_dir, root)
    bad = {
        "truncated": root / "train" / "ant" / "003.jpg",
        "garbage": root / "train" / "bee" / "004.png",
        "corrupt": root / "test" / "cat" / "005.jpg",
    }
    good = bad["truncated"].read_bytes()
    bad["truncated"].write_bytes(good[: len(good) // 2])
    bad["garbage"].write_bytes(b"this is not a PNG" * 20)
    bad["corrupt"].write_bytes(corrupt_but_decodable(bad["corrupt"].read_bytes()))
    return root, bad


def test_corrupt_jpeg_that_decodes_is_caught(tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(corrupt_but_decodable(jpeg_bytes()))
    with Image.open(path) as im:  # what used to happen: decoded, nothing said
        im.load()
    assert ImageDecoder()(str(path)).shape == (3, 32, 32)
    (tmp_path / "good.jpg").write_bytes(jpeg_bytes(1))
    paths = [str(tmp_path / "good.jpg"), str(path)]
    with pytest.raises(UnreadableImagesError) as err:
        decode_files(paths, ImageDecoder(), num_threads=2)
    assert err.value.failures == {str(path): "libjpeg: Corrupt JPEG data: premature end of data segment"}
    images, kept = decode_files(paths, ImageDecoder(), num_threads=2, skip_unreadable=True)
    assert kept == [0] and images.shape == (1, 3, 32, 32)


def test_every_unreadable_file_is_named(broken_folder):
    root, bad = broken_folder
    with pytest.raises(UnreadableImagesError) as err:
        ImageFolderDataModule(str(root), val_size=0, num_workers=2).setup()
    message = str(err.value)
    # the train split stops first, naming both of its files
    assert set(err.value.failures) == {str(bad["truncated"]), str(bad["garbage"])}
    assert str(bad["truncated"]) in message and str(bad["garbage"]) in message
    assert "data.skip_unreadable=true" in message
    assert isinstance(err.value, DataMissingError)  # a user's data problem: one line, no traceback


def test_skip_unreadable_leaves_them_out_with_one_warning(broken_folder, caplog):
    root, bad = broken_folder
    dm = ImageFolderDataModule(str(root), val_size=6, num_workers=2, skip_unreadable=True)
    with caplog.at_level(logging.WARNING, logger="stn.data.decode"):
        dm.setup()
    warnings = [r.getMessage() for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert len(warnings) == 2  # one per split that had some: train lists 2, test 1
    assert str(bad["truncated"]) in warnings[0] and str(bad["garbage"]) in warnings[0]
    assert str(bad["corrupt"]) in warnings[1]
    train, val, test = (dm.splits[k] for k in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (60 - 2 - 6, 6, 24 - 1)
    # labels still match the files: ant lost one, bee lost one
    labels = torch.cat([train.labels, val.labels])
    assert torch.bincount(labels).tolist() == [19, 19, 20]
    assert torch.bincount(test.labels).tolist() == [8, 8, 7]


def test_skipped_files_survive_the_cache(broken_folder, tmp_path):
    root, _ = broken_folder
    first = ImageFolderDataModule(str(root), val_size=0, skip_unreadable=True, cache_dir=str(tmp_path / "c"))
    first.setup()
    again = ImageFolderDataModule(str(root), val_size=0, skip_unreadable=True, cache_dir=str(tmp_path / "c"))
    again.setup()
    assert again.cache_hits == {"train": True, "test": True}
    assert torch.equal(again.splits["train"].labels, first.splits["train"].labels)
    assert torch.equal(again.splits["train"].images, first.splits["train"].images)


def test_streamed_unreadable_file_is_named(broken_folder):
    root, bad = broken_folder
    # mean/std given: setup() then decodes no training file to measure them
    dm = ImageFolderDataModule(
        str(root),
        val_size=0,
        num_workers=0,
        max_memory_gb=1e-9,
        batch_size=60,
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    dm.setup()
    assert dm.streaming
    with pytest.raises(UnreadableImagesError, match=str(bad["truncated"]).replace(".", r"\.")):
        list(dm.train_dataloader())


def test_empty_class_folder_is_a_clear_error(tiny_imagefolder_dir, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(tiny_imagefolder_dir, root)
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(DataMissingError, match="of the class folder\\(s\\) dog not found in .*train"):
        ImageFolderDataModule(str(root), val_size=0).setup()


def test_one_class_is_a_clear_error(tiny_imagefolder_dir, tmp_path):
    root = tmp_path / "images"
    for split in ("train", "test"):
        shutil.copytree(tiny_imagefolder_dir / split / "ant", root / split / "ant")
    with pytest.raises(DataMissingError, match="only ant/: a classifier needs at least 2 classes"):
        ImageFolderDataModule(str(root), val_size=0).setup()
