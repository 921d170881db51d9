"""The speed benchmarks of stn.ops.glimpse run (their timings are not checked: machines differ)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_glimpse_speed_dry_run_covers_every_shape_and_mode():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import glimpse_speed
    finally:
        sys.path.pop(0)
    res = _run("benchmarks/glimpse_speed.py", "--dry-run", "--threads", "1")
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "x" in line.split("|")[-2]]
    names = [s[0] for s in glimpse_speed.SHAPES] + [s[0] for s in glimpse_speed.AA_SHAPES]
    for name in names:
        modes = {line.split("|")[2].strip() for line in rows if line.startswith(f"| {name}:")}
        assert modes == set(glimpse_speed.MODES), (name, modes)


def test_glimpse_speed_cuda_without_a_gpu_says_so():
    if torch.cuda.is_available():
        res = _run("benchmarks/glimpse_speed.py", "--device", "cuda", "--dry-run")
        assert res.returncode == 0, res.stderr
        assert "CUDA device:" in res.stdout
    else:
        res = _run("benchmarks/glimpse_speed.py", "--device", "cuda", "--dry-run")
        assert res.returncode == 2 and "--device cuda: no CUDA device here" in res.stderr


def test_train_step_speed_runs_one_step():
    res = _run(
        "benchmarks/train_step_speed.py", "--steps", "1", "--threads", "1", "--only", "model=attention"
    )
    assert res.returncode == 0, res.stderr
    row = [line for line in res.stdout.splitlines() if line.startswith("| model=attention")]
    assert len(row) == 1 and row[0].endswith("x |"), res.stdout
