"""Data speed: one training epoch of batches, our in-memory pipeline against the usual DataLoader path.

Rows, each one epoch of the same 55,000 training digits in batches of 128 (``drop_last``), ending
in normalized float32 batches on the device:

- MNIST, ours: ``MNISTDataModule``'s ``TensorLoader`` (uint8 tensor on the device, one index and
  one float conversion per batch) plus ``(x - mean) / std``.
- MNIST, torchvision: ``datasets.MNIST(transform=Compose([ToTensor(), Normalize]))`` and a
  shuffling ``DataLoader`` (PIL image per sample), for each ``--workers`` setting.
- Cluttered MNIST (60x60, 4 pieces of 8x8), ours: ``ClutteredMNISTDataModule``'s training loader,
  which composes fresh canvases, clutter and true boxes per batch on the device.
- Cluttered MNIST, per-sample: the same recipe written the common way, a ``Dataset`` whose
  ``__getitem__`` pastes one digit and its clutter with tensor slicing, behind a ``DataLoader``.
- Ours only: translated and distorted (r, rts, p, e) training epochs.

Then the data time per batch as a fraction of one training step (forward, cross-entropy,
backward, AdamW step; batch 128) of the default model, ``configs/model/attention.yaml``
(``stn.models.AttentionModel``), built for each dataset's image size (28, 42, 60). The step is
plain PyTorch, without Lightning's own overhead, so the fraction is an upper bound.

    python benchmarks/data_speed.py                                   # everything, CPU
    python benchmarks/data_speed.py --save benchmarks/RESULTS_data.md # also write the table
    python benchmarks/data_speed.py --quick                           # smoke run on 1/10 epoch

Epoch times are medians over ``--repeats`` runs (torchvision and per-sample rows: one run each
unless ``--repeats-slow``), after one warm-up batch. Runs alternate between rows so that load from
other processes falls on all of them alike; the machine's load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F
from _machine import (
    cpu_model,
    load_average,
)  # benchmarks/_machine.py: scripts run as `python benchmarks/<name>.py`

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stn.data.mnist import MNIST_MEAN, MNIST_STD, MNISTDataModule  # noqa: E402
from stn.data.synthetic import (  # noqa: E402
    ClutteredMNISTDataModule,
    DistortedMNISTDataModule,
    TranslatedMNISTDataModule,
    tight_boxes,
)

BATCH = 128


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epoch(
    batches: Callable[[], Iterable], consume: Callable, device: torch.device, limit: Optional[int]
) -> tuple:
    """Seconds for one pass over ``batches()`` (first batch excluded as warm-up), and batch count."""
    it = iter(batches())
    consume(next(it))
    sync(device)
    n = 0
    start = time.perf_counter()
    for batch in it:
        consume(batch)
        n += 1
        if limit is not None and n >= limit:
            break
    sync(device)
    return time.perf_counter() - start, n


# -- the per-sample baselines ---------------------------------------------------------------------
class PerSampleCluttered(torch.utils.data.Dataset):
    """Cluttered MNIST composed per sample (the common implementation), for comparison."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, canvas=60, pieces=4, piece=8, seed=0):
        self.images, self.labels = images, labels
        self.canvas, self.pieces, self.piece = canvas, pieces, piece
        self.seed = seed
        self.mean, self.std = MNIST_MEAN[0], MNIST_STD[0]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        c, p, n = self.canvas, self.piece, len(self.labels)
        canvas = torch.zeros(1, c, c)
        digit = self.images[i].float() / 255
        x, y = torch.randint(0, c - 28 + 1, (2,), generator=g).tolist()
        canvas[:, y : y + 28, x : x + 28] = digit
        box = tight_boxes(canvas[None])[0]
        for _ in range(self.pieces):
            s = (i + torch.randint(1, n, (1,), generator=g).item()) % n
            cx, cy, tx, ty = (
                torch.randint(0, 28 - p + 1, (2,), generator=g).tolist()
                + torch.randint(0, c - p + 1, (2,), generator=g).tolist()
            )
            piece = self.images[s, :, cy : cy + p, cx : cx + p].float() / 255
            canvas[:, ty : ty + p, tx : tx + p] = torch.maximum(canvas[:, ty : ty + p, tx : tx + p], piece)
        return (canvas - self.mean) / self.std, self.labels[i], box


