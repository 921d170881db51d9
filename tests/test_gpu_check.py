"""benchmarks/gpu_check.sh, as far as a machine without a GPU can check it."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from stn.tasks import train
from tests.test_train import FAST, ROOT, make_cfg

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def dry_run(*args: str) -> list[str]:
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_dry_run_lists_every_step_of_the_issue():
    lines = dry_run()
    text = "\n".join(lines)
    assert "pytest" in text and "benchmarks/glimpse_speed.py --device cuda" in text
    trains = [line for line in lines if line.startswith("python3 train.py")]
    assert len(trains) == 4
    assert all("trainer=gpu" in line for line in trains)
    assert sum("module.compile=true" in line for line in trains) == 1
    assert any("experiment=cluttered_mnist" in line for line in trains)
    assert any("experiment=cifar10 data=cifar10_jpeg" in line for line in trains)
    assert dry_run("part2") == [line for line in trains if "cifar10" in line]


def test_unknown_option_is_one_clear_error():
    out = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == "gpu_check.sh: unknown option --fast (see --help)"


@pytest.mark.parametrize("line", [line for line in dry_run() if line.startswith("python3 train.py")])
def test_every_training_command_composes(line, tmp_path):
    """Each command's overrides are valid for the real configs (a typo would fail on the GPU)."""
    overrides = [o for o in shlex.split(line)[2:] if not o.startswith("hydra.")]
    cfg = make_cfg("train", tmp_path, overrides)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"


def test_results_table_reads_a_real_run(tmp_path, tiny_mnist_dir):
    run = tmp_path / "runs" / "default"
    metrics = train(
        make_cfg("train", run, FAST + [f"paths.data_dir={tiny_mnist_dir}", "trainer.max_epochs=1"])
    )
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_results.py"), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        check=True,
    )
    row = [line for line in out.stdout.splitlines() if line.startswith("| default ")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(metrics["test/acc"], abs=1e-4)
    assert json.loads((run / "metrics.json").read_text())["status"] == "ok"
    # a run that never reached 99% says so instead of inventing a number
    assert (cells[4] == "-") == (metrics["val/acc_best"] < 0.99)
