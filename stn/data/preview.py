"""Look at a dataset: a grid of samples with their true boxes, from the real Hydra data config.

Usage::

    python -m stn.data.preview data=cluttered_mnist out=cluttered.png [n=32] [nrow=8] [scale=2]
        [split=test|val|train] [canvas_size=100 num_pieces=8 ...] [paths.data_dir=... seed=...]

``key=value`` pairs that are not preview options override the data config (``canvas_size=100``
means ``data.canvas_size=100``); dotted keys (``paths.data_dir=...``) and ``seed=...`` go to the
composed config as they are. The config is ``configs/train.yaml`` with ``data=<name>``, so the
preview shows the very samples (same seed) a training run validates and tests on. Boxes are drawn
one pixel outside the box's pixels, so the outline never covers the digit. Canvases larger than
``MAX_SIDE`` are shown shrunk to it (anti-aliased, no upscaling); on data with several objects per
canvas (Megapixel MNIST's ``boxes``) the digits of the label's class are drawn in ``BOX_COLOUR``,
the others in ``OTHER_COLOUR``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
OPTIONS = {"data": None, "out": None, "n": "32", "nrow": "8", "scale": "2", "split": "test"}
BOX_COLOUR = (255, 40, 40)
OTHER_COLOUR = (0, 170, 255)
MAX_SIDE = 512


def parse_args(argv: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
    """Split ``key=value`` arguments into preview options and Hydra overrides."""
    options = {k: v for k, v in OPTIONS.items() if v is not None}
    overrides = []
    for arg in argv:
        if "=" not in arg:
            raise SystemExit(f"expected key=value arguments, got {arg!r}\n\n{__doc__}")
        key, value = arg.split("=", 1)
        if key in OPTIONS:
            options[key] = value
        elif "." in key or key[:1] in "+~" or key == "seed":
            overrides.append(arg)
        else:
            overrides.append(f"data.{arg}")
    for key in ("data", "out"):
        if key not in options:
            raise SystemExit(f"missing {key}=...\n\n{__doc__}")
    return options, overrides


def compose_data_config(
    name: str, overrides: Sequence[str] = (), config_dir: Path = CONFIG_DIR
) -> DictConfig:
    """The resolved ``data`` node of ``train.yaml`` composed with ``data=<name>`` and ``overrides``.

    If ``train.yaml`` does not compose because another group's config is missing (the project is
    being assembled), falls back to ``configs/data/<name>.yaml`` with ``configs/paths/default.yaml``
    and ``train.yaml``'s ``seed``, with a warning.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    with initialize_config_dir(str(config_dir), version_base="1.3"):
        try:
            cfg = compose(config_name="train", overrides=[f"data={name}", *overrides])
        except MissingConfigException as err:
            if not (config_dir / "data" / f"{name}.yaml").exists():
                raise
            warnings.warn(
                f"train.yaml did not compose ({str(err).splitlines()[0]}); using data/{name}.yaml "
                "with paths/default.yaml only",
                stacklevel=2,
            )
            seed = (
                OmegaConf.load(config_dir / "train.yaml").get("seed", 0)
                if (config_dir / "train.yaml").exists()
                else 0
            )
            rest = [o for o in overrides if not o.startswith("seed=")]
            seeds = [o for o in overrides if o.startswith("seed=")]
            seed_override = f"+{seeds[-1]}" if seeds else f"+seed={seed}"
            cfg = compose(overrides=[f"+data={name}", "+paths=default", seed_override, *rest])
    data = OmegaConf.to_container(cfg, resolve=False)["data"]
    # Resolve the data node against the whole config (paths.data_dir, seed), touching nothing else.
    root = OmegaConf.create({"data": data, "paths": cfg.get("paths"), "seed": cfg.get("seed")})
    return OmegaConf.create(OmegaConf.to_container(root.data, resolve=True))


