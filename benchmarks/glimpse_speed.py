"""Speed of stn.ops.glimpse against boxes_to_theta + affine_grid + grid_sample.

Forward (under torch.no_grad) and forward + backward (gradients to images and boxes) at a few
shapes, each with and without anti-aliasing on our side; the baseline is always plain bilinear
grid_sample, which cannot anti-alias. Baseline and ours alternate within every repeat (so that
load from other processes hits both alike) and the table reports medians.

    python benchmarks/glimpse_speed.py                 # CPU, and CUDA too when present
    python benchmarks/glimpse_speed.py --device cpu --repeats 50
    python benchmarks/glimpse_speed.py --quick         # smoke run
    python benchmarks/glimpse_speed.py --threads 1 --clock cpu   # robust on a busy machine

Boxes: random, side 25% to 100% of the image side, centres uniform over the image (so some boxes
leave the image), padding zeros.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _machine import (
    cpu_model,
    load_average,
)  # benchmarks/_machine.py: scripts run as `python benchmarks/<name>.py`

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stn.ops import glimpse  # noqa: E402
from stn.ops.boxes import boxes_to_theta  # noqa: E402

SHAPES = [  # (B, C, H, W, h, w)
    (256, 1, 60, 60, 28, 28),
    (256, 3, 32, 32, 32, 32),
    (64, 3, 224, 224, 64, 64),
]


def make_inputs(shape, device, dtype=torch.float32, seed=0):
    b, c, hh, ww, h, w = shape
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, c, hh, ww, generator=g, dtype=dtype)
    side = torch.rand(b, 2, generator=g, dtype=dtype) * 0.75 + 0.25
    centre = torch.rand(b, 2, generator=g, dtype=dtype)
    scale = torch.tensor([ww, hh], dtype=dtype)
    boxes = torch.cat([(centre - side / 2) * scale, (centre + side / 2) * scale], dim=1)
    grad = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    return images.to(device), boxes.to(device), grad.to(device)


def baseline(images, boxes, size):
    theta = boxes_to_theta(boxes, images.shape[-2:])
    grid = F.affine_grid(theta, [boxes.shape[0], images.shape[1], *size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def ours(images, boxes, size, antialias):
    return glimpse(images, boxes, size, antialias=antialias)


CLOCK = time.perf_counter


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = CLOCK()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return CLOCK() - start


def measure(shape, antialias, device, repeats):
    """Median seconds: {(pass, who): t} with pass in fwd, fwd+bwd and who in base, ours."""
    images, boxes, grad = make_inputs(shape, device)
    size = shape[4:]
    images.requires_grad_(True)
    boxes.requires_grad_(True)

    def fwd(f):
        def run():
            with torch.no_grad():
                f()

        return run

    def fwd_bwd(f):
        def run():
            images.grad = boxes.grad = None
            f().backward(grad)

        return run

    base_fn = lambda: baseline(images, boxes, size)  # noqa: E731
    our_fn = lambda: ours(images, boxes, size, antialias)  # noqa: E731
    results = {}
    for name, wrap in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        runs = {"base": wrap(base_fn), "ours": wrap(our_fn)}
        for _ in range(5):  # warm-up (allocator, thread pool), interleaved too
            for run in runs.values():
                run()
        times = {"base": [], "ours": []}
        for r in range(repeats):
            order = ("base", "ours") if r % 2 == 0 else ("ours", "base")
            for who in order:
                times[who].append(timed(runs[who], device))
        for who in times:
            results[(name, who)] = statistics.median(times[who])
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", action="append", help="cpu, cuda (repeatable); default cpu and cuda if present"
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats per cell (default 30)")
    parser.add_argument("--quick", action="store_true", help="3 repeats and smaller batches: a smoke run")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: time.perf_counter (default); cpu: CPU time of the calling thread "
        "(time.thread_time), immune to other processes preempting this one on a shared machine; "
        "needs --threads 1 and --device cpu",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    if args.clock == "cpu":
        if torch.get_num_threads() != 1 or (args.device or ["cpu"]) != ["cpu"]:
            parser.error("--clock cpu measures one thread: use it with --threads 1 --device cpu")
        CLOCK = time.thread_time
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    repeats = 3 if args.quick else args.repeats
    shapes = [(max(1, s[0] // 8),) + s[1:] for s in SHAPES] if args.quick else SHAPES

    args_line = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"command: python benchmarks/glimpse_speed.py {args_line}".rstrip())
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print(f"load average at start (1/5/15 min): {load_average()}")
    for dev in devices:
        device = torch.device(dev)
        if device.type == "cuda":
            print(f"CUDA device: {torch.cuda.get_device_name(device)}")
        clock = "CPU time of the thread" if CLOCK is time.thread_time else "wall clock"
        print(f"\n### device: {dev}, float32, median of {repeats} interleaved repeats, {clock}\n")
        print(
            "| B | C | image | glimpse | antialias | pass"
            " | affine_grid+grid_sample (ms) | glimpse (ms) | ratio |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for shape in shapes:
            for antialias in (False, True):
                res = measure(shape, antialias, device, repeats)
                b, c, hh, ww, h, w = shape
                for name in ("fwd", "fwd+bwd"):
                    tb, to = res[(name, "base")] * 1e3, res[(name, "ours")] * 1e3
                    print(
                        f"| {b} | {c} | {hh}x{ww} | {h}x{w} | {'yes' if antialias else 'no'} | {name} "
                        f"| {tb:.3f} | {to:.3f} | {tb / to:.2f}x |",
                        flush=True,
                    )
    print(f"\nload average at end (1/5/15 min): {load_average()}")


if __name__ == "__main__":
    main()
