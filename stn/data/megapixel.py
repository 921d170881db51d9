"""Megapixel MNIST (Katharopoulos & Fleuret 2019, "Processing Megapixel Images with Deep
Attention-Sampling Models"; recipe of idiap/attention-sampling ``scripts/make_mnist.py``).

Recipe
------
A black ``canvas_size`` x ``canvas_size`` canvas (1500) holds ``num_digits`` (5) MNIST digits at
uniformly random integer positions where no two 28x28 digit images overlap: ``num_label_digits``
(3) of the label's class (uniform over 0-9) and the others of any other classes (drawn with
replacement from the digits of those classes). Then ``num_noise`` (50) noise patches are pasted
over whatever lies under them, digits included, the whole 28x28 patch, black pixels too (as the
reference does), later patches over earlier ones. Each patch is one of ``noise_patterns`` (50)
patterns made once per split: the union of two straight lines from a corner of the patch (slopes
``tan(u * 0.4 pi)``, one line mirrored left-right with probability 0.44, the reference's two
1/3 flips of the same axis), each ink pixel of intensity uniform in [0.8, 1.0]. Noise patches
sit at top-left corners uniform in ``[28, canvas_size - 29]``, as in the reference. Digits come
from the MNIST split of the set: training (and validation) canvases from MNIST training digits,
test canvases from MNIST test digits. Defaults: 5000 training canvases (``val_size`` of them held
out for validation) and 1000 test canvases, all fixed by ``split_seed``.

True boxes ``batch["boxes"]`` (B, num_digits, 4) are tight around each digit's ink (computed from
the digit image before any noise is pasted, like the cluttered set's), in canvas pixels
``(x1, y1, x2, y2)``; ``batch["digit_labels"]`` (B, num_digits) are their classes, the label's
class first.

Memory
------
5000 canvases of 1500x1500 are 11 GB, so nothing is stored at full resolution: a split is a
:class:`CanvasSpecs` (per canvas the digit indices, digit positions, noise positions and noise
pattern indices: 1.4 kB) plus the MNIST digits it draws from, and each batch is rendered
on the device where the loader lives (:meth:`CanvasSpecs.batch`), so rendering memory is
proportional to the batch size. A render is exact integer copies into a uint8 canvas, the same
on every device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from stn.ops._checks import check_int

from .base import TensorDataModule
from .loaders import Batch, derive_seed
from .mnist import load_mnist
from .split import TensorSplit
from .synthetic import tight_boxes

__all__ = ["CanvasSpecs", "MegapixelMNISTDataModule", "noise_patterns", "sample_canvases"]

DIGIT = 28
_TRAIN_TAG, _TEST_TAG = 11, 12
_MAX_ROUNDS = 1000


def noise_patterns(num: int, generator: torch.Generator) -> Tensor:
    """``num`` 28x28 uint8 noise patterns: two straight lines each, ink intensity in [0.8, 1.0].

    Line ``i`` starts at the top-left corner with slope ``t = tan(u * 0.4 pi)`` (u uniform) and
    runs to the patch edge; pattern ``i`` is line ``i`` united with line ``perm(i)`` (mirrored
    left-right with probability 0.44).

    Returns:
        (num, 28, 28) uint8 (ink ``floor(255 * v)`` with v uniform in [0.8, 1.0], background 0).
    """
    slope = torch.tan(torch.rand(num, generator=generator, dtype=torch.float64) * torch.pi / 2.5)
    extent = torch.minimum(torch.full_like(slope, 27.49), 27.49 / slope)
    steps = torch.linspace(0, 1, 2 * DIGIT, dtype=torch.float64)
    rows = (extent[:, None] * steps).round().long()  # (num, 56)
    cols = (slope[:, None] * extent[:, None] * steps).round().long().clamp(max=DIGIT - 1)
    lines = torch.zeros(num, DIGIT, DIGIT, dtype=torch.bool)
    lines[torch.arange(num)[:, None], rows, cols] = True
    other = lines[torch.randperm(num, generator=generator)]
    mirror = torch.rand(num, generator=generator) < 0.44
    other = torch.where(mirror[:, None, None], other.flip(-1), other)
    value = torch.rand(num, DIGIT, DIGIT, generator=generator) * 0.2 + 0.8
    return ((lines | other) * (value * 255).floor()).to(torch.uint8)


@dataclass
class CanvasSpecs:
    """What defines each canvas of a split; :meth:`batch` renders canvases from it.

    Attributes:
        digits: (D, 1, 28, 28) uint8 MNIST digits the canvases draw from.
        digit_boxes: (D, 4) float32 tight ink box of each digit in its 28x28 image.
        noise: (P, 28, 28) uint8 noise patterns.
        index: (N, G) long digit indices per canvas (the label's class first).
        position: (N, G, 2) long top-left ``(x, y)`` of each digit image on the canvas.
        digit_labels: (N, G) long classes of the digits.
        labels: (N,) long canvas labels.
        noise_index: (N, M) long pattern of each noise patch.
        noise_position: (N, M, 2) long top-left ``(x, y)`` of each noise patch.
        canvas_size: side of the square canvas.
    """

    digits: Tensor
    digit_boxes: Tensor
    noise: Tensor
    index: Tensor
    position: Tensor
    digit_labels: Tensor
    labels: Tensor
    noise_index: Tensor
    noise_position: Tensor
    canvas_size: int

    #: no single box per canvas (``TensorDataModule.has_boxes``): see ``batch()["boxes"]``
    boxes = None
    _PER_CANVAS = ("index", "position", "digit_labels", "labels", "noise_index", "noise_position")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def _replace(self, fn) -> "CanvasSpecs":
        fields = {k: fn(k, getattr(self, k)) for k in self.__dataclass_fields__ if k != "canvas_size"}
        return CanvasSpecs(**fields, canvas_size=self.canvas_size)

    def to(self, device) -> "CanvasSpecs":
        return self._replace(lambda _, t: t.to(device, non_blocking=True))

    def subset(self, index: Tensor) -> "CanvasSpecs":
        return self._replace(lambda k, t: t[index] if k in self._PER_CANVAS else t)

    def batch(self, index: Tensor) -> Batch:
        """Render canvases ``index`` (B,) on the specs' device.

        Returns:
            ``"image"`` (B, 1, S, S) uint8, ``"label"`` (B,), ``"boxes"`` (B, G, 4) float32 true
            pixel boxes, ``"digit_labels"`` (B, G).
        """
        s, dev = self.canvas_size, self.labels.device
        index = index.to(dev)
        pos, npos = self.position[index], self.noise_position[index]
        b, g = pos.shape[:2]
        m = npos.shape[1]
        ar = torch.arange(DIGIT, device=dev)
        offsets = (ar[:, None] * s + ar).reshape(-1)  # (784,) flat offsets of a 28x28 patch in a canvas

        def flat(p: Tensor) -> Tensor:  # (B, K, 2) top-left corners -> (B, K * 784) flat indices
            rows = torch.arange(b, device=dev)[:, None] * (s * s)
            return (rows + p[..., 1] * s + p[..., 0])[..., None].add(offsets).reshape(b, -1)

        # One uint8 canvas for the whole batch plus a spare last pixel that absorbs discarded writes.
        canvas = torch.zeros(b * s * s + 1, dtype=torch.uint8, device=dev)
        canvas[flat(pos).reshape(-1)] = self.digits[self.index[index]].reshape(-1)  # digits never overlap
        if m:
            # Where patches overlap the last one wins (a sequential paste): sort the patch pixels by
            # (pixel, patch) and write only each pixel's last, so no index is written twice and the
            # result does not depend on the order of a scatter.
            where = flat(npos).reshape(-1)
            values = self.noise[self.noise_index[index]].reshape(-1)
            patch = torch.arange(m, device=dev).repeat_interleave(DIGIT * DIGIT).repeat(b)
            order = torch.argsort(where * m + patch)
            where, values = where[order], values[order]
            last = torch.ones_like(where, dtype=torch.bool)
            last[:-1] = where[1:] != where[:-1]
            canvas[torch.where(last, where, b * s * s)] = values
        image = canvas[:-1].view(b, 1, s, s)
        boxes = self.digit_boxes[self.index[index]] + pos.repeat(1, 1, 2).to(torch.float32)
        return {
            "image": image,
            "label": self.labels[index],
            "boxes": boxes,
            "digit_labels": self.digit_labels[index],
        }


def _positions(n: int, count: int, size: int, generator: torch.Generator) -> Tensor:
    """(n, count, 2) top-left corners of 28x28 squares in a ``size`` canvas, no two overlapping.

    Square k is drawn uniformly until it overlaps none of squares 0..k-1 (the reference's
    rejection), for all canvases at once.
    """
    out = torch.zeros(n, count, 2, dtype=torch.long)
    for k in range(count):
        todo = torch.ones(n, dtype=torch.bool)
        for _ in range(_MAX_ROUNDS):
            cand = torch.randint(0, size - DIGIT + 1, (n, 2), generator=generator)
            near = (cand[:, None] - out[:, :k]).abs() < DIGIT  # (n, k, 2)
            ok = ~(near.all(-1).any(-1)) & todo
            out[ok, k] = cand[ok]
            todo &= ~ok
            if not todo.any():
                break
        else:
            raise ValueError(
                f"canvas_size={size} leaves too little room for {count} non-overlapping 28x28 digits "
                f"(no free place found in {_MAX_ROUNDS} draws): raise canvas_size or lower num_digits"
            )
    return out


def sample_canvases(
    digits: TensorSplit,
    n: int,
    canvas_size: int,
    generator: torch.Generator,
    num_digits: int = 5,
    num_label_digits: int = 3,
    num_noise: int = 50,
    num_patterns: int = 50,
) -> CanvasSpecs:
    """Draw the specs of ``n`` canvases from an MNIST split (see the module docstring).

    Args:
        digits: the MNIST split (uint8 (D, 1, 28, 28) images, labels (D,)) digits are drawn from.
        n: canvases; canvas_size: their side.
        generator: CPU generator, the only source of randomness.
        num_digits, num_label_digits: digits per canvas, and how many of them are of the label's class.
        num_noise, num_patterns: noise patches per canvas, and patterns in the split's bank.

    Returns:
        :class:`CanvasSpecs` on the CPU.
    """
    labels_of = digits.labels.long()
    label = torch.randint(0, 10, (n,), generator=generator)
    # Digits of a class: sort by class, then draw uniform offsets into each class's range.
    order = torch.argsort(labels_of, stable=True)
    counts = torch.bincount(labels_of, minlength=10)
    if (counts == 0).any():
        raise ValueError(
            f"the MNIST split lacks digits of classes {torch.nonzero(counts == 0).flatten().tolist()}"
        )
    start = torch.cumsum(counts, 0) - counts
    u = torch.rand(n, num_label_digits, generator=generator)
    same = order[start[label, None] + (u * counts[label, None]).long().clamp(max=counts[label, None] - 1)]
    # Other classes: uniform over all digits not of the label's class.
    not_label = counts.sum() - counts[label]  # (n,)
    v = (torch.rand(n, num_digits - num_label_digits, generator=generator) * not_label[:, None]).long()
    v = torch.minimum(v, not_label[:, None] - 1)
    # the v-th digit outside the label's class: skip the label's class range in the sorted order
    v = torch.where(v >= start[label, None], v + counts[label, None], v)
    others = order[v]
    index = torch.cat([same, others], 1)
    position = _positions(n, num_digits, canvas_size, generator)
    bank = noise_patterns(num_patterns, generator)
    noise_index = torch.randint(0, num_patterns, (n, num_noise), generator=generator)
    noise_position = torch.randint(DIGIT, canvas_size - DIGIT, (n, num_noise, 2), generator=generator)
    return CanvasSpecs(
        digits=digits.images,
        digit_boxes=tight_boxes(digits.images),
        noise=bank,
        index=index,
        position=position,
        digit_labels=labels_of[index],
        labels=label,
        noise_index=noise_index,
        noise_position=noise_position,
        canvas_size=canvas_size,
    )


class MegapixelMNISTDataModule(TensorDataModule):
    """Megapixel MNIST: 5 digits and 50 noise patches on a large black canvas; the label is the
    class of the 3 digits that share it (see the module docstring for the recipe).

    Batches: ``"image"`` (B, 1, S, S) float in [0, 1], ``"label"`` (B,), ``"boxes"`` (B, G, 4)
    true pixel boxes ``(x1, y1, x2, y2)`` of the G digits, ``"digit_labels"`` (B, G). Every split
    is fixed by ``split_seed`` (the same canvases every epoch and run), as in the reference.

    Args:
        data_dir: folder holding ``MNIST/raw``.
        canvas_size: side of the square canvas (reference: 1500); at least 57 with noise.
        num_digits, num_label_digits: digits per canvas (5) and how many share the label (3); more
            than half of them must, so the label is the majority class.
        num_noise: noise patches per canvas (50); noise_patterns: patterns per split (50).
        train_size, test_size: canvases (5000 and 1000); ``val_size`` of the training ones are
            held out for validation.
        mean, std: normalization statistics of the canvases in [0, 1]; default: measured on the
            first 32 validation canvases (test canvases when ``val_size == 0``).
        batch_size, eval_batch_size, val_size, seed, download, device, split_seed: as in
            :class:`~stn.data.base.TensorDataModule`.
    """

    classes = tuple(str(i) for i in range(10))

    def __init__(
        self,
        data_dir: str,
        canvas_size: int = 1500,
        num_digits: int = 5,
        num_label_digits: int = 3,
        num_noise: int = 50,
        noise_patterns: int = 50,
        train_size: int = 5000,
        test_size: int = 1000,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        batch_size: int = 16,
        eval_batch_size: Optional[int] = None,
        val_size: int = 500,
        seed: int = 0,
        download: bool = True,
        device: str = "auto",
        split_seed: int = 0,
    ) -> None:
        super().__init__(
            data_dir,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_size=val_size,
            seed=seed,
            download=download,
            device=device,
            split_seed=split_seed,
        )
        self.num_digits = check_int(num_digits, "num_digits", 1)
        self.num_label_digits = check_int(num_label_digits, "num_label_digits", 1)
        if not num_digits / 2 < num_label_digits <= num_digits:
            raise ValueError(
                f"num_label_digits={num_label_digits} must be more than half of num_digits={num_digits} "
                "(so the label's class is the majority) and at most num_digits"
            )
        self.num_noise = check_int(num_noise, "num_noise", 0)
        self.noise_patterns = check_int(noise_patterns, "noise_patterns", 1)
        low = 2 * DIGIT + 1 if num_noise else DIGIT
        self.canvas_size = check_int(canvas_size, "canvas_size", low)
        self.train_size = check_int(train_size, "train_size", 1)
        self.test_size = check_int(test_size, "test_size", 1)
        for name, value in (("mean", mean), ("std", std)):
            if value is not None and len(value) != 1:
                raise ValueError(f"{name} must have one value (grey canvases), got {list(value)}")
        if std is not None and min(std) <= 0:
            raise ValueError(f"std must be positive, got {list(std)}")
        self._mean = None if mean is None else tuple(float(v) for v in mean)
        self._std = None if std is None else tuple(float(v) for v in std)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return (1, self.canvas_size, self.canvas_size)

    @property
    def mean(self) -> Tuple[float, ...]:
        if self._mean is None:
            self._stats()
        return self._mean

    @property
    def std(self) -> Tuple[float, ...]:
        if self._std is None:
            self._stats()
        return self._std

    def _stats(self, n: int = 32, chunk: int = 4) -> None:
        self.setup()
        specs = self.splits["val"]
        total = total_sq = 0.0
        count = 0
        for start in range(0, min(n, len(specs)), chunk):
            x = specs.batch(torch.arange(start, min(start + chunk, n, len(specs))))["image"].double() / 255
            total, total_sq, count = (
                total + x.sum().item(),
                total_sq + x.square().sum().item(),
                count + x.numel(),
            )
        mean = total / count
        std = max(total_sq / count - mean * mean, 0.0) ** 0.5
        if self._mean is None:
            self._mean = (round(mean, 4),)
        if self._std is None:
            self._std = (round(std, 4),)

    def load(self) -> Tuple[CanvasSpecs, CanvasSpecs]:
        train, test = load_mnist(self.data_dir, self.download)
        out = []
        for split, n, tag in ((train, self.train_size, _TRAIN_TAG), (test, self.test_size, _TEST_TAG)):
            gen = torch.Generator().manual_seed(derive_seed(self.split_seed, 0x3E6A, tag))
            out.append(
                sample_canvases(
                    split,
                    n,
                    self.canvas_size,
                    gen,
                    self.num_digits,
                    self.num_label_digits,
                    self.num_noise,
                    self.noise_patterns,
                )
            )
        return out[0], out[1]
