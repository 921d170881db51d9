"""Checkpoints trained a few steps on the tiny datasets (by the real configs and ``train()``),
shared by the inference, predict and export tests, and images of every kind."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from stn.data import MNISTDataModule
from stn.tasks import train

ROOT = Path(__file__).resolve().parents[2]
FEW_STEPS = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
    "test=false",
    "data.batch_size=16",
]


def train_checkpoint(out: Path, overrides: list[str]) -> Path:
    """Train a few steps with the real configs; the path of ``last.ckpt``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=FEW_STEPS + overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out.parent)
        cfg.paths.root_dir = str(ROOT)
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def mnist_ckpt(tmp_path_factory, tiny_mnist_dir) -> Path:
    """The default attention model on tiny MNIST (1 channel, 28x28, classes "0".."9")."""
    out = tmp_path_factory.mktemp("mnist_ckpt") / "run"
    return train_checkpoint(
        out, ["data=mnist", "model=attention", f"paths.data_dir={tiny_mnist_dir}", "data.val_size=32"]
    )


@pytest.fixture(scope="session")
def folder_ckpt(tmp_path_factory, tiny_imagefolder_dir) -> Path:
    """The attention model on the tiny image folder (RGB 32x32, classes ant, bee, cat)."""
    out = tmp_path_factory.mktemp("folder_ckpt") / "run"
    return train_checkpoint(
        out,
        [
            "data=imagefolder",
            f"data.data_dir={tiny_imagefolder_dir}",
            "data.image_size=[32,32]",
            "data.cache_dir=null",
            "data.num_workers=1",
        ],
    )


@pytest.fixture(scope="session")
def digit(tiny_mnist_dir):
    """``digit(i)``: image i of the tiny MNIST test set, uint8 (28, 28) numpy."""
    test = MNISTDataModule(str(tiny_mnist_dir), download=False).load()[1]
    return lambda index: test.images[index, 0].numpy()
