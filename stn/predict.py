"""Run a trained model on image files: ``python predict.py ckpt_path=<file.ckpt> inputs=<...> out=<folder>``.

For every file, one row of ``<out>/predictions.csv`` with the columns ``file, label, class_name,
prob, boxes, error``: the predicted class index and name, its softmax probability, the boxes as a
JSON list of ``[x1, y1, x2, y2]`` in the file's own pixels (whole image ``[0, 0, W, H]``), and
``error`` empty when the file was read (else the reason, and the other columns empty). And per
readable file ``<out>/<name>.png``: the image with its boxes drawn (red) and the glimpses beside it.

Files are read with PIL (any size; grey, RGB, RGBA, palette, 16-bit, JPEG...) and converted as
the model's training data was (:mod:`stn.convert`).
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as TF

from stn.convert import pil_to_tensor, tensor_to_pil, to_channels
from stn.inference import TrainedModel, load_model
from stn.pictures import box_tiles
from stn.validation import ConfigError

log = logging.getLogger(__name__)

COLUMNS = ("file", "label", "class_name", "prob", "boxes", "error")
# Pictures: small inputs are upscaled (nearest) to at least this height, large ones shrunk to this side.
MIN_HEIGHT, MAX_SIDE = 112, 1024


def find_inputs(inputs: str) -> List[Path]:
    """The files ``inputs`` names: a file; a folder (its image files, by extension, recursively); or
    a glob pattern (``*``, ``?``, ``[...]``; ``**`` recursive). Sorted; raises :class:`ConfigError`
    when nothing matches."""
    path = Path(str(inputs)).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS))
        if not files:
            raise ConfigError(
                f"inputs={inputs!r}: the folder has no image files ({', '.join(IMG_EXTENSIONS)})"
            )
        return files
    if any(c in str(path) for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise ConfigError(f"inputs={inputs!r}: no files match this pattern")
        return files
    raise ConfigError(f"inputs={inputs!r}: no such file or folder (and not a glob pattern)")


def read_image(path: Path) -> Tensor:
    """The image file as float32 (C, H, W) in [0, 1] at its own size (:func:`stn.convert.pil_to_tensor`)."""
    with Image.open(path) as image:
        image.load()
        return pil_to_tensor(image)


def picture(image: Tensor, boxes: Tensor, glimpses: Tensor) -> Tensor:
    """uint8 (3, H', W'): ``image`` (C, H, W) in [0, 1] with ``boxes`` (G, 4, its pixels) in red,
    and the G ``glimpses`` (G, C, h, w) beside it at the same height. Small images are upscaled
    (nearest, whole factors) to at least ``MIN_HEIGHT``, large ones shrunk to ``MAX_SIDE``."""
    image = to_channels(image, 3)
    h, w = image.shape[-2:]
    scale = min(8, math.ceil(MIN_HEIGHT / h))
    if max(h, w) > MAX_SIDE:
        shrink = MAX_SIDE / max(h, w)
        image = TF.resize(image, [max(1, round(h * shrink)), max(1, round(w * shrink))], antialias=True)
        boxes = boxes * torch.tensor([image.shape[-1] / w, image.shape[-2] / h] * 2)
    drawn = box_tiles(image[None], boxes[None], scale=scale)[0]
    height = drawn.shape[-2]
    gap = torch.full((3, height, 4), 128, dtype=torch.uint8)
    tiles = [drawn]
    for g in glimpses:
        g = to_channels(g.float().clamp(0, 1), 3)
        size = (height, max(1, round(g.shape[-1] * height / g.shape[-2])))
        tile = F.interpolate(g[None], size=size, mode="nearest")[0]
        tiles += [gap, (tile * 255).round().to(torch.uint8)]
    return torch.cat(tiles, dim=-1)


def _unique_names(files: List[Path]) -> List[str]:
    """``<stem>.png`` per file; a stem seen before gets ``-2``, ``-3``, ... appended."""
    seen: Dict[str, int] = {}
    names = []
    for f in files:
        n = seen.get(f.stem, 0) + 1
        seen[f.stem] = n
        names.append(f"{f.stem}.png" if n == 1 else f"{f.stem}-{n}.png")
    return names


def _chunks(items: List, size: int) -> Iterable[List]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_files(
    model: TrainedModel, files: List[Path], out: Path, batch_size: int = 64, pictures: bool = True
) -> List[Dict[str, object]]:
    """Predict every file; write ``out/predictions.csv`` (and the pictures); return its rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, object]] = []
    for chunk in _chunks(list(zip(files, _unique_names(files))), batch_size):
        images, done = [], []
        for path, name in chunk:
            try:
                images.append(read_image(path))
                done.append((path, name))
            except Exception as err:  # not an image, truncated, unsupported mode: report, go on
                rows.append({**dict.fromkeys(COLUMNS, ""), "file": str(path), "error": _reason(err)})
        if not images:
            continue
        pred = model.predict(images, batch_size=batch_size)
        for i, (path, name) in enumerate(done):
            boxes = pred["boxes"][i]
            rows.append(
                {
                    "file": str(path),
                    "label": int(pred["labels"][i]),
                    "class_name": pred["class_names"][i],
                    "prob": f"{float(pred['probs'][i]):.6f}",
                    "boxes": json.dumps([[round(float(v), 2) for v in box] for box in boxes]),
                    "error": "",
                }
            )
            if pictures:
                tensor_to_pil(picture(images[i], boxes, pred["glimpses"][i])).save(out / name)
    order = {str(f): i for i, f in enumerate(files)}
    rows.sort(key=lambda r: order[r["file"]])
    with open(out / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".replace("\n", " ")


def _device(name: Optional[str]) -> str:
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


def predict_task(cfg: DictConfig) -> Path:
    """``predict.py``: the model of ``cfg.ckpt_path`` on ``cfg.inputs``, results in ``cfg.out``."""
    files = find_inputs(cfg.inputs)
    model = load_model(cfg.ckpt_path, device=_device(cfg.get("device")))
    out = Path(cfg.out or cfg.paths.output_dir).expanduser()
    batch_size = cfg.get("batch_size", 64)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size={batch_size!r}: must be a positive int")
    rows = predict_files(model, files, out, batch_size, pictures=cfg.get("pictures", True))
    failed = sum(1 for r in rows if r["error"])
    log.info("%d files, %d not readable: %s", len(rows), failed, out / "predictions.csv")
    return out
