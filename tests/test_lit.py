"""stn.lit.LitClassifier: the loss terms and their argument checks."""

from __future__ import annotations

import functools

import pytest
import torch

from stn.lit import LitClassifier, edge_intensity
from stn.models import AttentionModel, BoxHead, CNNModel

MNIST = dict(in_channels=1, num_classes=10, image_size=(28, 28), mean=(0.1307,), std=(0.3081,))


def module(**kwargs) -> LitClassifier:
    torch.manual_seed(0)
    head = functools.partial(BoxHead, min_scale=0.2, max_scale=1.0, init_scale=0.6)
    model = AttentionModel(box_head=head, glimpse_size=(14, 14), **MNIST)
    return LitClassifier(model, 10, optimizer=functools.partial(torch.optim.Adam, lr=1e-2), **kwargs)


def batch(b=8):
    g = torch.Generator().manual_seed(1)
    return {"image": torch.rand(b, 1, 28, 28, generator=g), "label": torch.arange(b) % 10}


def test_box_area_penalty_adds_mean_area_fraction():
    data = batch()
    plain, _ = module()._shared_step(data)
    penalized, out = module(box_area_weight=0.5)._shared_step(data, train=True)
    wh = out["boxes"][:, 2:] - out["boxes"][:, :2]
    area = (wh[:, 0] * wh[:, 1] / (28 * 28)).mean()
    assert area.item() == pytest.approx(0.36, rel=1e-4)  # init_scale 0.6 squared
    torch.testing.assert_close(penalized, plain + 0.5 * area)


def test_box_area_penalty_stays_out_of_evaluation_losses():
    data = batch()
    plain, _ = module()._shared_step(data)
    evaluated, _ = module(box_area_weight=0.5)._shared_step(data)
    torch.testing.assert_close(evaluated, plain)


def test_edge_intensity_is_the_mean_of_the_outer_ring():
    g = torch.zeros(2, 3, 1, 4, 5)
    g[0, 0, 0, 0, 1] = 14.0  # on the ring: 14 of the 4x5 glimpse's pixels
    g[1, 2, 0, 1:3, 1:4] = 99.0  # inside: not counted
    g[1, 1, 0, :, 0] = 1.0  # the left column, 4 ring pixels
    edge = edge_intensity(g)
    assert edge.shape == (2, 3)
    torch.testing.assert_close(edge, torch.tensor([[1.0, 0.0, 0.0], [0.0, 4 / 14, 0.0]]))
    # one row or column: every pixel is on the ring
    torch.testing.assert_close(edge_intensity(torch.arange(3.0).view(1, 1, 3)), torch.tensor(1.0))


def test_box_edge_penalty_adds_the_mean_edge_intensity_in_training_only():
    data = batch()
    plain, _ = module()._shared_step(data)
    penalized, out = module(box_edge_weight=0.5)._shared_step(data, train=True)
    evaluated, _ = module(box_edge_weight=0.5)._shared_step(data)
    edge = edge_intensity(out["glimpses"]).mean()
    assert edge.item() > 0.1  # random images: the edges see something
    torch.testing.assert_close(penalized, plain + 0.5 * edge)
    torch.testing.assert_close(evaluated, plain)


def test_box_edge_penalty_moves_an_edge_off_a_bright_line():
    # a black image with one bright column under the initial box's right edge (x2 = 22.4)
    images = torch.zeros(8, 1, 28, 28)
    images[..., 22] = 1.0
    lit = module(box_edge_weight=50.0)
    opt = torch.optim.Adam(lit.model.localization_parameters(), lr=0.05)
    data = {"image": images, "label": torch.arange(8) % 10}
    edges = []
    for _ in range(30):
        loss, out = lit._shared_step(data, train=True)
        edges.append(edge_intensity(out["glimpses"]).mean().item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert edges[0] > 0.05
    assert edges[-1] < 0.2 * edges[0]


def test_box_edge_penalty_without_glimpses_is_a_clear_error():
    model = CNNModel(**MNIST)
    with pytest.raises(ValueError, match="box_edge_weight"):
        LitClassifier(model, 10, optimizer=torch.optim.Adam, box_edge_weight=1.0)


def test_box_area_penalty_shrinks_boxes():
    lit, data = module(box_area_weight=10.0), batch()
    opt = torch.optim.Adam(lit.model.localization_parameters(), lr=0.1)
    sides = []
    for _ in range(20):
        loss, out = lit._shared_step(data, train=True)
        sides.append((out["boxes"][:, 2] - out["boxes"][:, 0]).mean().item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sides[0] == pytest.approx(0.6 * 28, rel=1e-4)
    assert sides[-1] < 0.8 * sides[0]


@pytest.mark.parametrize("name", ["box_area_weight", "box_edge_weight", "loc_lr_mult", "loc_freeze_epochs"])
def test_negative_weights_are_clear_errors(name):
    with pytest.raises(ValueError, match=name):
        module(**{name: -1})


def test_box_area_warmup_ramps_the_weight_linearly():
    lit = module(box_area_weight=2.0, box_area_warmup=0.5)
    assert lit._warmup() == 1.0  # no trainer: nothing to ramp over

    class Trainer:  # the two attributes the ramp reads
        estimated_stepping_batches = 100
        global_step = 0

    lit._trainer = Trainer()
    weights = []
    for step in (0, 25, 50, 80):
        Trainer.global_step = step
        weights.append(lit._warmup())
    assert weights == [0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("warmup", [-0.1, 1.5])
def test_box_area_warmup_outside_unit_interval_is_a_clear_error(warmup):
    with pytest.raises(ValueError, match="box_area_warmup"):
        module(box_area_warmup=warmup)
