"""export.py: ONNX (run by onnxruntime) and TorchScript files give the checkpoint's logits and
boxes within 1e-4, for any batch size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from stn import load_model
from stn.convert import Preprocess
from stn.export import ExportModule, export, export_task, run_exported
from stn.inference import TrainedModel
from stn.models import BoxRefiner, CNNModel, MultiGlimpseModel, ScoreMap, TopKGlimpseModel
from stn.validation import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def needs_onnx():
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason=f'{name} is not installed: pip install -e ".[export]"')


def batch_of_digits(digit, n: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([digit(i) for i in range(n)]))[:, None].float() / 255


def expected(model: TrainedModel, images: torch.Tensor):
    with torch.no_grad():
        return ExportModule(model.model)(images)


def test_onnx_matches_the_checkpoint(mnist_ckpt, digit, tmp_path):
    needs_onnx()
    import onnx
    import onnxruntime

    model = load_model(mnist_ckpt)
    path = export(model, "onnx", tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits", "boxes"]
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a named, dynamic batch dimension
    graph = onnx.load(str(path))
    # the glimpse exports through grid_sample (stn.ops.glimpse's path while exporting)
    assert "GridSample" in {node.op_type for node in graph.graph.node}
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["stn_classes"]) == model.classes and json.loads(meta["stn_image_shape"]) == [
        1,
        28,
        28,
    ]
    for n in (7, 1):  # not the batch size it was traced with (2)
        images = batch_of_digits(digit, n)
        logits, boxes = run_exported(path, images)
        want_logits, want_boxes = expected(model, images)
        assert logits.shape == (n, 10) and boxes.shape == (n, 1, 4)
        assert (logits - want_logits).abs().max() < 1e-4
        assert (boxes - want_boxes).abs().max() < 1e-4


def test_torchscript_matches_the_checkpoint(mnist_ckpt, digit, tmp_path):
    model = load_model(mnist_ckpt)
    path = export(model, "torchscript", tmp_path / "model.pt")
    extra = {"stn_classes.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["stn_classes.json"]) == model.classes
    images = batch_of_digits(digit, 5)
    with torch.no_grad():
        logits, boxes = loaded(images)
    want_logits, want_boxes = expected(model, images)
    assert (logits - want_logits).abs().max() < 1e-4 and (boxes - want_boxes).abs().max() < 1e-4


@pytest.mark.parametrize(
    "make",
    [
        CNNModel,
        lambda **kw: MultiGlimpseModel(num_glimpses=2, **kw),
        lambda **kw: MultiGlimpseModel(num_glimpses=1, retina_scales=[1, 2], refiner=BoxRefiner, **kw),
    ],
    ids=["cnn", "multi_glimpse", "coarse_to_fine"],
)
def test_onnx_of_other_models(make, tmp_path):
    needs_onnx()
    torch.manual_seed(0)
    net = make(in_channels=1, num_classes=4, image_size=(28, 28), mean=(0.1,), std=(0.3,))
    with torch.no_grad():  # move the boxes off the identity, so the glimpses are real crops
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = TrainedModel(net, list("abcd"), Preprocess(1, (28, 28)))
    path = export(model, "onnx", tmp_path / "m.onnx")
    images = torch.rand(3, 1, 28, 28)
    for got, want in zip(run_exported(path, images), expected(model, images)):
        assert got.shape == want.shape and (got - want).abs().max() < 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_of_the_large_image_model(fmt, tmp_path):
    """TopKGlimpseModel (score map, top-k seeds, flat-cell rule, ink prior) exports to both formats
    (TorchScript failed on the view's size before: tracing gives shapes as tensors)."""
    if fmt == "onnx":
        needs_onnx()
    torch.manual_seed(0)
    net = TopKGlimpseModel(
        num_glimpses=3,
        image_size=(120, 120),
        localizer=lambda **kw: ScoreMap(**kw, view_scale=0.3, ink_prior=1.0),
    )
    model = TrainedModel(net, list("0123456789"), Preprocess(1, (120, 120)))
    path = export(model, fmt, tmp_path / f"m.{fmt}")
    images = torch.zeros(2, 1, 120, 120)
    images[:, :, 20:40, 30:50] = 1.0  # ink in a few cells, the rest flat
    images[1, :, 70:100, 60:80] = torch.rand(30, 20)
    if fmt == "onnx":
        got = run_exported(path, images)
    else:
        with torch.no_grad():
            got = torch.jit.load(str(path))(images)
    for g, want in zip(got, expected(model, images)):
        assert g.shape == want.shape and (g - want).abs().max() < 1e-4


def test_bad_format_is_a_clear_error(mnist_ckpt):
    cfg = OmegaConf.create({"ckpt_path": str(mnist_ckpt), "format": "tflite", "out": None})
    with pytest.raises(ConfigError, match="format='tflite': must be one of onnx, torchscript"):
        export_task(cfg)


@pytest.mark.slow
def test_cli_export(mnist_ckpt, tmp_path):
    needs_onnx()
    out = tmp_path / "m.onnx"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    args = [f"ckpt_path={mnist_ckpt}", "format=onnx", f"out={out}", f"paths.log_dir={tmp_path}"]
    res = subprocess.run(
        [sys.executable, str(ROOT / "export.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.is_file() and "max |exported - PyTorch|" in res.stdout + res.stderr
