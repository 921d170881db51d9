"""How a trained single-box model's boxes fit the true boxes of its test set (synthetic data).

For each test image: the IoU of the (first) predicted box with the true box, the fraction of the
true box it covers, and its area over the true box's area; summarized over the images the model
got right and wrong, and over those with IoU <= 0.5 (what ``test/iou50`` misses: boxes that cut
the digit, coverage < 0.9, or boxes too large, area > 2x).

    STN_DATA_DIR=<data> python benchmarks/box_fit.py <run>/checkpoints/epoch_031.ckpt
"""

from __future__ import annotations

import argparse

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchvision.ops import box_area

from stn.inference import load_model, saved_config
from stn.metrics import paired_box_iou
from stn.validation import read_checkpoint


def fit(ckpt: str, batches: int = 0) -> torch.Tensor:
    """(N, 4) rows (correct, IoU, coverage, area ratio), one per test image of the checkpoint's
    data config (boxes ``x1, y1, x2, y2`` in pixels); ``batches`` > 0 stops after that many."""
    cfg = saved_config(read_checkpoint(OmegaConf.create({"ckpt_path": ckpt}))["stn_config"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    model = load_model(ckpt)
    rows = []
    with torch.no_grad():
        for i, batch in enumerate(datamodule.test_dataloader()):
            if batches and i >= batches:
                break
            out = model(batch["image"])
            boxes, true = out["boxes"].reshape(len(batch["image"]), -1, 4)[:, 0], batch["box"]
            correct = (out["logits"].argmax(-1) == batch["label"]).float()
            wh = (torch.min(boxes[:, 2:], true[:, 2:]) - torch.max(boxes[:, :2], true[:, :2])).clamp(min=0)
            true_area = box_area(true)
            cover, ratio = wh.prod(1) / true_area, box_area(boxes) / true_area
            rows.append(torch.stack([correct, paired_box_iou(boxes, true), cover, ratio], 1))
    return torch.cat(rows)


def summary(rows: torch.Tensor) -> list[str]:
    """Markdown table rows: all, right, wrong, IoU <= 0.5."""
    right = rows[:, 0] > 0
    lines = [
        f"test images {len(rows)}, error {100 * (1 - right.float().mean()):.2f}%, "
        f"iou50 {(rows[:, 1] > 0.5).float().mean():.3f}",
        "",
        "| images | count | median IoU | median coverage | median area ratio | coverage < 0.9 | area > 2x |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, sel in (("right", right), ("wrong", ~right), ("IoU <= 0.5", rows[:, 1] <= 0.5)):
        part = rows[sel]
        if len(part) == 0:
            lines.append(f"| {name} | 0 | - | - | - | - | - |")
            continue
        iou, cover, ratio = part[:, 1:].median(0).values.tolist()
        lines.append(
            f"| {name} | {len(part)} | {iou:.2f} | {cover:.2f} | {ratio:.2f} | "
            f"{(part[:, 2] < 0.9).float().mean():.2f} | {(part[:, 3] > 2).float().mean():.2f} |"
        )
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a train.py checkpoint of a box model trained on synthetic data")
    parser.add_argument("--batches", type=int, default=0, help="only this many test batches (0: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("\n".join(summary(fit(args.ckpt, args.batches))))


if __name__ == "__main__":
    main()
