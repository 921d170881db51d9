"""Any class-per-folder image dataset, decoded once into memory (and cached), or streamed if too big.

Layout (the torchvision ``ImageFolder`` one, per split)::

    <data_dir>/train/<class>/*.{jpg,png,...}
    <data_dir>/test/<class>/...
    <data_dir>/val/<class>/...        optional; else ``val_size`` is held out of train/

Class names are the sorted folder names of ``train/``. When the decoded images fit in
``max_memory_gb`` they become one uint8 tensor per split, handled like MNIST and CIFAR-10
(:class:`~stn.data.base.TensorLoader`); with ``cache_dir`` that tensor is saved to a ``.pt`` file
keyed by the folder, the preprocessing options and every file's name, size and mtime, so a second
run skips decoding and a changed folder is decoded again. Otherwise a
``torch.utils.data.DataLoader`` with workers decodes batches on the fly (:class:`StreamLoader`),
yielding the same batch dicts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from stn.ops._checks import Size2

from .augment import CropFlip
from .base import DataMissingError, TensorDataModule, TensorSplit, check_statistics
from .decode import ImageDecoder, UnreadableImagesError, decode_files
from .loaders import Batch, EpochLoader, StreamLoader

log = logging.getLogger(__name__)

Samples = List[Tuple[str, int]]
_CACHE_VERSION = 1
_LAYOUT_HINT = (
    "Expected <data_dir>/train/<class>/<image> and <data_dir>/test/<class>/<image> "
    "(optionally <data_dir>/val/<class>/<image>), one folder per class, like torchvision ImageFolder; "
    "point `data.data_dir=<folder>` at the folder holding train/ and test/."
)


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    return min(n, 8)


class _FileDataset(Dataset):
    def __init__(self, samples: Samples, decoder: ImageDecoder) -> None:
        self.samples, self.decoder = samples, decoder

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Tuple[Tensor, int]:
        path, label = self.samples[i]
        try:
            return self.decoder(path), label
        except Exception as err:  # streamed files are decoded only now: name the one that failed
            raise UnreadableImagesError({path: f"{type(err).__name__}: {err}"}) from None


class ImageFolderDataModule(TensorDataModule):
    """Images in class folders, ``train/``, ``test/`` and optionally ``val/`` under ``data_dir``.

    Args:
        data_dir: the folder holding ``train/`` and ``test/``.
        batch_size, eval_batch_size, seed, split_seed, device: as in :class:`~stn.data.base.TensorDataModule`.
        val_size: without a ``val/`` folder, the number (int) or fraction (float < 1) of training
            images held out for validation (0: validate on ``test/``).
        image_size: final (H, W) of every image (int: square); None keeps the files' size, which
            must then be the same for all.
        resize: first resize: int = shorter side (aspect kept), [H, W] = exact; None: none.
        center_crop: reach ``image_size`` by a center crop (after ``resize``) instead of a resize.
        channels: 1 (grey) or 3 (RGB).
        mean, std: per-channel normalization for models; None: computed from the training split.
        crop_padding, padding_mode, flip: training augmentation, see
            :class:`~stn.data.augment.CropFlip` (default: none).
        cache_dir: folder for decoded ``.pt`` caches; None: decode every time.
        max_memory_gb: decode into memory only when all splits together fit in this; else stream.
        num_workers: decoding threads (in memory) or DataLoader workers (streaming); None: CPU
            count, at most 8.
        skip_unreadable: leave out files that cannot be decoded (corrupt JPEG data included),
            with one warning listing them; False: stop with the list
            (:class:`~stn.data.decode.UnreadableImagesError`). Streamed files are checked only
            when they are read, and always stop the run.
    """

    def __init__(
        self,
        data_dir: str,
        *,
        batch_size: int = 128,
        eval_batch_size: Optional[int] = None,
        val_size: Union[int, float] = 0.1,
        seed: int = 0,
        split_seed: int = 0,
        device: str = "auto",
        image_size: Optional[Size2] = None,
        resize: Optional[Size2] = None,
        center_crop: bool = False,
        channels: int = 3,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        crop_padding: int = 0,
        padding_mode: str = "reflect",
        flip: bool = False,
        cache_dir: Optional[str] = None,
        max_memory_gb: float = 8.0,
        num_workers: Optional[int] = None,
        skip_unreadable: bool = False,
    ) -> None:
        super().__init__(
            data_dir,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_size=0,  # held out by setup() below: an int or a fraction of train/
            seed=seed,
            download=False,
            device=device,
            split_seed=split_seed,
        )
        if val_size < 0 or (isinstance(val_size, float) and val_size >= 1):
            raise ValueError(f"val_size must be an int >= 0 or a fraction in [0, 1), got {val_size}")
        self.val_size = val_size
        self.decoder = ImageDecoder(channels, image_size, resize, center_crop)
        self._mean, self._std = check_statistics(mean, std, channels)
        self.augment = CropFlip(crop_padding, padding_mode, flip)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.max_memory_gb = max_memory_gb
        self.num_workers = _default_workers() if num_workers is None else num_workers
        self.skip_unreadable = skip_unreadable
        self._classes: Optional[List[str]] = None
        self._shape: Optional[Tuple[int, int, int]] = None
        self.streams: Dict[str, Samples] = {}  # filled instead of ``splits`` when streaming
        self.cache_hits: Dict[str, bool] = {}  # split -> loaded from the cache (for logs and tests)

    # -- what models need to know ---------------------------------------------------------------
    @property
    def classes(self) -> List[str]:  # type: ignore[override]
        if self._classes is None:
            folder = self._folder("train")
            classes = find_classes(folder)[0]
            if len(classes) < 2:
                raise DataMissingError(
                    "A second class folder",
                    folder,
                    f"It has only {classes[0]}/: a classifier needs at least 2 classes. " + _LAYOUT_HINT,
                    downloadable=False,
                )
            self._classes = classes
        return self._classes

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        if self.decoder.image_size is not None:
            return (self.decoder.channels, *self.decoder.image_size)
        if self._shape is None:  # cheap: the first training file that decodes, not the folder
            self._shape = self._first_shape(self._samples(self._folder("train")))
        return self._shape

    @property
    def mean(self) -> Tuple[float, ...]:
        return self.measured("mean", self._mean, " (or give data.mean)")

    @property
    def std(self) -> Tuple[float, ...]:
        return self.measured("std", self._std, " (or give data.std)")

    @property
    def streaming(self) -> bool:
        """Whether batches are decoded on the fly (the data did not fit in ``max_memory_gb``)."""
        return self.measured("streaming", bool(self.streams) if self.splits or self.streams else None)

    # -- reading --------------------------------------------------------------------------------
    def _folder(self, split: str, required: bool = True) -> Optional[Path]:
        folder = self.data_dir / split
        if folder.is_dir() and any(e.is_dir() for e in os.scandir(folder)):
            return folder
        if not required:
            return None
        raise DataMissingError(f"Image folder split '{split}'", folder, _LAYOUT_HINT, downloadable=False)

    def _samples(self, folder: Path) -> Samples:
        class_to_idx = {c: i for i, c in enumerate(self.classes)}
        unknown = set(find_classes(folder)[0]) - set(class_to_idx)
        if unknown:
            raise ValueError(f"{folder} has class folders {sorted(unknown)} that train/ does not have")
        samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        found = {label for _, label in samples}
        empty = [c for c in find_classes(folder)[0] if class_to_idx[c] not in found]
        if not samples or empty:
            raise DataMissingError(
                "Image files" + (f" of the class folder(s) {', '.join(empty)}" if samples else ""),
                folder,
                f"Supported extensions: {', '.join(IMG_EXTENSIONS)}. " + _LAYOUT_HINT,
                downloadable=False,
            )
        return samples

    def _cache_file(self, name: str, folder: Path, samples: Samples) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        where = json.dumps([str(folder.resolve()), self.decoder.options(), _CACHE_VERSION])
        listing = hashlib.sha256()
        for path, label in samples:
            st = os.stat(path)
            rel = os.path.relpath(path, folder)
            listing.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        stem = f"{folder.parent.name}-{name}-{hashlib.sha256(where.encode()).hexdigest()[:12]}"
        return self.cache_dir / f"{stem}-{listing.hexdigest()[:16]}.pt"

    def _decode_split(self, name: str, folder: Path, samples: Samples) -> TensorSplit:
        cache = self._cache_file(name, folder, samples)
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        if cache is not None and cache.is_file():
            try:
                data = torch.load(cache, map_location="cpu", weights_only=True)
                kept = data.get("kept", torch.arange(len(labels)))
                if torch.equal(data["labels"], labels[kept]):
                    self.cache_hits[name] = True
                    return TensorSplit(data["images"], labels[kept])
            except Exception as err:  # a truncated or foreign file: decode again
                log.warning("ignoring unreadable cache %s (%s)", cache, err)
        self.cache_hits[name] = False
        images, kept = decode_files(
            [p for p, _ in samples], self.decoder, self.num_workers, self.skip_unreadable
        )
        kept, labels = torch.tensor(kept), labels[kept]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            torch.save({"images": images, "labels": labels, "kept": kept}, tmp)
            os.replace(tmp, cache)  # atomic: other processes see the old state or the whole file
            stem = cache.name.rsplit("-", 1)[0] + "-"  # same folder and options, older listing
            for stale in cache.parent.iterdir():
                if stale != cache and stale.name.startswith(stem) and stale.suffix == ".pt":
                    stale.unlink(missing_ok=True)
        return TensorSplit(images, labels)

    def _val_count(self, n: int) -> int:
        k = round(self.val_size * n) if isinstance(self.val_size, float) else int(self.val_size)
        if k >= n:
            raise ValueError(f"val_size={self.val_size} must be smaller than the training set ({n})")
        return k

    def prepare_data(self) -> None:
        # Lightning calls this on one process per machine before ``setup`` on all of them: decode
        # and write the cache once, so that the other ranks read it instead of decoding too.
        if self.cache_dir is not None:
            self.setup()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits or self.streams:
            return
        folders = {
            "train": self._folder("train"),
            "val": self._folder("val", False),
            "test": self._folder("test"),
        }
        samples = {name: self._samples(f) for name, f in folders.items() if f is not None}
        shape = (self.decoder.channels, *self.decoder.image_size) if self.decoder.image_size else None
        if shape is None:
            shape = self._first_shape(samples["train"])
        self._shape = shape
        nbytes = sum(len(s) for s in samples.values()) * int(np.prod(shape))
        # Without val/: hold out the same seeded permutation as TensorDataModule.setup, in both
        # modes (in memory after leaving out unreadable files); val_size=0: validate on test/.
        if nbytes <= self.max_memory_gb * 2**30:
            data = {name: self._decode_split(name, folders[name], s) for name, s in samples.items()}
            held_out, kept = self._hold_out(len(data["train"])) if "val" not in data else ([], [])
            if held_out:
                train = data["train"]
                data["train"] = train.subset(torch.tensor(kept))
                data["val"] = train.subset(torch.tensor(held_out))
            self.splits = {name: data.get(name, data["test"]) for name in ("train", "val", "test")}
        else:
            log.info(
                "%s: %.1f GB decoded > max_memory_gb=%s, streaming with DataLoader workers",
                self.data_dir,
                nbytes / 2**30,
                self.max_memory_gb,
            )
            held_out, kept = self._hold_out(len(samples["train"])) if "val" not in samples else ([], [])
            if held_out:
                train = samples["train"]
                samples["train"] = [train[i] for i in kept]
                samples["val"] = [train[i] for i in held_out]
            self.streams = {name: samples.get(name, samples["test"]) for name in ("train", "val", "test")}
        if self._mean is None or self._std is None:
            mean, std = self._measure_statistics()
            log.info("%s: training images have mean %s, std %s", self.data_dir, mean, std)
            self._mean = self._mean or mean
            self._std = self._std or std

    def _first_shape(self, samples: Samples) -> Tuple[int, int, int]:
        """The files' own size, from the first that decodes (the others are named when decoded)."""
        for path, _ in samples:
            try:
                return tuple(self.decoder(path).shape)
            except Exception:
                continue
        return (self.decoder.channels, 1, 1)

    def _hold_out(self, n: int) -> Tuple[List[int], List[int]]:
        """Indices of the ``val_size`` training samples held out for validation, and of the rest."""
        k = self._val_count(n)
        if not k:
            return [], []
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        return perm[:k], perm[k:]

    def _measure_statistics(self) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        """Per-channel mean and std of the training images in [0, 1] (streaming: 2,000 of them)."""
        if self.splits:
            images = self.splits["train"].images
        else:
            train = self.streams["train"]
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.split_seed))[:2000]
            paths = [train[i][0] for i in pick.tolist()]
            images = decode_files(paths, self.decoder, self.num_workers, self.skip_unreadable)[0]
        # Exact, from per-channel histograms of the uint8 values: no float copy of the data.
        values = torch.arange(256, dtype=torch.float64) / 255
        mean, std = [], []
        for c in range(images.shape[1]):
            hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
            hist /= hist.sum()
            m = (hist * values).sum()
            mean.append(m)
            std.append(((hist * values.square()).sum() - m.square()).clamp(min=0).sqrt())
        mean, std = torch.stack(mean), torch.stack(std)
        return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())

    # -- loaders --------------------------------------------------------------------------------
    def train_transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        return self.augment(batch, generator)

    def make_loader(self, name: str, **options) -> EpochLoader:
        if not self.streams:
            return super().make_loader(name, **options)
        dataset = _FileDataset(self.streams[name], self.decoder)
        return StreamLoader(dataset, num_workers=self.num_workers, **options)
