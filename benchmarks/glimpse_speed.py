"""Speed of stn.ops.glimpse against boxes_to_theta + affine_grid + grid_sample, in three modes.

Modes: ``infer`` (forward under torch.no_grad), ``boxes`` (forward + backward, gradients to the
boxes only: training, where images are data) and ``both`` (gradients to images and boxes). Each
cell times the baseline and glimpse alternately (interleaved, so load from other processes hits
both alike) and reports medians and the ratio baseline / glimpse (above 1: glimpse is faster),
at each thread count asked for. A second table prices ``antialias=True`` against plain glimpse
and against the cheapest alternative that also anti-aliases: average-pooling the image by the
shrink factor, then grid_sample. Prints markdown tables, ready for the README.

    python benchmarks/glimpse_speed.py                       # CPU: torch's threads and 1 thread
    python benchmarks/glimpse_speed.py --threads 1 --repeats 31
    python benchmarks/glimpse_speed.py --threads 1 --clock cpu  # CPU time of the thread: robust to load
    python benchmarks/glimpse_speed.py --device cuda         # CUDA (synchronized timings)
    python benchmarks/glimpse_speed.py --quick               # smoke run
    python benchmarks/glimpse_speed.py --dry-run             # every cell once, batch 1 (tests)

Boxes: random, side 25% to 100% of the image side, centres uniform over the image (so some boxes
leave the image), padding zeros; the many-boxes shape crops 16 boxes from each image (the
baseline gathers images[idx], as a per-glimpse grid_sample must). The anti-aliasing shapes use
boxes exactly 4 times the glimpse size (a 4x shrink), inside the image.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from _machine import cpu_model, load_average  # benchmarks/_machine.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stn.ops import glimpse  # noqa: E402
from stn.ops.boxes import boxes_to_theta  # noqa: E402

# (name, B, K boxes per image, C, H, W, h, w)
SHAPES = [
    ("mnist", 256, 1, 1, 60, 60, 28, 28),
    ("cifar", 256, 1, 3, 32, 32, 32, 32),
    ("imagenet", 64, 1, 3, 224, 224, 64, 64),
    ("large image", 32, 1, 1, 512, 512, 28, 28),
    ("many boxes", 16, 16, 3, 224, 224, 32, 32),
]
# anti-aliasing at a 4x shrink: (name, B, C, H, W, h, w)
AA_SHAPES = [
    ("mnist 4x", 256, 1, 112, 112, 28, 28),
    ("imagenet 4x", 64, 3, 256, 256, 64, 64),
]
MODES = ("infer", "boxes", "both")


def random_boxes(n, height, width, g):
    side = torch.rand(n, 2, generator=g) * 0.75 + 0.25
    centre = torch.rand(n, 2, generator=g)
    scale = torch.tensor([width, height], dtype=torch.float32)
    return torch.cat([(centre - side / 2) * scale, (centre + side / 2) * scale], dim=1)


def baseline(images, boxes, size, idx=None):
    """The usual spatial-transformer crop; with idx, of images[idx]."""
    src = images if idx is None else images[idx]
    theta = boxes_to_theta(boxes, images.shape[-2:])
    grid = F.affine_grid(theta, [boxes.shape[0], images.shape[1], *size], align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def ours(images, boxes, size, shape):
    """glimpse of boxes viewed as ``shape``: (B, 4) or (B, K, 4)."""
    return glimpse(images, boxes.view(shape), size)


def pooled_baseline(images, boxes, size, factor):
    """Cheapest anti-aliased alternative: average-pool by the shrink factor, then grid_sample."""
    return baseline(F.avg_pool2d(images, factor), boxes / factor, size)


CLOCK = time.perf_counter  # wall clock; --clock cpu: time.thread_time (1 thread only)


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = CLOCK()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return CLOCK() - start


def runner(fn, mode, images, boxes, grad):
    """A call of fn(images, boxes) in the given mode, with fresh leaves (no grad accumulation)."""

    def run():
        if mode == "infer":
            with torch.no_grad():
                fn(images, boxes)
            return
        i = images.detach().requires_grad_(mode == "both")
        b = boxes.detach().requires_grad_()
        fn(i, b).backward(grad)

    return run


def interleaved(runs, device, repeats):
    """Median seconds per name of runs, the calls alternating in rotating order."""
    names = list(runs)
    for _ in range(3 if repeats > 1 else 0):  # warm-up (allocator, thread pool)
        for name in names:
            runs[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(runs[name], device))
    return {name: statistics.median(t) for name, t in times.items()}


def batch_size(b, scale):
    """The batch of a cell: ``b`` divided by ``scale`` (at least 1)."""
    return max(1, b // scale)


def speed_cells(device, repeats, scale):
    for name, b, k, c, hh, ww, h, w in SHAPES:
        b = batch_size(b, scale)
        g = torch.Generator().manual_seed(0)
        images = torch.rand(b, c, hh, ww, generator=g).to(device)
        boxes = random_boxes(b * k, hh, ww, g).to(device)
        idx = torch.arange(b).repeat_interleave(k).to(device) if k > 1 else None
        shaped = boxes.view(b, k, 4) if k > 1 else boxes
        grad = torch.randn(b * k, c, h, w, generator=g).to(device)
        ours_grad = grad.view(b, k, c, h, w) if k > 1 else grad
        for mode in MODES:
            runs = {
                "base": runner(partial(baseline, size=(h, w), idx=idx), mode, images, boxes, grad),
                "glimpse": runner(
                    partial(ours, size=(h, w), shape=shaped.shape), mode, images, boxes, ours_grad
                ),
            }
            label = f"{b}x{c}x{hh}x{ww}" + (f", {k} boxes each" if k > 1 else "") + f" -> {h}x{w}"
            yield (name, label, mode), interleaved(runs, device, repeats)


def antialias_cells(device, repeats, scale):
    for name, b, c, hh, ww, h, w in AA_SHAPES:
        b = batch_size(b, scale)
        g = torch.Generator().manual_seed(0)
        images = torch.rand(b, c, hh, ww, generator=g).to(device)
        corner = torch.rand(b, 2, generator=g) * torch.tensor([ww - 4 * w, hh - 4 * h])
        corner = corner.floor()  # whole pixels, so the pooled image's pixels line up with the box
        boxes = torch.cat([corner, corner + torch.tensor([4.0 * w, 4.0 * h])], 1).to(device)
        grad = torch.randn(b, c, h, w, generator=g).to(device)
        for mode in MODES:
            runs = {
                "plain": runner(partial(glimpse, size=(h, w)), mode, images, boxes, grad),
                "pooled": runner(partial(pooled_baseline, size=(h, w), factor=4), mode, images, boxes, grad),
                "antialias": runner(partial(glimpse, size=(h, w), antialias=True), mode, images, boxes, grad),
            }
            yield (name, f"{b}x{c}x{hh}x{ww} -> {h}x{w}", mode), interleaved(runs, device, repeats)


def with_threads(threads, cells):
    """Run the generator ``cells`` with torch.set_num_threads(threads), restoring it after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return list(cells)
    finally:
        torch.set_num_threads(saved)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--threads",
        default=None,
        help="comma-separated thread counts, one table column each (default on CPU: torch's default and 1)",
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per cell (default 15)")
    parser.add_argument("--quick", action="store_true", help="3 repeats and 1/8 of the batches: a smoke run")
    parser.add_argument(
        "--dry-run", action="store_true", help="every cell once at batch 1: checks that it runs"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall (default) or cpu: the CPU time of the calling thread, which other processes on a "
        "shared machine do not inflate (CPU with --threads 1 only)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    default = torch.get_num_threads()
    if args.threads:
        threads = [int(t) for t in args.threads.split(",")]
    else:
        threads = [default] if device.type == "cuda" or default == 1 else [default, 1]
    if args.clock == "cpu":
        if device.type != "cpu" or threads != [1]:
            parser.error("--clock cpu: only on the CPU with --threads 1 (it times the calling thread)")
        global CLOCK
        CLOCK = time.thread_time
    repeats, scale = (1, 1 << 20) if args.dry_run else (3, 8) if args.quick else (args.repeats, 1)
    start = time.perf_counter()

    argv_line = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"command: python benchmarks/glimpse_speed.py {argv_line}".rstrip())
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; torch's default threads {default}")
    if device.type == "cuda":
        print(f"CUDA device: {torch.cuda.get_device_name(device)}")
    print(f"load average at start (1/5/15 min): {load_average()}")
    clock = "CPU time of the thread" if args.clock == "cpu" else "wall clock"
    print(f"device {device}, float32, median of {repeats} interleaved repeats, {clock}\n")
    if args.dry_run:
        print("dry run: every cell once at batch 1; the times below mean nothing\n")

    speed = {t: with_threads(t, speed_cells(device, repeats, scale)) for t in threads}
    head = "".join(f" | {t} thr: base ms | glimpse ms | ratio" for t in threads)
    print(f"| shape | mode{head} |")
    print("|---|---" + "|---:|---:|---:" * len(threads) + "|")
    for row, ((name, label, mode), _) in enumerate(speed[threads[0]]):
        cells = ""
        for t in threads:
            res = speed[t][row][1]
            base, ours = res["base"] * 1e3, res["glimpse"] * 1e3
            cells += f" | {base:.2f} | {ours:.2f} | {base / ours:.2f}x"
        print(f"| {name}: {label} | {mode}{cells} |", flush=True)

    aa = {t: with_threads(t, antialias_cells(device, repeats, scale)) for t in threads}
    head = "".join(f" | {t} thr: plain / pooled / antialias ms | aa / plain | aa / pooled" for t in threads)
    print(f"\n| 4x shrink | mode{head} |")
    print("|---|---" + "|---:|---:|---:" * len(threads) + "|")
    for row, ((name, label, mode), _) in enumerate(aa[threads[0]]):
        cells = ""
        for t in threads:
            res = {k: v * 1e3 for k, v in aa[t][row][1].items()}
            cells += (
                f" | {res['plain']:.2f} / {res['pooled']:.2f} / {res['antialias']:.2f}"
                f" | {res['antialias'] / res['plain']:.2f}x | {res['antialias'] / res['pooled']:.2f}x"
            )
        print(f"| {name}: {label} | {mode}{cells} |", flush=True)
    print(
        f"\nload average at end (1/5/15 min): {load_average()}; run time {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
