"""Datamodules of the synthetic MNIST sets: fixed validation and test canvases, fresh training ones.

Generated images are uint8 like MNIST itself, so the fixed splits cost 1 byte a pixel and the
training path converts to float once, at the end. Randomness comes from one ``torch.Generator``:
the loader's, seeded per epoch, for fresh training canvases; a CPU generator seeded from the
config's ``split_seed`` for the fixed validation and test canvases.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from stn.ops._checks import check_int

from ..base import TensorDataModule, TensorSplit, check_statistics
from ..loaders import Batch, derive_seed, to_float
from ..mnist import load_mnist
from .canvas import DIGIT_SIZE, Composition, clutter, translate
from .distortions import DISTORTIONS, ELASTIC_ALPHA, ELASTIC_SIGMA, distort

__all__ = [
    "ClutteredMNISTDataModule",
    "DistortedMNISTDataModule",
    "SyntheticMNISTDataModule",
    "TranslatedMNISTDataModule",
]

_TEST_TAG, _VAL_TAG, _TRAIN_TAG = 1, 2, 3
_CHUNK = 4096


class SyntheticMNISTDataModule(TensorDataModule):
    """Shared machinery: fixed validation/test canvases, fresh or fixed training canvases.

    The validation and test canvases are generated once, on the CPU, from generators seeded by
    ``seed`` (different streams for each split), whatever the training device: the same images on
    every run (translated and cluttered canvases are integer copies, bit-identical on any machine
    with the same torch version; distorted ones go through float ``grid_sample``, where a
    different CPU instruction set could round a rare pixel differently). Training canvases are
    generated on the training device for each batch, from the loader's generator (seeded by
    ``seed`` and the epoch), unless ``fixed_train``: then the training split is generated once like
    the others and batches only convert to float.

    Args:
        data_dir: folder holding ``MNIST/raw``.
        fixed_train: one fixed set of training canvases instead of fresh ones every epoch.
        mean, std: per-channel normalization statistics of the canvases in [0, 1], for models
            that normalize; default: measured by :meth:`setup` on the fixed validation canvases
            (test canvases when ``val_size == 0``), so reading them before ``setup()`` raises.
        **kwargs: ``batch_size``, ``eval_batch_size``, ``val_size``, ``seed``, ``download``,
            ``device``, ``split_seed`` of :class:`~stn.data.base.TensorDataModule`.
    """

    classes = tuple(str(i) for i in range(10))
    has_boxes = True

    def __init__(
        self,
        data_dir: str,
        *,
        fixed_train: bool = False,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        **kwargs,
    ) -> None:
        super().__init__(data_dir, **kwargs)
        if not isinstance(fixed_train, bool):
            raise ValueError(f"fixed_train must be true or false, got {fixed_train!r}")
        self.fixed_train = fixed_train
        self._mean, self._std = check_statistics(mean, std, channels=1)

    # -- for subclasses ---------------------------------------------------------------------
    #: side of the square canvas
    canvas_size: int = DIGIT_SIZE

    def compose(
        self,
        digits: Tensor,
        generator: torch.Generator,
        sources: Optional[Tensor] = None,
        source_index: Optional[Tensor] = None,
    ) -> Composition:
        """Canvases for a batch of uint8 digits; ``sources``: clutter material (None: the batch)."""
        raise NotImplementedError

    # -- shape and statistics ---------------------------------------------------------------
    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return (1, self.canvas_size, self.canvas_size)

    @property
    def mean(self) -> Tuple[float, ...]:
        return self.measured("mean", self._mean, " (or give data.mean)")

    @property
    def std(self) -> Tuple[float, ...]:
        return self.measured("std", self._std, " (or give data.std)")

    def _measure_statistics(self) -> None:
        images = self.splits["val"].images.float().div_(255)
        mean = images.mean(dim=(0, 2, 3))
        std = images.std(dim=(0, 2, 3))
        if self._mean is None:
            self._mean = tuple(round(v, 4) for v in mean.tolist())
        if self._std is None:
            self._std = tuple(round(v, 4) for v in std.tolist())

    # -- splits -----------------------------------------------------------------------------
    def load(self) -> Tuple[TensorSplit, TensorSplit]:
        return load_mnist(self.data_dir, self.download)

    def generate(self, split: TensorSplit, tag: int) -> TensorSplit:
        """Canvases for a whole split, on the CPU, from a generator seeded by ``(split_seed, tag)``."""
        gen = torch.Generator().manual_seed(derive_seed(self.split_seed, 0x5EED, tag))
        images, boxes = [], []
        digits = split.images.cpu()
        for start in range(0, len(split), _CHUNK):
            chunk = digits[start : start + _CHUNK]
            index = torch.arange(start, start + len(chunk))
            out = self.compose(chunk, gen, sources=digits, source_index=index)
            images.append(out.image)
            boxes.append(out.box)
        return TensorSplit(torch.cat(images), split.labels.clone(), torch.cat(boxes))

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        super().setup(stage)  # raw digits: train / val (a seeded part of train, or test) / test
        raw = self.splits
        test = self.generate(raw["test"], _TEST_TAG)  # clutter for test digits cut from test digits
        val = test if raw["val"] is raw["test"] else self.generate(raw["val"], _VAL_TAG)
        train = self.generate(raw["train"], _TRAIN_TAG) if self.fixed_train else raw["train"]
        self.splits = {"train": train, "val": val, "test": test}
        if self._mean is None or self._std is None:
            self._measure_statistics()

    # -- transforms -------------------------------------------------------------------------
    def train_transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        if self.fixed_train:
            return to_float(batch, generator)
        out = self.compose(batch["image"], generator)
        return {"image": out.image.float().div_(255), "label": batch["label"], "box": out.box}

    def eval_transform(self, batch: Batch, generator: torch.Generator) -> Batch:
        return to_float(batch, generator)


class TranslatedMNISTDataModule(SyntheticMNISTDataModule):
    """Translated MNIST (Mnih et al. 2014): the 28x28 digit at a random place on a black canvas.

    Args:
        canvas_size: side of the square canvas (RAM: 60), at least 28.
        **kwargs: ``fixed_train``, ``mean``, ``std`` and the :class:`~stn.data.base.TensorDataModule`
            arguments (see :class:`SyntheticMNISTDataModule`).
    """

    def __init__(self, data_dir: str, *, canvas_size: int = 60, **kwargs) -> None:
        super().__init__(data_dir, **kwargs)
        self.canvas_size = check_int(canvas_size, "canvas_size", DIGIT_SIZE, " (the 28x28 digit must fit)")

    def compose(self, digits, generator, sources=None, source_index=None) -> Composition:
        return translate(digits, self.canvas_size, generator)


class ClutteredMNISTDataModule(SyntheticMNISTDataModule):
    """Cluttered translated MNIST (Mnih et al. 2014): translated digits plus pieces of other digits.

    Args:
        canvas_size: side of the square canvas (RAM: 60 or 100), at least 28.
        num_pieces: clutter pieces per canvas (RAM: 4 on 60x60, 8 on 100x100).
        piece_size: side of a piece, 1..28 (RAM: 8).
        **kwargs: as in :class:`TranslatedMNISTDataModule`.
    """

    def __init__(
        self, data_dir: str, *, canvas_size: int = 60, num_pieces: int = 4, piece_size: int = 8, **kwargs
    ) -> None:
        super().__init__(data_dir, **kwargs)
        self.canvas_size = check_int(canvas_size, "canvas_size", DIGIT_SIZE, " (the 28x28 digit must fit)")
        self.num_pieces = check_int(num_pieces, "num_pieces", 0)
        self.piece_size = check_int(piece_size, "piece_size", 1)
        if self.piece_size > DIGIT_SIZE:
            raise ValueError(f"piece_size={piece_size} must be <= 28 (pieces are cut from 28x28 digits)")

    def compose(self, digits, generator, sources=None, source_index=None) -> Composition:
        return clutter(
            digits, self.canvas_size, self.num_pieces, self.piece_size, generator, sources, source_index
        )


class DistortedMNISTDataModule(SyntheticMNISTDataModule):
    """Distorted MNIST (Jaderberg et al. 2015, sec. 4.1): rotated, RTS, projective or elastic.

    Args:
        distortion: ``"r"``, ``"rts"``, ``"p"`` or ``"e"`` (see :func:`distort`).
        canvas_size: side of the square canvas; None: the paper's (42 for ``rts``, 28 otherwise).
        max_angle, scale_range, corner_std: override the recipe's ranges (None: the paper's).
        elastic_alpha, elastic_sigma: elastic field in pixels (Simard et al. 2003: 34 and 4).
        **kwargs: as in :class:`TranslatedMNISTDataModule`.
    """

    def __init__(
        self,
        data_dir: str,
        *,
        distortion: str = "rts",
        canvas_size: Optional[int] = None,
        max_angle: Optional[float] = None,
        scale_range: Optional[Sequence[float]] = None,
        corner_std: Optional[float] = None,
        elastic_alpha: float = ELASTIC_ALPHA,
        elastic_sigma: float = ELASTIC_SIGMA,
        **kwargs,
    ) -> None:
        super().__init__(data_dir, **kwargs)
        if distortion not in DISTORTIONS:
            raise ValueError(f"distortion must be one of {sorted(DISTORTIONS)}, got {distortion!r}")
        self.distortion = distortion
        size = DISTORTIONS[distortion]["canvas"] if canvas_size is None else canvas_size
        self.canvas_size = check_int(size, "canvas_size", DIGIT_SIZE, " (the 28x28 digit must fit)")
        if max_angle is not None and not 0 <= max_angle <= 180:
            raise ValueError(f"max_angle must be in [0, 180] degrees, got {max_angle}")
        if scale_range is not None:
            scale_range = tuple(float(s) for s in scale_range)
            if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
                raise ValueError(
                    f"scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}"
                )
        if corner_std is not None and corner_std < 0:
            raise ValueError(f"corner_std must be >= 0 pixels, got {corner_std}")
        if elastic_alpha < 0:
            raise ValueError(f"elastic_alpha must be >= 0 pixels, got {elastic_alpha}")
        if elastic_sigma <= 0:
            raise ValueError(f"elastic_sigma must be > 0 pixels, got {elastic_sigma}")
        self.max_angle, self.scale_range, self.corner_std = max_angle, scale_range, corner_std
        self.elastic_alpha, self.elastic_sigma = float(elastic_alpha), float(elastic_sigma)

    def compose(self, digits, generator, sources=None, source_index=None) -> Composition:
        return distort(
            digits,
            self.distortion,
            generator,
            self.canvas_size,
            max_angle=self.max_angle,
            scale_range=self.scale_range,
            corner_std=self.corner_std,
            alpha=self.elastic_alpha,
            sigma=self.elastic_sigma,
        )