def torchvision_mnist(data_dir: str, indices: torch.Tensor):
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MNIST_MEAN, MNIST_STD)])
    ds = datasets.MNIST(data_dir, train=True, download=False, transform=tf)
    return torch.utils.data.Subset(ds, indices.tolist())


def loader(ds, workers: int, seed: int = 0):
    return torch.utils.data.DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )


# -- the training step -------------------------------------------------------------------------------
def default_model(image_size: int, mean, std):
    """The default model from its config (configs/model/attention.yaml), for the given images."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(overrides=["+model=attention"])
    return instantiate(
        cfg.model,
        in_channels=1,
        num_classes=10,
        image_size=(image_size, image_size),
        mean=tuple(mean),
        std=tuple(std),
    ), "configs/model/attention.yaml (stn.models.AttentionModel)"


def step_time(model, image_size: int, device: torch.device, steps: int) -> float:
    """Median seconds of one forward + backward + AdamW step at batch 128."""
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 1, image_size, image_size, generator=g).to(device)
    y = torch.randint(0, 10, (BATCH,), generator=g).to(device)
    times = []
    for i in range(steps + 3):
        sync(device)
        t = time.perf_counter()
        out = model(x)
        logits = out["logits"] if isinstance(out, dict) else out
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


# -- main ----------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> None:
    default_data = os.environ.get("STN_DATA_DIR") or str((ROOT / ".." / "shared" / "data").resolve())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data-dir",
        default=default_data,
        help="folder with MNIST/raw (default $STN_DATA_DIR or ../shared/data)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        help="DataLoader num_workers settings to time (default: 0 and the number of CPUs)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs per row of ours (median)")
    ap.add_argument("--repeats-slow", type=int, default=1, help="runs per DataLoader row")
    ap.add_argument("--steps", type=int, default=20, help="training steps timed (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="1/10 of an epoch per row, for a smoke run")
    ap.add_argument("--save", default=None, help="also write the table (markdown) to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = args.workers if args.workers is not None else sorted({0, cpus})
    limit = (55000 // BATCH) // 10 if args.quick else None
    dev = str(device)

    mean = torch.tensor(MNIST_MEAN, device=device).view(1, -1, 1, 1)
    std = torch.tensor(MNIST_STD, device=device).view(1, -1, 1, 1)

    def normalize(batch):  # ours: float [0, 1] on the device -> normalized
        return (batch["image"] - mean) / std

    def to_device(batch):  # DataLoader: CPU tensors -> device
        return batch[0].to(device, non_blocking=True)

    # datamodules: load once (reported separately)
    t = time.perf_counter()
    mnist = MNISTDataModule(args.data_dir, download=False, device=dev)
    mnist.setup()
    setup_mnist = time.perf_counter() - t
    t = time.perf_counter()
    cluttered = ClutteredMNISTDataModule(args.data_dir, download=False, device=dev)
    cluttered.setup()
    setup_clutter = time.perf_counter() - t
    others = {
        "translated 60x60": TranslatedMNISTDataModule(args.data_dir, download=False, device=dev),
        "distorted r 28x28": DistortedMNISTDataModule(
            args.data_dir, distortion="r", download=False, device=dev
        ),
        "distorted rts 42x42": DistortedMNISTDataModule(
            args.data_dir, distortion="rts", download=False, device=dev
        ),
        "distorted p 28x28": DistortedMNISTDataModule(
            args.data_dir, distortion="p", download=False, device=dev
        ),
        "distorted e 28x28": DistortedMNISTDataModule(
            args.data_dir, distortion="e", download=False, device=dev
        ),
    }
    for dm in others.values():
        dm.setup()
    # the same 55,000 training digits for every row
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(mnist.seed))
    train_idx = perm[mnist.val_size :]
    train_split = mnist.splits["train"]
    tv_mnist = torchvision_mnist(args.data_dir, train_idx)
    per_sample = PerSampleCluttered(train_split.images, train_split.labels)

    rows: Dict[str, Callable[[], tuple]] = {
        "MNIST 28x28 | ours (TensorLoader)": lambda: time_epoch(
            mnist.train_dataloader, normalize, device, limit
        ),
    }
    for w in workers:
        rows[f"MNIST 28x28 | torchvision MNIST + DataLoader, {w} workers"] = lambda w=w: time_epoch(
            lambda: loader(tv_mnist, w), to_device, device, limit
        )
    rows["cluttered 60x60, 4x 8x8 | ours (fresh canvases per batch)"] = lambda: time_epoch(
        cluttered.train_dataloader, normalize, device, limit
    )
    for w in workers:
        rows[f"cluttered 60x60, 4x 8x8 | per-sample Dataset + DataLoader, {w} workers"] = lambda w=w: (
            time_epoch(lambda: loader(per_sample, w), to_device, device, limit)
        )
    for name, dm in others.items():
        rows[f"{name} | ours (fresh canvases per batch)"] = lambda dm=dm: time_epoch(
            dm.train_dataloader, normalize, device, limit
        )
    slow = {k for k in rows if "DataLoader" in k}
    results: Dict[str, List[float]] = {k: [] for k in rows}
    batches: Dict[str, int] = {}
    for r in range(max(args.repeats, args.repeats_slow)):
        for k, fn in rows.items():
            if r >= (args.repeats_slow if k in slow else args.repeats):
                continue
            sec, n = fn()
            results[k].append(sec)
            batches[k] = n
            print(f"  {k}: {sec:.2f} s ({n} batches)", file=sys.stderr)
    epoch = {k: statistics.median(v) for k, v in results.items()}

    # one model per image size, with the normalization its data would give it
    sizes = {
        28: (MNIST_MEAN, MNIST_STD),
        42: (others["distorted rts 42x42"].mean, others["distorted rts 42x42"].std),
        60: (cluttered.mean, cluttered.std),
    }
    steps: Dict[int, float] = {}
    model_name = ""
    for size, (m, s_) in sizes.items():
        model, model_name = default_model(size, m, s_)
        steps[size] = step_time(model, size, device, args.steps)
        print(f"  step {size}x{size}: {steps[size] * 1000:.1f} ms", file=sys.stderr)

    def best(prefix: str) -> float:
        return min(v for k, v in epoch.items() if k.startswith(prefix) and "DataLoader" in k)

    lines = [
        f"Machine: {cpu_model()}, {cpus} CPUs available, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads), device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", load average (1/5/15 min) {load_average()} at the end of the run"
        + " (other processes on the machine).",
        "",
        "| data | pipeline | epoch (s) | per batch (ms) | speed-up vs best DataLoader row |",
        "|---|---|---:|---:|---:|",
    ]
    for k, sec in epoch.items():
        data, pipe = k.split(" | ")
        ms = sec / batches[k] * 1000
        base = (
            best("MNIST")
            if data.startswith("MNIST")
            else best("cluttered")
            if data.startswith("cluttered")
            else None
        )
        ratio = "" if base is None or "DataLoader" in k else f"{base / sec:.0f}x"
        lines.append(f"| {data} | {pipe} | {sec:.2f} | {ms:.2f} | {ratio} |")
    n_batches = 55000 // BATCH
    if limit:
        lines.append(f"\n(--quick: {limit} of {n_batches} batches per row)")
    lines += [
        "",
        f"Training step of the default model, {model_name}, built for each image size, batch {BATCH}, "
        f"forward + cross-entropy + backward + AdamW (plain PyTorch, median of {args.steps} steps):",
        "",
        "| data | model input | step (ms) | data per batch (ms) | data / step |",
        "|---|---|---:|---:|---:|",
    ]
    for k, sec in epoch.items():
        if "ours" not in k:
            continue
        data = k.split(" | ")[0]
        size = 28 if "28x28" in data else 42 if "42x42" in data else 60
        per_batch = sec / batches[k]
        lines.append(
            f"| {data} | {size}x{size} | {steps[size] * 1000:.1f} | {per_batch * 1000:.2f}"
            f" | {per_batch / steps[size]:.1%} |"
        )
    lines += [
        "",
        f"One-time setup (read the IDX files; for cluttered also generate the fixed 5,000 validation "
        f"and 10,000 test canvases on the CPU): MNIST {setup_mnist:.1f} s, cluttered {setup_clutter:.1f} s.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.save:
        cmd = "python benchmarks/data_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.save).write_text(f"# Data speed\n\nCommand: `{cmd.strip()}`\n\n{table}\n")


if __name__ == "__main__":
    main()
