"""Large-image models: the score-map glimpse model and the strided CNN baselines; the multi-object
glimpse metric."""

from __future__ import annotations

import pytest
import torch

from stn import ops
from stn.metrics import GlimpseHits, nearest_box_iou
from stn.models import ScoreMap, StridedCNN, TopKGlimpseModel
from stn.models.common import low_res_view

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 300


def canvas(squares, size=SIZE, b=1):
    """(b, 1, size, size) black canvases with bright 20x20 squares at top-left corners ``squares``."""
    x = torch.zeros(b, 1, size, size)
    for cx, cy in squares:
        x[:, :, cy : cy + 20, cx : cx + 20] = 1.0
    return x


def ink_detector(model: TopKGlimpseModel) -> None:
    """Make the score map respond to ink: positive first-layer weights, score = sum of channels."""
    with torch.no_grad():
        for m in model.localizer.convs:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.fill_(0.1)
                m.bias.zero_()
        model.localizer.score.weight.fill_(1.0)
        model.localizer.score.bias.zero_()


def test_low_res_view_shrinks_with_antialiasing():
    x = torch.rand(2, 1, 150, 100)
    v = low_res_view(x, 0.12)
    assert v.shape == (2, 1, 18, 12)
    torch.testing.assert_close(v.mean(), x.mean(), atol=0.02, rtol=0)  # an average, not a sampling
    assert low_res_view(x, 1.0) is x


def test_topk_model_shapes_and_boxes_on_the_ink():
    model = TopKGlimpseModel(num_glimpses=3, image_size=(SIZE, SIZE)).eval()
    ink_detector(model)
    squares = [(40, 60), (200, 100), (120, 240)]
    out = model(canvas(squares, b=2))
    assert out["logits"].shape == (2, 10)
    assert out["boxes"].shape == (2, 3, 4) and out["glimpses"].shape == (2, 3, 1, 32, 32)
    assert out["weights"].shape == (2, 3) and torch.allclose(out["weights"].sum(1), torch.ones(2))
    assert out["scores"].shape == (2, 18, 18)  # 300 * 0.12 = 36, one 2x2 pool
    # every square holds a box centre within a cell (16.7 px) of its own centre; boxes are 32 px
    centres = (out["boxes"][0, :, :2] + out["boxes"][0, :, 2:]) / 2
    for cx, cy in squares:
        d = (centres - torch.tensor([cx + 10.0, cy + 10.0])).abs().amax(1)
        assert d.min() <= 300 / 18, (cx, cy, centres)
    torch.testing.assert_close(out["boxes"][..., 2:] - out["boxes"][..., :2], torch.full((2, 3, 2), 32.0))
    # the glimpses are of the ink at full resolution
    assert (out["glimpses"].amax((2, 3, 4)) == 1).all()


def test_topk_seeds_are_distinct_local_maxima_and_exploration_is_training_only():
    model = TopKGlimpseModel(num_glimpses=4, image_size=(SIZE, SIZE), explore=1.0)
    scores = torch.zeros(1, 18, 18)
    scores[0, 5, 5], scores[0, 5, 6], scores[0, 10, 10] = 3.0, 2.9, 2.0  # (5, 6) is no local maximum
    model.eval()
    cells = model.select(scores)[0].tolist()
    assert cells[:2] == [5 * 18 + 5, 10 * 18 + 10] and 5 * 18 + 6 not in cells[:3]
    assert len(set(cells)) == 4
    assert torch.equal(model.select(scores), model.select(scores))
    model.train()
    draws = {tuple(model.select(scores)[0].tolist()) for _ in range(10)}
    assert len(draws) > 1  # Gumbel top-k: a sample
    model.explore = 0.0
    assert torch.equal(model.select(scores), model.select(scores))  # the default: plain top-k
    with pytest.raises(ValueError, match="num_glimpses=400"):
        TopKGlimpseModel(num_glimpses=400, image_size=(SIZE, SIZE)).eval()(canvas([]))


