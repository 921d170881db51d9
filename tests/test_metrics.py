"""BoxIoU: hand-computed cases, agreement with torchvision's box_iou, accumulation and reset."""

import pytest
import torch
from torchvision.ops import box_iou

from stn.metrics import BoxIoU, paired_box_iou

pytestmark = pytest.mark.usefixtures("single_thread")


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((0, 0, 4, 4), (0, 0, 4, 4), 1.0),  # identical
        ((0, 0, 2, 2), (2, 0, 4, 2), 0.0),  # touching edges: no area in common
        ((0, 0, 2, 2), (5, 5, 9, 9), 0.0),  # disjoint
        ((0, 0, 2, 2), (1, 0, 3, 2), 1 / 3),  # half of each overlaps: 2 / (4 + 4 - 2)
        ((0, 0, 4, 4), (1, 1, 3, 3), 4 / 16),  # nested
        ((0, 0, 4, 4), (2, 2, 6, 6), 4 / 28),  # quarter overlap
        ((10, 20, 30, 40), (10, 20, 30, 30), 0.5),  # half of the height
    ],
)
def test_paired_iou_hand_cases(a, b, expected):
    assert paired_box_iou(t(a), t(b)).item() == pytest.approx(expected)
    assert paired_box_iou(t(b), t(a)).item() == pytest.approx(expected)  # symmetric


def test_paired_iou_matches_torchvision_diagonal():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 20
    wh = torch.rand(50, 2, generator=g) * 10 + 0.5
    a = torch.cat([xy, xy + wh], 1)
    b = a + torch.randn(50, 4, generator=g) * 2
    b = torch.cat([torch.minimum(b[:, :2], b[:, 2:] - 0.1), b[:, 2:]], 1)
    torch.testing.assert_close(paired_box_iou(a, b), box_iou(a, b).diagonal())


def test_paired_iou_degenerate_and_shapes():
    z = t((3, 3, 3, 3))
    assert paired_box_iou(z, z).item() == 0.0  # empty union: 0, not NaN
    batched = paired_box_iou(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    assert batched.shape == (2, 3)
    with pytest.raises(ValueError, match="same shape"):
        paired_box_iou(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        paired_box_iou(torch.zeros(2, 5), torch.zeros(2, 5))


def test_box_iou_metric_accumulates_over_batches():
    metric = BoxIoU()
    metric.update(t((0, 0, 4, 4), (0, 0, 2, 2)), t((0, 0, 4, 4), (1, 0, 3, 2)))  # 1, 1/3
    metric.update(t((0, 0, 2, 2)), t((5, 5, 9, 9)))  # 0
    metric.update(t((10, 20, 30, 40)), t((10, 20, 30, 30)))  # 0.5: a hit (>=)
    mean, hits = metric.compute()
    assert mean.item() == pytest.approx((1 + 1 / 3 + 0 + 0.5) / 4)
    assert hits.item() == pytest.approx(2 / 4)
    metric.reset()
    metric.update(t((0, 0, 4, 4)), t((0, 0, 4, 4)))
    assert [v.item() for v in metric.compute()] == [1.0, 1.0]


def test_box_iou_metric_threshold_and_states_are_sums():
    single = BoxIoU(threshold=0.3)
    single.update(t((0, 0, 2, 2)), t((1, 0, 3, 2)))  # 1/3 >= 0.3
    assert single.compute()[1].item() == 1.0
    metric = BoxIoU(threshold=0.3)
    metric.update(t((0, 0, 2, 2)), t((1, 0, 3, 2)))
    # DDP reduction is a sum of the three states: merging two metrics gives the pooled result.
    other = BoxIoU(threshold=0.3)
    other.update(t((0, 0, 2, 2), (0, 0, 2, 2)), t((5, 5, 6, 6), (0, 0, 2, 2)))
    metric.merge_state(other)
    mean, hits = metric.compute()
    assert mean.item() == pytest.approx((1 / 3 + 0 + 1) / 3)
    assert hits.item() == pytest.approx(2 / 3)
    for name in ("iou_sum", "hits", "total"):
        assert metric._reductions[name] is not None
    with pytest.raises(ValueError, match="threshold"):
        BoxIoU(threshold=1.5)