def samples(datamodule, split: str, n: int) -> Dict[str, Tensor]:
    """The first ``n`` samples of a split as one batch (float images, labels, boxes)."""
    datamodule.setup()
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    if split == "train":
        loader = datamodule.train_dataloader()
        loader.shuffle = False
        loader.drop_last = False
    else:
        loader = getattr(datamodule, f"{split}_dataloader")()
    out: Dict[str, List[Tensor]] = {}
    count = 0
    for batch in loader:
        for k, v in batch.items():
            out.setdefault(k, []).append(v.cpu())
        count += len(batch["label"])
        if count >= n:
            break
    return {k: torch.cat(v)[:n] for k, v in out.items()}


def draw(
    images: Tensor,
    boxes: Optional[Tensor],
    nrow: int = 8,
    scale: int = 2,
    colours: Optional[Sequence[Sequence[Tuple[int, int, int]]]] = None,
) -> Tensor:
    """A (3, H, W) float grid of images in [0, 1] with boxes drawn around their pixels.

    Args:
        images: (N, C, h, w) float in [0, 1], C = 1 or 3.
        boxes: (N, 4) or (N, T, 4) pixel ``(x1, y1, x2, y2)``, or None.
        nrow: images per row.
        scale: integer upscaling (nearest) before drawing, so thin boxes stay visible.
        colours: per image, one RGB colour per box; default ``BOX_COLOUR``.
    """
    from torchvision.utils import draw_bounding_boxes, make_grid

    x = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    tiles = []
    for i in range(len(x)):
        tile = x[i]
        if boxes is not None:
            # pixel box -> the outline one pixel outside it (draw_bounding_boxes includes both ends)
            h, w = tile.shape[-2:]
            b = boxes[i].reshape(-1, 4).float() * scale + torch.tensor([-1.0, -1.0, 0.0, 0.0])
            b[:, 0::2], b[:, 1::2] = b[:, 0::2].clamp(0, w - 1), b[:, 1::2].clamp(0, h - 1)
            colour = list(colours[i]) if colours is not None else [BOX_COLOUR] * len(b)
            tile = draw_bounding_boxes(tile, b, colors=colour, width=1)
        tiles.append(tile)
    return make_grid(torch.stack(tiles).float() / 255, nrow=nrow, padding=2, pad_value=0.5)


def preview(
    name: str,
    out: str | Path,
    n: int = 32,
    nrow: int = 8,
    scale: int = 2,
    split: str = "test",
    overrides: Sequence[str] = (),
) -> Path:
    """Compose ``data=<name>``, instantiate it and write ``n`` samples with boxes to ``out`` (PNG)."""
    from hydra.utils import instantiate
    from torchvision.utils import save_image

    cfg = compose_data_config(name, overrides)
    if "device" in cfg:
        cfg.device = "cpu"
    datamodule = instantiate(cfg)
    batch = samples(datamodule, split, n)
    images, boxes, colours = batch["image"], batch.get("box"), None
    if "boxes" in batch:  # several objects per canvas: the label's class in one colour, others in another
        boxes = batch["boxes"]
        marked = (batch["digit_labels"] == batch["label"][:, None]).tolist()
        colours = [[BOX_COLOUR if m else OTHER_COLOUR for m in row] for row in marked]
    side = max(images.shape[-2:])
    if side > MAX_SIDE:  # large canvases: shrunk to fit, anti-aliased
        f = MAX_SIDE / side
        images = torch.nn.functional.interpolate(images, scale_factor=f, mode="bilinear", antialias=True)
        boxes, scale = (None if boxes is None else boxes * f), 1
    grid = draw(images, boxes, nrow=nrow, scale=scale, colours=colours)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, out)
    labels = batch["label"].tolist()
    rows = [" ".join(str(v) for v in labels[i : i + nrow]) for i in range(0, len(labels), nrow)]
    print(
        f"{out}: {len(labels)} {split} samples of {name}, image shape {tuple(batch['image'].shape[1:])}, "
        f"boxes {'drawn' if boxes is not None else 'absent'}; labels by row:\n  " + "\n  ".join(rows)
    )
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    options, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    preview(
        options["data"],
        options["out"],
        n=int(options["n"]),
        nrow=int(options["nrow"]),
        scale=int(options["scale"]),
        split=options["split"],
        overrides=overrides,
    )


if __name__ == "__main__":
    main()
