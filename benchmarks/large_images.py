"""Compute and memory of the Megapixel MNIST models, measured in one run: the attention model
(experiment=megapixel_mnist) against the full-resolution CNN (experiment=megapixel_mnist_cnn) and
the low-resolution CNN (the same with model.view_scale=0.12 model.stem_stride=1).

For each model, in a fresh subprocess so that one model's peak memory does not hide another's:

- forward FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``, eval mode; convolutions
  and matrix products: the glimpse sampling and the view's resize are gathers and are not counted);
- peak memory of a training step (forward, backward, AdamW step) on a batch, its rendering
  included: the peak resident set size less the resident size before the step (CPU, Linux), or
  ``torch.cuda.max_memory_allocated`` (GPU);
- training images per second over ``--steps`` steps after one warm-up step, batches rendered by the
  datamodule as in training, and the time of an epoch of the 4500 training canvases at that rate.

Usage::

    python benchmarks/large_images.py [--canvas-size 1500] [--batch-size 8] [--steps 3]
        [--device cpu|cuda] [--threads N] [--data-dir DIR] [--json out.json]

MNIST comes from ``--data-dir`` (default ``$STN_DATA_DIR`` or ``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODELS = {
    "attention (topk_glimpse)": ["experiment=megapixel_mnist"],
    "full-res CNN (stride-4 stem)": ["experiment=megapixel_mnist_cnn"],
    "low-res CNN (0.12x view)": [
        "experiment=megapixel_mnist_cnn",
        "model.view_scale=0.12",
        "model.stem_stride=1",
    ],
}
TRAIN_CANVASES = 4500  # 5000 less the 500 held out for validation


def _current_rss() -> int:
    """Resident set size now, in bytes (the baseline the step's peak is measured from)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(name: str, args) -> dict:
    """Build one model from the real configs and measure it (runs in its own process)."""
    import torch
    from hydra import compose, initialize_config_dir
    from torch.utils.flop_counter import FlopCounterMode

    from stn.tasks import build

    torch.set_num_threads(args.threads)
    overrides = MODELS[name] + [
        f"paths.data_dir={args.data_dir}",
        "data.download=false",
        f"data.canvas_size={args.canvas_size}",
        f"data.batch_size={args.batch_size}",
        f"data.train_size={max(64, args.batch_size * (args.steps + 1) + 32)}",
        "data.val_size=32",
        # the recipe's statistics, given: measuring them would render canvases before the baseline
        "data.mean=[0.0015]",
        "data.std=[0.0367]",
        "data.test_size=8",
        f"data.device={args.device}",
    ]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule, module = build(cfg)
    device = torch.device(args.device)
    model = module.model.to(device)
    params = sum(p.numel() for p in model.parameters())
    loader = datamodule.train_dataloader()

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = iter(loader)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss()

    def step() -> None:
        batch = next(batches)
        loss = torch.nn.functional.cross_entropy(model(batch["image"])["logits"], batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up, and the peak-memory step
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(next(iter(loader))["image"][:1])
    flops = counter.get_total_flops()
    ips = args.steps * args.batch_size / seconds
    return {
        "model": name,
        "params": params,
        "gflops_per_image": flops / 1e9,
        "peak_train_mb": peak / 2**20,
        "images_per_s": ips,
        "epoch_s": TRAIN_CANVASES / ips,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canvas-size", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    default_data = os.environ.get("STN_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", default=default_data)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one model
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        parser.error(f"--steps and --batch-size must be positive, got {args.steps} and {args.batch_size}")
    if args.one is not None:
        print(json.dumps(measure(args.one, args)))
        return

    from _machine import cpu_model, load_average

    rows = []
    for name in MODELS:
        cmd = [sys.executable, __file__, "--one", name] + [
            f"--{k.replace('_', '-')}={v}"
            for k, v in vars(args).items()
            if k not in ("one", "json") and v is not None
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"measuring {name} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"Megapixel MNIST {args.canvas_size}x{args.canvas_size}, training batch {args.batch_size}, "
        f"{args.steps} timed steps, device {args.device}, {args.threads} threads; CPU: {cpu_model()}; "
        f"load average {load_average()}\n"
    )
    header = ("model", "params", "forward GFLOPs / image", "peak training-batch MB", "images/s", "epoch (s)")
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params'] / 1e3:.0f}k | {r['gflops_per_image']:.3f} | "
            f"{r['peak_train_mb']:.0f} | {r['images_per_s']:.1f} | {r['epoch_s']:.0f} |"
        )
    att, full = rows[0], rows[1]
    print(
        f"\nattention vs full-res CNN: {full['gflops_per_image'] / att['gflops_per_image']:.1f}x fewer "
        "FLOPs, "
        f"{full['peak_train_mb'] / max(att['peak_train_mb'], 1e-9):.1f}x less peak training memory, "
        f"{att['images_per_s'] / full['images_per_s']:.1f}x the training throughput"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
