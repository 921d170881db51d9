"""The notebooks in notebooks/ run top to bottom on tiny data and show what they claim to show.

Each notebook is executed with nbclient in a fresh ``python3`` kernel whose working directory is
the repository root. Notebook 1 needs no data; for notebook 2 a tiny model is first trained with
the real configs and the real :func:`stn.tasks.train` (as in ``tests/test_train.py``), and the
kernel finds the checkpoint and the data through ``STN_CKPT`` and ``STN_DATA_DIR``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 120  # seconds per cell


def run_notebook(name: str):
    """Execute notebooks/<name> in a fresh kernel (cwd = repo root); returns the executed notebook."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    return nb


def outputs(nb):
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def text_of(nb) -> str:
    parts = []
    for out in outputs(nb):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def count_images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for out in outputs(nb))


def test_notebooks_are_committed_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        dirty = [
            i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)
        ]
        assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


@pytest.fixture
def kernel_env(monkeypatch):
    """The kernel inherits this process's environment: keep the inline backend, no stray checkpoint,
    one thread (on a busy machine OpenMP spin-waits make a multi-threaded kernel several times slower;
    the notebooks' tensors are small)."""
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.delenv("STN_CKPT", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return monkeypatch


def test_differentiable_cropping_notebook(kernel_env):
    nb = run_notebook("01_differentiable_cropping.ipynb")
    text = text_of(nb)
    # the box found by gradient descent on its own coordinates overlaps the target
    match = re.search(r"final IoU with the target: ([0-9.]+)", text)
    assert match, text[-2000:]
    assert float(match.group(1)) > 0.5
    # the checks the notebook prints about the API hold
    assert "equals image[..., 1:3, 2:5] (to float rounding): True" in text
    assert "same as the (B, K) layout: True" in text
    assert "RuntimeError: one of the variables needed for gradient computation has been modified" in text
    assert (
        "glimpse(paste(img, p, b), b) == p (to float rounding) for an integer box of the patch's size: True"
        in text
    )
    errors = re.findall(r"antialias=False ([0-9.]+), antialias=True ([0-9.]+)", text)
    assert errors and float(errors[0][1]) < float(errors[0][0]) / 10, (
        errors
    )  # anti-aliasing removes the moire
    assert count_images(nb) >= 7


def train_tiny_model(out: Path, overrides: list[str]):
    """The real train() with the real configs (composed as train.py would), for a few batches."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from stn.tasks import train

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out.parent)
        cfg.paths.root_dir = str(ROOT)
    return train(cfg)


def test_inspect_model_notebook(kernel_env, tmp_path, tiny_mnist_dir):
    out = tmp_path / "run"
    metrics = train_tiny_model(
        out,
        [
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "data.batch_size=16",
            "data.val_size=32",
            "logger=csv",
            f"paths.data_dir={tiny_mnist_dir}",
        ],
    )
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    kernel_env.setenv("STN_CKPT", str(ckpt))
    kernel_env.setenv("STN_DATA_DIR", str(tiny_mnist_dir))
    nb = run_notebook("02_inspect_model.ipynb")
    text = text_of(nb)
    assert f"checkpoint: {ckpt}" in text
    assert "stn.models.AttentionModel" in text
    match = re.search(r"test accuracy on (\d+) images \((\d+) batch(?:es)?\): ([0-9.]+)", text)
    assert match, text[-2000:]
    # The tiny test split is one eval batch of 1000, which train() also tested with the same (one
    # epoch: best == last) weights: the notebook's rebuild of data and model must agree. (Allow one
    # or two near-tie logits to flip: the kernel runs single-threaded, train() did not.)
    assert int(match.group(1)) == 1000
    assert float(match.group(3)) == pytest.approx(metrics["test/acc"], abs=2.5e-3)
    assert re.search(r"box scale: median [0-9.]+", text), text[-2000:]
    assert count_images(nb) >= 3  # inputs with boxes, glimpses, box statistics
