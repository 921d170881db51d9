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
from stn.data.preview import BOX_COLOUR, CONFIG_DIR, compose_data_config, draw, main, parse_args

pytestmark = [
    pytest.mark.filterwarnings("ignore:train.yaml did not compose"),
    pytest.mark.usefixtures("single_thread"),
]

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


def test_draw_puts_the_outline_just_outside_the_box():
    image = torch.zeros(1, 1, 10, 10)
    image[0, 0, 3:6, 2:7] = 1.0  # box (2, 3, 7, 6)
    grid = draw(image, torch.tensor([[2.0, 3.0, 7.0, 6.0]]), nrow=1, scale=1)
    tile = (grid * 255).round().to(torch.uint8)  # make_grid returns a single image unpadded
    red = (tile[0] == BOX_COLOUR[0]) & (tile[1] == BOX_COLOUR[1])
    ys, xs = torch.nonzero(red, as_tuple=True)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (1, 2, 7, 6)  # one pixel around the digit
    assert (tile[:, 3:6, 2:7] == 255).all()  # the digit's pixels are untouched


@pytest.mark.parametrize(
    "name, extra, side", [("cluttered_mnist", [], 60), ("distorted_mnist", ["distortion=r"], 28)]
)
def test_preview_writes_a_png_of_the_expected_size(name, extra, side, tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "preview.png"
    main(
        [f"data={name}", f"out={out}", "n=6", "nrow=3", "scale=2", f"paths.data_dir={tiny_mnist_dir}", *extra]
    )
    tile = side * 2 + 2
    with Image.open(out) as png:
        assert png.size == (3 * tile + 2, 2 * tile + 2)  # make_grid: 3 x 2 tiles, 2 px padding
        pixels = torch.from_numpy(np.array(png.convert("RGB")))
    assert (
        (pixels == torch.tensor(BOX_COLOUR, dtype=torch.uint8)).all(-1)
    ).sum() > 6 * 2 * side  # six outlines drawn
    printed = capsys.readouterr().out
    assert "6 test samples" in printed and f"(1, {side}, {side})" in printed
