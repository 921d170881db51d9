"""Tracing, ONNX export and torch.compile take the plain-tensor paths of stn.ops.glimpse.

Traced or exported, glimpse must not bake in anything that depends on the boxes' values (tap
counts, which boxes are finite): the traced graph is run on other boxes and compared with eager.
"""

from __future__ import annotations

import io

import pytest
import torch

from stn.ops import glimpse

pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(3, 2, 20, 24, generator=g)
    centre = torch.rand(3, 2, generator=g) * torch.tensor([24.0, 20.0])
    side = (torch.rand(3, 2, generator=g) * 1.4 + 0.1) * torch.tensor([24.0, 20.0])
    return images, torch.cat([centre - side / 2, centre + side / 2], 1)


@pytest.mark.parametrize("antialias", [False, True])
def test_traced_glimpse_generalizes_to_other_boxes(antialias):
    images, boxes = _inputs(0)

    def fn(i, b):
        return glimpse(i, b, (5, 6), antialias=antialias, fill=0.25)

    traced = torch.jit.trace(fn, (images, boxes), check_trace=False)
    graph = str(traced.graph)
    assert "grid_sampler" in graph if not antialias else "einsum" in graph
    assert "embedding_bag" not in graph and "PythonOp" not in graph  # not the tap engine
    other_images, other = _inputs(1)
    other[1, 2] = float("nan")  # a bad box on the traced graph still gives only its glimpse NaN
    out, want = traced(other_images, other), fn(other_images, other)
    assert torch.isnan(out[1]).all()
    torch.testing.assert_close(out[[0, 2]], want[[0, 2]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("antialias", [False, True])
def test_onnx_export_runs_in_onnxruntime(antialias):
    ort = pytest.importorskip("onnxruntime")

    class Crop(torch.nn.Module):
        def forward(self, images, boxes):
            return glimpse(images, boxes, (5, 6), antialias=antialias)

    images, boxes = _inputs(0)
    buffer = io.BytesIO()
    torch.onnx.export(Crop(), (images, boxes), buffer, opset_version=17, dynamo=False)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    other_images, other = _inputs(2)
    names = [x.name for x in session.get_inputs()]
    (out,) = session.run(None, dict(zip(names, (other_images.numpy(), other.numpy()))))
    torch.testing.assert_close(torch.from_numpy(out), Crop()(other_images, other), atol=1e-5, rtol=1e-5)
