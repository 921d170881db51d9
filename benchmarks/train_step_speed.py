"""Whole-model effect of stn.ops.glimpse: one training step with it, and with a plain crop instead.

A training step is forward, cross-entropy, backward and an AdamW step (plain PyTorch, no
Lightning), of models built from the project's configs exactly as train.py composes them:

- ``model=attention`` on MNIST-size input (1x28x28), batch 128: localizer -> box -> 28x28 glimpse
  -> CNN;
- ``experiment=cluttered_mnist`` (``model=multi_glimpse``, 1x60x60), batch 128: one box, a
  two-level retina (the box anti-aliased to 28x28, and twice the box), stacked as channels;
- the large images: ``experiment=cluttered100_mnist`` (the same model on 100x100, batch 128) and
  ``experiment=megapixel_mnist`` (``model=topk_glimpse``: 10 anti-aliased 32x32 glimpses per
  image) on 500x500 canvases, batch 16 (a 1500x1500 batch of 128 would be 1.2 GB of input);
- any other ``--experiment`` given, at the image size and batch given.

The comparison is the same model, same initial weights, with every ``stn.ops.glimpse`` call
replaced by ``boxes_to_theta`` + ``F.affine_grid`` + ``F.grid_sample`` (the usual spatial
transformer crop; it cannot anti-alias, so for anti-aliased models it does less work). Steps of
the two alternate; the table gives medians and the ratio plain / glimpse (above 1: glimpse is
faster). Input values are random (the speed does not depend on them).

    python benchmarks/train_step_speed.py
    python benchmarks/train_step_speed.py --threads 1 --steps 40
    python benchmarks/train_step_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _machine import cpu_model, load_average  # benchmarks/_machine.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import stn.ops  # noqa: E402
from stn.ops.boxes import boxes_to_theta  # noqa: E402

# (label, hydra overrides, image size (C, H, W), batch)
MODELS = [
    ("model=attention, MNIST 28x28", ["model=attention"], (1, 28, 28), 128),
    ("experiment=cluttered_mnist (multi_glimpse), 60x60", ["experiment=cluttered_mnist"], (1, 60, 60), 128),
    (
        "experiment=cluttered100_mnist (multi_glimpse), 100x100",
        ["experiment=cluttered100_mnist"],
        (1, 100, 100),
        128,
    ),
    ("experiment=megapixel_mnist (topk_glimpse), 500x500", ["experiment=megapixel_mnist"], (1, 500, 500), 16),
]


def affine_crop(images, boxes, size, *, indices=None, padding_mode="zeros", fill=0.0, antialias=False):
    """The plain crop glimpse replaces: boxes_to_theta + affine_grid + grid_sample (no anti-aliasing)."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    lead = boxes.shape[:-1]
    flat = boxes.reshape(-1, 4)
    if indices is not None:
        src = images[indices]
    elif boxes.dim() == 3:
        src = images.repeat_interleave(boxes.shape[1], dim=0)
    else:
        src = images
    theta = boxes_to_theta(flat, images.shape[-2:])
    grid = F.affine_grid(theta, [flat.shape[0], images.shape[1], h, w], align_corners=False)
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    shifted = src if not fill.any() else src - fill
    out = F.grid_sample(shifted, grid, padding_mode=padding_mode, align_corners=False)
    out = out if not fill.any() else out + fill
    return out.reshape(*lead, images.shape[1], h, w)


def build(overrides, shape):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    c, h, w = shape
    return instantiate(
        cfg.model, in_channels=c, num_classes=10, image_size=(h, w), mean=(0.5,) * c, std=(0.25,) * c
    )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(overrides, shape, batch, device, steps):
    """Median seconds per training step: {"glimpse": t, "plain": t}."""
    torch.manual_seed(0)
    model = build(overrides, shape).to(device).train()
    models = {"glimpse": model, "plain": copy.deepcopy(model)}
    optims = {k: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4) for k, m in models.items()}
    crops = {"glimpse": stn.ops.glimpse, "plain": affine_crop}
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    times = {k: [] for k in models}
    real = stn.ops.glimpse
    try:
        for i in range(steps + 3):
            for name in ("glimpse", "plain") if i % 2 else ("plain", "glimpse"):
                stn.ops.glimpse = crops[name]  # the models call stn.ops.glimpse at run time
                sync(device)
                start = time.perf_counter()
                loss = F.cross_entropy(models[name](x)["logits"], y)
                optims[name].zero_grad(set_to_none=True)
                loss.backward()
                optims[name].step()
                sync(device)
                if i >= 3:  # warm-up
                    times[name].append(time.perf_counter() - start)
    finally:
        stn.ops.glimpse = real
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (default 20)")
    parser.add_argument(
        "--experiment",
        action="append",
        default=[],
        metavar="NAME:C:H:W:BATCH",
        help="also an experiment config at that input size and batch, e.g. cluttered_mnist:1:80:80:64",
    )
    parser.add_argument("--only", default=None, help="only the models whose label contains this text")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = [m for m in MODELS if args.only is None or args.only in m[0]]
    for spec in args.experiment:
        name, *size = spec.split(":")
        if len(size) != 4:
            parser.error(f"--experiment {spec!r}: expected NAME:C:H:W:BATCH")
        c, h, w, batch = map(int, size)
        models.append((f"experiment={name}, {h}x{w}", [f"experiment={name}"], (c, h, w), batch))
    argv_line = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"command: python benchmarks/train_step_speed.py {argv_line}".rstrip())
    print(
        f"CPU: {cpu_model()}; torch {torch.__version__}; threads {torch.get_num_threads()}; device {device}"
    )
    print(f"load average at start (1/5/15 min): {load_average()}")
    print(f"forward + cross-entropy + backward + AdamW, median of {args.steps} alternating steps\n")
    print("| model, input | batch | glimpse step (ms) | affine_grid+grid_sample step (ms) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for label, overrides, shape, batch in models:
        res = compare(overrides, shape, batch, device, args.steps)
        ours, plain = res["glimpse"] * 1e3, res["plain"] * 1e3
        print(f"| {label} | {batch} | {ours:.1f} | {plain:.1f} | {plain / ours:.2f}x |", flush=True)
    print(f"\nload average at end (1/5/15 min): {load_average()}")


if __name__ == "__main__":
    main()
