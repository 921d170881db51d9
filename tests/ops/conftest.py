"""Fixtures for the stn.ops tests: oracles for box glimpses, random boxes, forced code paths.

Test modules here are not a package, so helpers reach them as fixtures that return functions.
Fixtures have glimpse-specific names and none is autouse: the other test files are unaffected.
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch
import torch.nn.functional as F

from stn.ops.boxes import boxes_to_theta


def grid_sample_glimpse(images, boxes, size, *, indices=None, padding_mode="zeros", fill=0.0):
    """Oracle: boxes_to_theta + affine_grid + grid_sample(align_corners=False) on images[idx].

    ``fill`` (zeros mode) as grid_sample(images - fill) + fill: outside samples read ``fill``.
    Returns the same leading shape as :func:`stn.ops.glimpse`.
    """
    h, w = (size, size) if isinstance(size, int) else size
    b, c = images.shape[:2]
    if indices is not None:
        lead, idx, flat = (boxes.shape[0],), indices, boxes
    elif boxes.dim() == 3:
        lead, flat = tuple(boxes.shape[:2]), boxes.reshape(-1, 4)
        idx = torch.arange(b, device=images.device).repeat_interleave(boxes.shape[1])
    else:
        lead, idx, flat = (b,), torch.arange(b, device=images.device), boxes
    if flat.shape[0] == 0:
        return images.new_zeros(*lead, c, h, w)
    fill_t = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    theta = boxes_to_theta(flat.to(images.dtype), images.shape[-2:])
    grid = F.affine_grid(theta, [flat.shape[0], c, h, w], align_corners=False)
    out = F.grid_sample(images[idx] - fill_t, grid, padding_mode=padding_mode, align_corners=False) + fill_t
    return out.reshape(*lead, c, h, w)


def random_boxes(n, height, width, generator, *, inside=False, min_size=1.0, dtype=torch.float32):
    """(n, 4) boxes with non-integer coordinates.

    ``inside``: within the image, and at least half a pixel from its edges so that every bilinear
    sample lies between pixel centres (where roi_align, which clamps samples in [-1, 0] to the
    edge, and grid_sample's zero padding agree). Otherwise anywhere around the image, some partly
    or entirely outside.
    """
    g = generator
    if inside:
        x1 = 0.5 + torch.rand(n, generator=g) * (width - 1 - min_size) * 0.5
        y1 = 0.5 + torch.rand(n, generator=g) * (height - 1 - min_size) * 0.5
        x2 = x1 + min_size + torch.rand(n, generator=g) * (width - 0.5 - min_size - x1)
        y2 = y1 + min_size + torch.rand(n, generator=g) * (height - 0.5 - min_size - y1)
    else:
        x1 = torch.rand(n, generator=g) * (width + 8) - 6
        y1 = torch.rand(n, generator=g) * (height + 8) - 6
        x2 = x1 + min_size + torch.rand(n, generator=g) * width * 1.5
        y2 = y1 + min_size + torch.rand(n, generator=g) * height * 1.5
    return torch.stack([x1, y1, x2, y2], -1).to(dtype)


@contextlib.contextmanager
def glimpse_paths(*, engine="taps", rows="auto", columns="auto", chunk=None, dense_ratio=None, chunks=True):
    """Force the private code paths of stn.ops.glimpse and stn.ops._separable (restored afterwards).

    engine: "auto" (plain bilinear by grid_sample, anti-aliasing by the tap engine), "taps" (the
    tap engine for both) or "traced" (what tracing, export and torch.compile take: grid_sample and
    dense weight matrices). For the tap engine: rows: "index_add" | "embedding_bag" | "auto";
    columns: "scatter" | "dense" | "auto"; chunk: elements per CPU chunk (small values give one box
    per chunk); dense_ratio: 0 forces gathered columns, a large value dense bmm columns;
    chunks=False: one chunk with every tap, as on CUDA (no sorting or skipping of taps).
    """
    front = importlib.import_module("stn.ops.glimpse")
    module = importlib.import_module("stn.ops._separable")
    names = ("_ROW_GRAD", "_COLUMN_GRAD", "_CHUNK_ELEMS", "_DENSE_RATIO", "_CPU_CHUNKS")
    saved = front._ENGINE, [getattr(module, name) for name in names]
    front._ENGINE, module._ROW_GRAD, module._COLUMN_GRAD, module._CPU_CHUNKS = engine, rows, columns, chunks
    if chunk is not None:
        module._CHUNK_ELEMS = chunk
    if dense_ratio is not None:
        module._DENSE_RATIO = dense_ratio
    try:
        yield
    finally:
        front._ENGINE = saved[0]
        for name, value in zip(names, saved[1]):
            setattr(module, name, value)


# Every implementation and every combination of the tap engine's backward strategies and chunking
# that a device may take, runnable on CPU: the default dispatch (grid_sample for plain bilinear),
# the traced one (grid_sample and dense matrices), and with the tap engine for everything: its CPU
# defaults, what CUDA takes (embedding_bag rows, dense column backward, one chunk), one box per
# chunk (sorted chunks with anti-aliasing), and dense/gathered columns forced.
GLIMPSE_PATHS = {
    "auto": {"engine": "auto"},
    "traced": {"engine": "traced"},
    "cpu-default": {},
    "cuda-like": {"rows": "embedding_bag", "columns": "dense", "chunks": False},
    "tiny-chunks": {"chunk": 1},
    "dense-columns": {"dense_ratio": 1e9, "chunk": 64},
    "gathered-columns": {"dense_ratio": 0.0},
}


@pytest.fixture(scope="session")
def glimpse_oracle():
    """:func:`grid_sample_glimpse`."""
    return grid_sample_glimpse


@pytest.fixture(scope="session")
def make_boxes():
    """:func:`random_boxes`."""
    return random_boxes


@pytest.fixture(scope="session")
def all_glimpse_paths():
    """(name, context manager factory) for every entry of GLIMPSE_PATHS."""
    return [(name, lambda kw=kw: glimpse_paths(**kw)) for name, kw in GLIMPSE_PATHS.items()]


@pytest.fixture(params=sorted(GLIMPSE_PATHS))
def glimpse_path(request):
    """Runs the test once per entry of GLIMPSE_PATHS."""
    with glimpse_paths(**GLIMPSE_PATHS[request.param]):
        yield request.param


@pytest.fixture(scope="session")
def tap_engine():
    """Context manager factory: the tap engine for plain bilinear glimpses too."""
    return lambda: glimpse_paths(engine="taps")


@pytest.fixture
def glimpse_gen():
    return torch.Generator().manual_seed(0)
