"""Look at a dataset: a grid of samples with their true boxes, from the real Hydra data config.

Usage::

    python -m stn.data.preview data=cluttered_mnist out=cluttered.png [n=32] [nrow=8] [scale=2]
        [split=test|val|train] [canvas_size=100 num_pieces=8 ...] [paths.data_dir=... seed=...]

``key=value`` pairs that are not preview options override the data config (``canvas_size=100``
means ``data.canvas_size=100``); dotted keys (``paths.data_dir=...``) and ``seed=...`` go to the
composed config as they are. The config is ``configs/train.yaml`` with ``data=<name>``, so the
preview shows the very samples (same seed) a training run validates and tests on. It is drawn by
:func:`stn.pictures.box_grid`, like TensorBoard's ``val/boxes``: the true box in green, one pixel
outside the box's pixels (the outline never covers the digit), and the true class in green above
each tile. Tiles are at most ``MAX_SIDE`` pixels a side (:func:`stn.pictures.fit`: the upscaling
lowered, larger canvases shrunk anti-aliased, as in TensorBoard); on
data with several objects per canvas (Megapixel MNIST's ``boxes``) the digits of the label's class
are drawn in green, the others in pale green (``stn.pictures.OTHER_TRUE_COLOUR``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
MAX_SIDE = 512
OPTIONS = {"data": None, "out": None, "n": "32", "nrow": "8", "scale": "2", "split": "test"}


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
    """The resolved ``data`` node of ``train.yaml`` composed with ``data=<name>`` and ``overrides``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(config_dir), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={name}", *overrides])
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
    from PIL import Image

    from stn.pictures import box_grid

    cfg = compose_data_config(name, overrides)
    if "device" in cfg:
        cfg.device = "cpu"
    datamodule = instantiate(cfg)
    batch = samples(datamodule, split, n)
    # several objects per canvas (boxes, digit_labels): the label's class green, the others pale green
    boxes = batch.get("boxes", batch.get("box"))
    classes = tuple(datamodule.classes) or None
    grid = box_grid(
        batch["image"],
        true_boxes=boxes,
        true_labels=batch["label"],
        class_names=classes,
        scale=scale,
        nrow=nrow,
        true_box_labels=batch.get("digit_labels"),
        max_side=MAX_SIDE,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(out)
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
