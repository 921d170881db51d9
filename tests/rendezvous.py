"""Test helper, loaded by jobs of a sweep (tests/ on PYTHONPATH): a Lightning callback that holds
each job at the start of fitting until ``jobs`` job folders of its sweep exist.

A launcher that runs jobs one after another cannot pass it (the first job waits for a folder only
the next job makes, and fails after ``timeout_s``); a parallel one passes however slowly its
workers start.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class Rendezvous(L.Callback):
    def __init__(self, sweep_dir: str, jobs: int, timeout_s: float = 180.0) -> None:
        self.sweep_dir, self.jobs, self.timeout_s = Path(sweep_dir), int(jobs), float(timeout_s)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        deadline = time.time() + self.timeout_s
        while sum((p / ".hydra").is_dir() for p in self.sweep_dir.iterdir()) < self.jobs:
            if time.time() > deadline:
                raise TimeoutError(f"fewer than {self.jobs} jobs of {self.sweep_dir} ran at the same time")
            time.sleep(0.1)
