"""Localization metrics: how well predicted boxes match the true boxes of synthetic data.

Boxes are ``(x1, y1, x2, y2)`` in pixels of the image they refer to (the project's convention).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["BoxIoU", "GlimpseHits", "nearest_box_iou", "paired_box_iou"]


def paired_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of each box with its partner: ``box_iou(boxes1, boxes2).diagonal()`` in O(N).

    :func:`torchvision.ops.box_iou` compares every box with every other box (N x M); this is its
    elementwise counterpart with the same semantics (areas ``(x2 - x1) * (y2 - y1)``, boxes with
    ``x2 < x1`` are not reordered) except that a pair with an empty union gets 0 instead of NaN.

    Args:
        boxes1, boxes2: (..., 4) ``(x1, y1, x2, y2)``, same shape.

    Returns:
        (...) IoU in [0, 1] for well-formed boxes, in the dtype of the inputs (float).

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
        >>> b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]])
        >>> paired_box_iou(a, b)
        tensor([1.0000, 0.3333])
    """
    if not isinstance(boxes1, Tensor) or not isinstance(boxes2, Tensor):
        raise TypeError(f"boxes must be tensors, got {type(boxes1).__name__} and {type(boxes2).__name__}")
    if boxes1.shape != boxes2.shape or boxes1.dim() == 0 or boxes1.shape[-1] != 4:
        raise ValueError(
            f"boxes must have the same shape (..., 4), got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    a, b = boxes1.to(dtype), boxes2.to(dtype)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    return torch.where(
        union > 0, inter / union.where(union > 0, torch.ones_like(union)), torch.zeros_like(union)
    )


class BoxIoU(Metric):
    """Mean IoU between predicted and true boxes, and the fraction with IoU >= ``threshold``.

    ``compute()`` returns ``(mean_iou, hit_rate)``: logged as ``val/iou`` and ``val/iou50``. The
    states are sums (IoU sum, hits, count) reduced with ``sum``, so the result is exact under
    data parallelism and independent of how the samples were split into batches.

    Args:
        threshold: IoU at which a prediction counts as a hit (0.5: the usual "IoU50").

    Example:
        >>> metric = BoxIoU()
        >>> metric.update(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0]]))
        >>> [round(v.item(), 4) for v in metric.compute()]
        [0.3333, 0.0]
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold
        self.add_state("iou_sum", default=torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: ``preds`` and ``target`` are (B, 4) (or (..., 4)) pixel boxes."""
        iou = paired_box_iou(preds.detach(), target.detach()).reshape(-1)
        self.iou_sum += iou.sum().to(self.iou_sum.dtype)
        self.hits += (iou >= self.threshold).sum()
        self.total += iou.numel()

    def compute(self) -> Tuple[Tensor, Tensor]:
        """``(mean IoU, fraction with IoU >= threshold)``; both 0 before any update."""
        total = self.total.clamp(min=1).to(self.iou_sum.dtype)
        return self.iou_sum / total, self.hits.to(self.iou_sum.dtype) / total


def nearest_box_iou(pred: Tensor, true: Tensor) -> Tensor:
    """IoU of each predicted box with the true box it overlaps most.

    Args:
        pred: (B, K, 4) boxes, true: (B, T, 4) boxes, ``(x1, y1, x2, y2)`` in the same image's pixels.

    Returns:
        (B, K) the largest IoU of each predicted box over the T true boxes of its image.

    Example:
        >>> true = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [4.0, 0.0, 6.0, 2.0]]])
        >>> nearest_box_iou(torch.tensor([[[4.0, 0.0, 6.0, 2.0], [1.0, 0.0, 3.0, 2.0]]]), true)
        tensor([[1.0000, 0.3333]])
    """
    b, k, t = pred.shape[0], pred.shape[1], true.shape[1]
    pairs = paired_box_iou(pred[:, :, None].expand(b, k, t, 4), true[:, None].expand(b, k, t, 4))
    return pairs.amax(-1)


class GlimpseHits(Metric):
    """How well K glimpses per image land on the T objects of multi-object data (Megapixel MNIST).

    ``compute()`` returns ``(mean_iou, iou50, objects_seen)``: the mean over all glimpses of each
    glimpse's IoU with its nearest true box, the fraction of glimpses with that IoU >= 0.5, and
    the mean number per image of the marked objects (the digits of the label's class) that some
    glimpse looked at, meaning that a glimpse's box covers at least half of the object's box.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name, dtype in (("iou_sum", torch.float32), ("hits", torch.long), ("glimpses", torch.long)):
            self.add_state(name, default=torch.tensor(0, dtype=dtype), dist_reduce_fx="sum")
        self.add_state("seen", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, true: Tensor, marked: Tensor) -> None:
        """``pred`` (B, K, 4), ``true`` (B, T, 4) pixel boxes; ``marked`` (B, T) bool: objects to count."""
        pred, true = pred.detach().float(), true.detach().float()
        iou = nearest_box_iou(pred, true)
        self.iou_sum += iou.sum()
        self.hits += (iou >= 0.5).sum()
        self.glimpses += iou.numel()
        lt = torch.maximum(pred[:, :, None, :2], true[:, None, :, :2])
        rb = torch.minimum(pred[:, :, None, 2:], true[:, None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)  # (B, K, T)
        area = (true[..., 2:] - true[..., :2]).prod(-1).clamp(min=1e-6)  # (B, T)
        looked = (inter >= 0.5 * area[:, None]).any(1)  # (B, T)
        self.seen += (looked & marked).sum()
        self.images += pred.shape[0]

    def compute(self) -> Tuple[Tensor, Tensor, Tensor]:
        n = self.glimpses.clamp(min=1).float()
        return self.iou_sum / n, self.hits.float() / n, self.seen.float() / self.images.clamp(min=1).float()