def test_topk_gradients_reach_the_score_map_and_the_box_offsets():
    model = TopKGlimpseModel(num_glimpses=3, image_size=(SIZE, SIZE)).eval()
    ink_detector(model)
    out = model(canvas([(40, 60), (200, 100)], b=2) * torch.tensor([1.0, 0.5]).view(2, 1, 1, 1))
    out["logits"][:, 3].sum().backward()
    loc = model.localizer
    assert loc.score.weight.grad.abs().sum() > 0  # through the attention weights
    assert loc.offset.weight.grad.abs().sum() > 0  # through the glimpses' box gradient


@pytest.mark.parametrize("fill, antialias", [(0.0, True), (0.3, True), (0.0, False)])
def test_topk_glimpses_from_patches_equal_glimpses_of_the_whole_image(fill, antialias):
    torch.manual_seed(0)
    model = TopKGlimpseModel(image_size=(SIZE, SIZE), fill=fill, antialias=antialias)
    images = torch.rand(2, 1, SIZE, SIZE)
    # boxes of 1/2x to 2x box_size (the offsets' range), some across the image edge or outside it
    centre = torch.rand(2, 10, 2) * (SIZE + 40) - 20
    half = (torch.rand(2, 10, 1) * 1.5 + 0.5) * model.box_size / 2
    half[:, :4] = model.box_size  # the largest boxes, whose filter taps reach past them
    centre[:, :4] = torch.tensor([100.9, 150.5])
    boxes = torch.cat([centre - half, centre + half], -1).requires_grad_(True)
    patched = model.sample(images, boxes)
    (grad,) = torch.autograd.grad(patched.square().sum(), boxes)
    whole = ops.glimpse(images, boxes, model.glimpse_size, antialias=antialias, fill=fill)
    (expected,) = torch.autograd.grad(whole.square().sum(), boxes)
    assert patched.shape == whole.shape == (2, 10, 1, 32, 32)
    # the plain grid path rounds samples by 2 eps of the normalized grid: image-size dependent
    atol = 1e-4 if antialias else 2e-4
    assert torch.allclose(patched, whole, atol=atol) and torch.allclose(grad, expected, rtol=1e-3, atol=1e-2)
    assert expected.abs().max() > 10  # the comparison is not between zeros


def test_recomputing_the_localizer_image_by_image_changes_nothing():
    torch.manual_seed(0)
    images = canvas([(40, 60), (200, 100), (120, 230)], b=3) * torch.rand(3, 1, 1, 1)
    grads, outs = [], []
    for recompute in (False, True):
        torch.manual_seed(1)
        model = TopKGlimpseModel(num_glimpses=3, image_size=(SIZE, SIZE), recompute_localizer=recompute)
        out = model(images)
        out["logits"].logsumexp(-1).sum().backward()
        outs.append(out["logits"].detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.localizer.parameters()]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_topk_arguments_are_checked():
    for kw, name in (
        ({"nms_window": 2}, "nms_window"),
        ({"box_size": 0}, "box_size"),
        ({"explore": -1}, "explore"),
    ):
        with pytest.raises(ValueError, match=name):
            TopKGlimpseModel(image_size=(SIZE, SIZE), **kw)
    with pytest.raises(ValueError, match="view_scale"):
        ScoreMap(image_size=(SIZE, SIZE), view_scale=1.5)
    with pytest.raises(ValueError, match="too small"):
        ScoreMap(image_size=(20, 20), view_scale=0.1, channels=(4, 4, 4))


def test_flat_cells_are_picked_last():
    """A score map that ranks black background first (negative score head): its glimpses still
    go to the squares while there are enough cells with contrast (min_contrast, the default),
    and to the background without the rule (min_contrast=None)."""
    squares = [(40, 60), (200, 100), (120, 240)]
    images = canvas(squares)
    picks = {}
    for rule in (0.0, None):
        model = TopKGlimpseModel(num_glimpses=3, image_size=(SIZE, SIZE), min_contrast=rule).eval()
        ink_detector(model)
        with torch.no_grad():
            model.localizer.score.weight.fill_(-1.0)
            picks[rule] = model(images)["glimpses"].amax(dim=(2, 3, 4))[0]  # (K,) brightest pixel seen
    assert (picks[0.0] > 0.5).all() and (picks[None] == 0).all()
    view = low_res_view(images, 0.12)
    flat = TopKGlimpseModel(image_size=(SIZE, SIZE)).flat_cells(view, (18, 18))[0]
    assert flat.shape == (18, 18) and flat.sum() > 300 and not flat.all()
    for cx, cy in squares:  # the cell of a square's centre has contrast
        assert not flat[int((cy + 10) * 18 / SIZE), int((cx + 10) * 18 / SIZE)]
    for bad in (-0.1, True, "0"):
        with pytest.raises(ValueError, match="min_contrast"):
            TopKGlimpseModel(image_size=(SIZE, SIZE), min_contrast=bad)


