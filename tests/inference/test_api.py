"""`from stn import load_model`: class names in checkpoints (and old checkpoints without them), and
`model.predict` on every input kind giving the same answer, boxes in each input's own pixels."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from stn import load_model
from stn.data import CIFAR10DataModule
from stn.inference import data_info
from stn.validation import ConfigError

KEYS = {"labels", "class_names", "probs", "boxes", "glimpses"}


def test_checkpoint_stores_class_names_and_shape(mnist_ckpt, folder_ckpt):
    state = torch.load(mnist_ckpt, map_location="cpu", weights_only=True)
    assert state["stn_data"]["classes"] == [str(i) for i in range(10)]
    assert state["stn_data"]["image_shape"] == [1, 28, 28]
    assert state["stn_data"]["mean"] == pytest.approx([0.1307])
    folder = torch.load(folder_ckpt, map_location="cpu", weights_only=True)
    assert folder["stn_data"]["classes"] == ["ant", "bee", "cat"]  # the folder names, sorted
    assert folder["stn_data"]["image_shape"] == [3, 32, 32]
    assert load_model(folder_ckpt).classes == ["ant", "bee", "cat"]


def test_cifar10_class_names(tiny_cifar_dir):
    info = data_info(CIFAR10DataModule(str(tiny_cifar_dir), download=False))
    assert info["classes"][:3] == ["airplane", "automobile", "bird"] and len(info["classes"]) == 10
    assert info["image_shape"] == [3, 32, 32]


def test_same_image_as_every_input_kind_gives_the_same_answer(mnist_ckpt, digit):
    model = load_model(mnist_ckpt)
    grey = digit(0)
    as_float = grey.astype(np.float32) / 255
    kinds = {
        "PIL": Image.fromarray(grey),
        "numpy uint8 HW": grey,
        "numpy float HWC": np.repeat(as_float[:, :, None], 3, axis=2),  # RGB: back to grey by luma
        "tensor CHW": torch.from_numpy(as_float)[None],
        "tensor BCHW": torch.from_numpy(as_float)[None, None],
    }
    outs = {name: model.predict(x) for name, x in kinds.items()}
    ref = outs["PIL"]
    assert set(ref) == KEYS
    assert ref["labels"].shape == (1,) and ref["labels"].dtype == torch.long
    assert ref["probs"].shape == (1,) and 0 < float(ref["probs"][0]) <= 1
    assert ref["boxes"].shape == (1, 1, 4) and ref["glimpses"].shape == (1, 1, 1, 28, 28)
    assert ref["class_names"] == [str(int(ref["labels"][0]))]
    # the model on the tensor directly: the API changes nothing on a 28x28 input
    with torch.no_grad():
        direct = model(torch.from_numpy(as_float)[None, None])
    assert int(direct["logits"].argmax()) == int(ref["labels"][0])
    for name, out in outs.items():
        assert set(out) == KEYS, name
        assert torch.equal(out["labels"], ref["labels"]), name
        assert out["class_names"] == ref["class_names"], name
        assert torch.allclose(out["probs"], ref["probs"], atol=1e-5), name
        assert torch.allclose(out["boxes"], direct["boxes"][:, None], atol=1e-4), name


def test_boxes_are_in_each_inputs_own_pixels(mnist_ckpt, digit):
    model = load_model(mnist_ckpt)
    grey = torch.from_numpy(digit(1)).float()[None] / 255
    big = torch.nn.functional.interpolate(grey[None], size=(56, 84), mode="nearest")[0]  # 2x tall, 3x wide
    out = model.predict([grey, big, Image.fromarray(digit(2))])
    assert out["labels"].shape == (3,) and len(out["class_names"]) == 3
    with torch.no_grad():
        resized = model.preprocess(big)[0][None]
        on_model_pixels = model(resized)["boxes"]
    want = on_model_pixels * torch.tensor([3.0, 2.0, 3.0, 2.0])
    assert torch.allclose(out["boxes"][1], want, atol=1e-3)
    assert 0 <= out["boxes"][1, 0, 2] <= 84 * 1.25 + 1  # inside (max_scale 1.25 of) the 84-px width


def test_batches_and_bad_inputs(mnist_ckpt, digit):
    model = load_model(mnist_ckpt)
    x = torch.from_numpy(np.stack([digit(i) for i in range(5)]))[:, None]  # uint8 BCHW
    whole = model.predict(x)
    parts = model.predict(x, batch_size=2)
    assert torch.equal(whole["labels"], parts["labels"]) and torch.allclose(whole["probs"], parts["probs"])
    with pytest.raises(ValueError, match=r"got shape \(2, 5, 8, 8\)"):
        model.predict(torch.rand(2, 5, 8, 8))
    with pytest.raises(ValueError, match="empty list"):
        model.predict([])
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        model.predict(x, batch_size=0)


def test_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        load_model(tmp_path / "nope.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.ckpt")
    with pytest.raises(ConfigError, match="no 'state_dict'"):
        load_model(tmp_path / "foreign.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "lightning.ckpt")
    with pytest.raises(ConfigError, match="not written by train.py"):
        load_model(tmp_path / "lightning.ckpt")


def without_stn_data(ckpt, path, **data_overrides):
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    del state["stn_data"]
    state["stn_config"]["data"].update(data_overrides)
    torch.save(state, path)
    return path


def test_old_checkpoint_without_class_names_still_loads(mnist_ckpt, folder_ckpt, tmp_path, caplog):
    old = load_model(without_stn_data(mnist_ckpt, tmp_path / "old_mnist.ckpt"))
    new = load_model(mnist_ckpt)
    assert old.classes == [str(i) for i in range(10)] and old.image_shape == (1, 28, 28)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(old.predict(x)["probs"], new.predict(x)["probs"])  # normalization from the weights
    # an image folder that is still there names the classes; one that is gone: by index, with a warning
    assert load_model(without_stn_data(folder_ckpt, tmp_path / "f.ckpt")).classes == ["ant", "bee", "cat"]
    gone = without_stn_data(folder_ckpt, tmp_path / "gone.ckpt", data_dir=str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="stn.inference"):
        fallback = load_model(gone)
    assert fallback.classes == ["0", "1", "2"]
    assert "naming classes by index" in caplog.text
    assert fallback.predict(torch.rand(3, 32, 32))["labels"].shape == (1,)
