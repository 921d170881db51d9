"""Results of the training runs of benchmarks/gpu_check.sh, as a markdown table.

`python benchmarks/gpu_results.py <runs folder>`: one row per run folder (metrics.json and the
TensorBoard events Lightning wrote there): test accuracy, wall time of the whole command, and the
time from the first logged event to the first `val/acc` >= 0.99 (the "time to 99%"; epochs are the
resolution: validation runs once per epoch).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def time_to(run: Path, tag: str = "val/acc", threshold: float = 0.99) -> str:
    """Seconds from the run's first scalar event to the first ``tag`` value >= threshold ("-" if never)."""
    folders = sorted({p.parent for p in run.rglob("events.out.tfevents.*")})
    first, reached = None, None
    for folder in folders:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        for name in acc.Tags()["scalars"]:
            for event in acc.Scalars(name):
                first = event.wall_time if first is None else min(first, event.wall_time)
                if name == tag and event.value >= threshold:
                    reached = event.wall_time if reached is None else min(reached, event.wall_time)
    return "-" if first is None or reached is None else f"{reached - first:.1f}"


def main(runs: Path) -> None:
    print("\n| run | test/acc | test/iou50 | wall s | s to val/acc >= 0.99 |")
    print("|---|---|---|---|---|")
    for run in sorted(p for p in runs.iterdir() if p.is_dir()):
        path = run / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else {}
        cells = [run.name]
        for key in ("test/acc", "test/iou50", "time/wall_s"):
            value = metrics.get(key)
            cells.append(
                "-" if value is None else f"{value:.4f}" if key.startswith("test") else f"{value:.1f}"
            )
        cells.append(time_to(run))
        if metrics.get("status", "ok") != "ok":
            cells[0] += f" ({metrics['status']}: {metrics.get('error', '')})"
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