def test_ink_prior_ranks_the_ink_first_and_is_learned():
    """A score map whose own scores prefer black background (negative score head): with the ink
    prior the cells of the squares win; without it they do not. The prior's weight is a parameter
    (it gets a gradient); ink_prior=0 adds no parameter and changes nothing."""
    torch.manual_seed(0)
    squares = [(40, 60), (200, 100), (120, 240)]
    view = low_res_view(canvas(squares), 0.12)
    plain = ScoreMap(image_size=(SIZE, SIZE))
    prior = ScoreMap(image_size=(SIZE, SIZE), ink_prior=2.0)
    prior.load_state_dict({**plain.state_dict(), "ink_prior": prior.ink_prior.detach()})
    with torch.no_grad():  # brighter input, lower score: the bad start the prior is for
        for m in (plain, prior):
            m.convs[0].weight.fill_(0.1)
            m.convs[0].bias.zero_()
            m.score.weight.fill_(-1.0)
    cell = SIZE / 18
    on_square = torch.zeros(18, 18, dtype=torch.bool)
    for cx, cy in squares:
        first, last = (int(cx // cell), int(cy // cell)), (int((cx + 20) // cell), int((cy + 20) // cell))
        on_square[first[1] : last[1] + 1, first[0] : last[0] + 1] = True
    top = [s.flatten().topk(3).indices for s in (plain(view)[0][0], prior(view)[0][0])]
    assert not on_square.flatten()[top[0]].any() and on_square.flatten()[top[1]].all()
    prior(view)[0].max().backward()
    assert prior.ink_prior.grad is not None and prior.ink_prior.grad != 0
    assert sum(p.numel() for p in prior.parameters()) == sum(p.numel() for p in plain.parameters()) + 1
    assert ScoreMap(image_size=(SIZE, SIZE), ink_prior=0).ink_prior is None
    for bad in (-1.0, True, "1"):
        with pytest.raises(ValueError, match="ink_prior"):
            ScoreMap(image_size=(SIZE, SIZE), ink_prior=bad)


def test_strided_cnn_full_and_low_resolution_have_the_same_budget():
    full = StridedCNN(image_size=(SIZE, SIZE))
    low = StridedCNN(image_size=(SIZE, SIZE), view_scale=0.12, stem_stride=1)
    n_full, n_low = (sum(p.numel() for p in m.parameters()) for m in (full, low))
    assert abs(n_full - n_low) / n_full < 0.01
    x = torch.rand(2, 1, SIZE, SIZE)
    assert full(x)["logits"].shape == low(x)["logits"].shape == (2, 10)
    assert full.localization_parameters() == []
    with pytest.raises(ValueError, match="view_scale"):
        StridedCNN(view_scale=0)


def test_glimpse_hits_nearest_iou_and_label_digits_seen():
    true = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [40.0, 0.0, 50.0, 10.0]]])
    pred = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [18.0, 0.0, 28.0, 10.0], [100.0, 100.0, 110.0, 110.0]]])
    torch.testing.assert_close(nearest_box_iou(pred, true), torch.tensor([[1.0, 8 / 12, 0.0]]))
    metric = GlimpseHits()
    metric.update(pred, true, torch.tensor([[True, True, True]]))
    mean_iou, iou50, seen = metric.compute()
    torch.testing.assert_close(mean_iou, torch.tensor((1 + 8 / 12) / 3))
    torch.testing.assert_close(iou50, torch.tensor(2 / 3))
    assert seen == 2  # the first two digits are covered (100% and 80%), the third not at all
    metric.update(pred, true, torch.tensor([[False, True, True]]))  # an image where digit 0 is not marked
    assert metric.compute()[2] == 1.5
