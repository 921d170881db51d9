"""Divergence never reaches a validation, a picture or a checkpoint (issue #15)."""

from __future__ import annotations

import csv
import functools

import pytest
import torch
from test_train import FAST, make_cfg

from stn.callbacks import LatestCheckpoint
from stn.lit import GlimpseClassifier, NonFiniteLossError, nonfinite_tensors
from stn.models import CNNModel
from stn.pictures import FRAME, PRED_COLOUR, TRUE_COLOUR, box_tiles
from stn.tasks import train

# From step 6 (the third of epoch 1, 4 steps an epoch) the LR is 1e27: the weights blow up then,
# after epoch 0 trained and saved finite weights. nonfinite_check_every is out of reach, so only
# the checks before validation and before saving can catch it.
DIVERGE_IN_EPOCH_1 = [
    "module.scheduler._target_=torch.optim.lr_scheduler.MultiStepLR",
    "~module.scheduler.pct_start",
    "+module.scheduler.milestones=[6]",
    "+module.scheduler.gamma=1e30",
    "module.optimizer.lr=1e-3",
    "module.nonfinite_check_every=1000",
    "logger=csv",
]


def all_tensors(state) -> list:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in all_tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in all_tensors(v)]
    return []


def assert_finite_checkpoint(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    tensors = all_tensors(state["state_dict"]) + all_tensors(state["optimizer_states"])
    assert tensors
    bad = [i for i, t in enumerate(tensors) if t.is_floating_point() and not torch.isfinite(t).all()]
    assert not bad, f"{path.name}: {len(bad)} of {len(tensors)} tensors are not finite"
    return state


def test_divergence_in_a_later_epoch_keeps_the_last_finite_checkpoint(tmp_path, tiny_mnist_dir):
    out = tmp_path / "nan"
    cfg = make_cfg("train", out, FAST + [f"paths.data_dir={tiny_mnist_dir}", *DIVERGE_IN_EPOCH_1])
    with pytest.raises(NonFiniteLossError, match=r"NaN/Inf.* by epoch 1, step 8"):
        train(cfg)
    ckpts = out / "checkpoints"
    # diverged weights are not saved as last.ckpt (a plain ModelCheckpoint with save_on_exception
    # would write them there): it keeps epoch 0's finite weights
    last = assert_finite_checkpoint(ckpts / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (0, 4)
    best = assert_finite_checkpoint(ckpts / "epoch_000.ckpt")
    for key, value in best["state_dict"].items():
        torch.testing.assert_close(last["state_dict"][key], value, rtol=0, atol=0)
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    # epoch 1 was never validated
    (metrics,) = out.glob("**/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    assert [r["epoch"] for r in rows if r.get("val/acc")] == ["0"]


def test_large_learning_rate_stops_with_the_divergence_error(tmp_path, tiny_mnist_dir):
    """The reproduction of issue #15 (`debug=limit module.optimizer.lr=1e6`): the picture callback
    crashed on NaN boxes and the crash handler saved NaN weights; now the divergence check comes
    first and no checkpoint is written."""
    out = tmp_path / "big_lr"
    cfg = make_cfg(
        "train",
        out,
        FAST + [f"paths.data_dir={tiny_mnist_dir}", "module.optimizer.lr=1e6", "logger=tensorboard"],
    )
    with pytest.raises(NonFiniteLossError, match="the run diverged"):
        train(cfg)
    assert not list(out.glob("checkpoints/*"))


def small_module(**kwargs) -> GlimpseClassifier:
    torch.manual_seed(0)
    model = CNNModel(in_channels=1, num_classes=10, image_size=(28, 28), mean=(0.5,), std=(0.5,))
    return GlimpseClassifier(model, 10, optimizer=functools.partial(torch.optim.SGD, lr=0.1), **kwargs)


def test_loss_flag_accumulates_without_a_check_per_step():
    lit = small_module(nonfinite_check_every=1000)
    images = torch.rand(4, 1, 28, 28)
    labels = torch.arange(4)
    lit.training_step({"image": images.clone().fill_(float("nan")), "label": labels}, 0)
    lit.training_step({"image": images, "label": labels}, 1)  # a finite loss does not clear it
    with pytest.raises(NonFiniteLossError, match="training loss became NaN/Inf"):
        lit.on_validation_start()
    with pytest.raises(NonFiniteLossError):
        lit.on_save_checkpoint({})


def test_nonfinite_buffer_blocks_a_save_and_names_the_tensor():
    lit = small_module()
    (name, buffer) = next((n, b) for n, b in lit.named_buffers() if n.endswith("running_var"))
    lit.on_save_checkpoint({})  # finite: fine
    buffer[0] = float("inf")  # what a finite loss with a huge LR did to BatchNorm in issue #15
    assert nonfinite_tensors(lit) == [name]
    with pytest.raises(NonFiniteLossError, match=name.replace(".", r"\.")):
        lit.on_save_checkpoint({})


def test_crash_handler_does_not_save_nonfinite_weights(tmp_path):
    lit = small_module()
    next(lit.parameters()).data[0] = float("nan")
    callback = LatestCheckpoint(dirpath=tmp_path, filename="last", save_on_exception=True)
    # any exception (here what the picture callback raised in issue #15): nothing is written
    callback.on_exception(None, lit, ValueError("The histogram is empty"))
    assert not list(tmp_path.iterdir())


def test_pictures_leave_out_nonfinite_boxes():
    images = torch.zeros(2, 1, 8, 8)
    pred = torch.tensor([[1.0, 1.0, 6.0, 6.0], [float("nan"), 0.0, float("inf"), 4.0]])
    true = torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 5.0, 5.0]])
    drawn = box_tiles(images, pred, true, scale=1)[:, :, FRAME:-FRAME, FRAME:-FRAME]
    assert tuple(drawn.shape) == (2, 3, 8, 8)
    green = torch.tensor(TRUE_COLOUR, dtype=torch.uint8)[:, None]
    red = torch.tensor(PRED_COLOUR, dtype=torch.uint8)[:, None]
    # the second image keeps its true (green) box, the NaN prediction is not drawn
    assert (drawn[1].reshape(3, -1) == green).all(0).any()
    assert not (drawn[1].reshape(3, -1) == red).all(0).any()
    assert (drawn[0].reshape(3, -1) == red).all(0).any()
