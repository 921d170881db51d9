"""The synthetic data configs compose and build their datamodules; the preview command draws them."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from stn.data import synthetic
from stn.data.base import TensorDataModule
from stn.data.preview import CONFIG_DIR, compose_data_config, main, parse_args
from stn.pictures import FRAME, PADDING, TRUE_COLOUR, box_grid

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = {
    "translated_mnist": (synthetic.TranslatedMNISTDataModule, 60, {"canvas_size": 60}),
    "cluttered_mnist": (synthetic.ClutteredMNISTDataModule, 60, {"num_pieces": 4, "piece_size": 8}),
    "distorted_mnist": (synthetic.DistortedMNISTDataModule, 42, {"distortion": "rts"}),
}


def _params(cls) -> set:
    names = set()
    for klass in cls.__mro__:
        if klass in (synthetic.TranslatedMNISTDataModule.__mro__[-1],) or not hasattr(klass, "__init__"):
            continue
        if issubclass(klass, TensorDataModule) or klass is TensorDataModule:
            sig = inspect.signature(klass.__init__)
            names |= {n for n, p in sig.parameters.items() if n != "self" and p.kind != p.VAR_KEYWORD}
    return names


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_data_configs_mirror_their_classes(name, tiny_mnist_dir):
    cls, size, defaults = CONFIGS[name]
    cfg = compose_data_config(name, [f"paths.data_dir={tiny_mnist_dir}"])
    assert cfg._target_ == f"stn.data.synthetic.{cls.__name__}"
    assert set(cfg) - {"_target_"} == _params(cls)  # every argument, and only arguments
    assert cfg.data_dir == str(tiny_mnist_dir)
    assert cfg.seed == OmegaConf.load(CONFIG_DIR / "train.yaml").seed  # the run's seed
    dm = instantiate(cfg)
    assert type(dm) is cls and dm.image_shape == (1, size, size)
    for key, value in defaults.items():
        assert getattr(dm, key) == value
    # overrides reach the datamodule
    small = instantiate(
        compose_data_config(name, [f"paths.data_dir={tiny_mnist_dir}", "data.canvas_size=48"])
    )
    assert small.image_shape == (1, 48, 48)


def test_parse_args_routes_overrides():
    options, overrides = parse_args(
        [
            "data=cluttered_mnist",
            "out=x.png",
            "n=4",
            "canvas_size=100",
            "paths.data_dir=/d",
            "seed=3",
            "+data.extra=1",
        ]
    )
    assert options == {
        "data": "cluttered_mnist",
        "out": "x.png",
        "n": "4",
        "nrow": "8",
        "scale": "2",
        "split": "test",
    }
    assert overrides == ["data.canvas_size=100", "paths.data_dir=/d", "seed=3", "+data.extra=1"]
    with pytest.raises(SystemExit, match="out="):
        parse_args(["data=cluttered_mnist"])
    with pytest.raises(SystemExit, match="key=value"):
        parse_args(["data=cluttered_mnist", "out"])


@pytest.mark.parametrize(
    "name, extra, side", [("cluttered_mnist", [], 60), ("distorted_mnist", ["distortion=r"], 28)]
)
def test_preview_writes_a_png_of_the_expected_size(name, extra, side, tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "preview.png"
    main(
        [f"data={name}", f"out={out}", "n=6", "nrow=3", "scale=2", f"paths.data_dir={tiny_mnist_dir}", *extra]
    )
    with Image.open(out) as png:
        pixels = torch.from_numpy(np.array(png.convert("RGB")))
    # stn.pictures.box_grid's layout: 3 x 2 tiles of the 2x upscaled canvases, each with a title
    # (its class), and a legend underneath
    tile = side * 2 + 2 * FRAME
    titled = box_grid(
        torch.zeros(6, 1, side, side), None, torch.zeros(6, 4), None, torch.zeros(6), nrow=3, scale=2
    )
    assert titled.shape[1:] == pixels.shape[:2]
    assert pixels.shape[1] == 3 * tile + 4 * PADDING and pixels.shape[0] > 2 * tile + 3 * PADDING + 20
    green = (pixels == torch.tensor(TRUE_COLOUR, dtype=torch.uint8)).all(-1)
    assert green.sum() > 6 * 2 * side  # six outlines drawn, in the true boxes' green
    printed = capsys.readouterr().out
    assert "6 test samples" in printed and f"(1, {side}, {side})" in printed
