"""Shared fixtures: tiny datasets written in the real on-disk formats, so no test needs the network.

- ``tiny_mnist_dir``: a data root with ``MNIST/raw/`` holding the four uncompressed IDX files
  (6,000 train / 1,000 test, 28x28 grey), read by ``torchvision.datasets.MNIST``.
- ``tiny_cifar_dir``: a data root with ``cifar-10-batches-py/`` holding ``data_batch_1..5``,
  ``test_batch`` and ``batches.meta`` as python pickles (6,000 train / 1,000 test, 32x32 RGB).
  torchvision verifies the md5 of each file against the official archive's; this fixture sets
  those expected md5s to the tiny files' own for the duration of the test (in this process only),
  so the integrity check still runs and still catches a damaged file.
- ``tiny_imagefolder_dir``: a root with ``train/`` (3 classes x 20) and ``test/`` (3 x 8) of
  32x32 PNG and JPEG files, class folders ``ant``, ``bee``, ``cat`` (written in another order),
  including a greyscale and an RGBA PNG and a non-image file that must be ignored.

Every image shows a bright square whose position (and colour) depends on the class, on a noisy
background, so a few optimizer steps raise accuracy above chance. The defaults of the data
configs (``val_size: 5000``) fit the tiny MNIST and CIFAR sets. Session-scoped data is shared: copy
it before changing it (``shutil.copytree``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FOLDER_CLASSES = ["cat", "ant", "bee"]  # written unsorted; ImageFolder order is ant, bee, cat


def pattern_images(labels: np.ndarray, channels: int, size: int, seed: int) -> np.ndarray:
    """uint8 (N, C, size, size): noise plus a class-placed, class-coloured square (learnable)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    side = size // 4
    images = rng.integers(0, 60, size=(n, channels, size, size), dtype=np.uint8)
    cells = [(r, c) for r in range(3) for c in range(4)]  # up to 12 classes on a 3x4 grid
    jitter = rng.integers(-1, 2, size=(n, 2))
    for i, k in enumerate(labels):
        r, c = cells[int(k) % len(cells)]
        y = 1 + r * (size - side - 2) // 2 + jitter[i, 0]
        x = 1 + c * (size - side - 2) // 3 + jitter[i, 1]
        y, x = int(np.clip(y, 0, size - side)), int(np.clip(x, 0, size - side))
        colour = [255] if channels == 1 else [255 if (int(k) >> b) & 1 else 140 for b in range(3)]
        images[i, :, y : y + side, x : x + side] = np.array(colour, dtype=np.uint8)[:, None, None]
    return images


def _labels(n: int, classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % classes).astype(np.uint8)


# -- MNIST: IDX files ----------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format: 0x0000, type 0x08 (ubyte), number of dims, big-endian int32 dims, data."""
    assert array.dtype == np.uint8
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_tiny_mnist(root: Path, n_train: int = 6000, n_test: int = 1000) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        labels = _labels(n, 10, seed)
        images = pattern_images(labels, 1, 28, seed)[:, 0]
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)  # magic 0x00000803
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)  # magic 0x00000801
    return root


# -- CIFAR-10: python pickles ----------------------------------------------------------------------
def write_tiny_cifar(root: Path, n_train: int = 6000, n_test: int = 1000) -> Path:
    """The layout of cifar-10-python.tar.gz; arrays rows are R, G, B planes of 32x32 (N, 3072).

    The originals are Python 2 pickles whose str keys read as ``'data'`` under the
    ``encoding="latin1"`` torchvision uses (and as ``b'data'`` under ``encoding="bytes"``);
    protocol 2 with str keys reads the same way.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = _labels(n_train + n_test, 10, 3)
    images = pattern_images(labels, 3, 32, 3).reshape(len(labels), 3072)
    parts = [(f"data_batch_{i + 1}", slice(i * n_train // 5, (i + 1) * n_train // 5)) for i in range(5)]
    parts.append(("test_batch", slice(n_train, n_train + n_test)))
    for name, sl in parts:
        entry = {
            "batch_label": f"{name} of tiny test data",
            "labels": [int(v) for v in labels[sl]],
            "data": np.ascontiguousarray(images[sl]),
            "filenames": [f"img_{i:05d}.png" for i in range(sl.start, sl.stop)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    meta = {"num_cases_per_batch": n_train // 5, "label_names": CIFAR_CLASSES, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return root


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# -- image folder: PNG and JPEG files ---------------------------------------------------------------
def write_tiny_imagefolder(root: Path, n_train: int = 20, n_test: int = 8, size: int = 32) -> Path:
    for split, n, seed in (("train", n_train, 4), ("test", n_test, 5)):
        for k, name in enumerate(FOLDER_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            label = sorted(FOLDER_CLASSES).index(name)
            images = pattern_images(np.full(n, label), 3, size, seed * 10 + k)
            for i, img in enumerate(images.transpose(0, 2, 3, 1)):  # (H, W, 3) for PIL
                if i == 0:  # greyscale PNG: decoded to 3 equal channels
                    Image.fromarray(img[:, :, 0], "L").save(folder / f"{i:03d}_grey.png")
                elif i == 1:  # RGBA PNG: alpha dropped
                    rgba = np.concatenate([img, np.full_like(img[:, :, :1], 255)], axis=2)
                    Image.fromarray(rgba, "RGBA").save(folder / f"{i:03d}_rgba.png")
                elif i % 2:
                    Image.fromarray(img, "RGB").save(folder / f"{i:03d}.jpg", quality=95)
                else:
                    Image.fromarray(img, "RGB").save(folder / f"{i:03d}.png")
    (root / "train" / "ant" / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="session")
def tiny_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data root with MNIST/raw/ IDX files: 6,000 train / 1,000 test, 28x28, labels 0-9."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny_mnist"))


@pytest.fixture(scope="session")
def _tiny_cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("tiny_cifar"))


@pytest.fixture
def tiny_cifar_dir(_tiny_cifar_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Data root with cifar-10-batches-py/: 6,000 train / 1,000 test, 32x32 RGB, 10 classes.

    For this test, torchvision's expected md5s are those of the tiny files (see module doc).
    """
    from torchvision.datasets import CIFAR10

    folder = _tiny_cifar_root / CIFAR10.base_folder
    monkeypatch.setattr(CIFAR10, "train_list", [[n, _md5(folder / n)] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, _md5(folder / n)] for n, _ in CIFAR10.test_list])
    meta = dict(CIFAR10.meta, md5=_md5(folder / CIFAR10.meta["filename"]))
    monkeypatch.setattr(CIFAR10, "meta", meta)
    return _tiny_cifar_root


@pytest.fixture(scope="session")
def tiny_imagefolder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root with train/ (3 classes x 20) and test/ (3 x 8) of 32x32 PNG/JPEG files."""
    return write_tiny_imagefolder(tmp_path_factory.mktemp("tiny_imagefolder"))


def pytest_configure(config: pytest.Config) -> None:
    # torchvision 0.29 deprecates its image codecs (for TorchCodec); stn falls back to PIL when they
    # go. pytest shows DeprecationWarnings per call, which here would be one per decoded file.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning",
    )


def real_data(marker: str, what: str) -> Path:
    """The first of $STN_DATA_DIR, ../shared/data and ./data that holds ``marker`` (a relative
    path); skips the test, saying why, where none does."""
    repo = Path(__file__).resolve().parents[1]
    for root in (os.environ.get("STN_DATA_DIR"), repo.parent / "shared" / "data", repo / "data"):
        if root and (Path(root) / marker).exists():
            return Path(root)
    pytest.skip(f"{what} not found in $STN_DATA_DIR, ../shared/data or ./data")


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    """The data folder with the real MNIST IDX files."""
    return real_data("MNIST/raw/train-labels-idx1-ubyte", "real MNIST")


@pytest.fixture(scope="session")
def real_cifar10_jpeg_dir() -> Path:
    """The CIFAR-10 JPEG copy (class folders)."""
    return real_data("cifar10-jpeg/test/airplane", "cifar10-jpeg") / "cifar10-jpeg"


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors: extra intra-op threads only add OpenMP waits, badly on a busy machine.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
