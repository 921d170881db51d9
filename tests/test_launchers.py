"""Launchers: jobs side by side (joblib), through submitit (local here, SLURM's sbatch script), and
a summary that stays right when jobs finish at the same time.

The real sweeps run tiny trainings (tiny MNIST, two batches); they need the sweep extra's launchers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from test_sweep import CONFIGS, TINY, read_csv, run_train, the_sweep

from stn import sweep

try:
    import hydra_plugins.hydra_joblib_launcher  # noqa: F401
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401

    HAS_LAUNCHERS = True
except ImportError:
    HAS_LAUNCHERS = False
needs_launchers = pytest.mark.skipif(
    not HAS_LAUNCHERS, reason='needs the sweep extra: pip install -e ".[sweep]"'
)

FAST = [*TINY, "logger=csv", "test=false"]


def side_by_side(sweep_dir: Path, jobs: int, monkeypatch) -> list[str]:
    """Overrides that make each job wait at the start of fitting until ``jobs`` jobs have started
    (tests/rendezvous.py): only jobs that run at the same time finish."""
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p))
    return [
        "+callbacks.rendezvous._target_=rendezvous.Rendezvous",
        f"+callbacks.rendezvous.sweep_dir={sweep_dir}",
        f"+callbacks.rendezvous.jobs={jobs}",
    ]


def run_sweep(args: list[str], tmp_path: Path, data_dir: Path) -> tuple[Path, list[dict]]:
    """``python train.py <args>`` with logs under ``tmp_path``: it must succeed; its sweep folder
    (the only one under ``tmp_path/logs`` or ``hydra.sweep.dir``) and the rows of its summary.csv."""
    res = run_train([*args, f"paths.log_dir={tmp_path}/logs"], tmp_path, data_dir)
    assert res.returncode == 0, res.stderr[-4000:]
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.sweep.dir=")]
    s = Path(given[-1]) if given else the_sweep(tmp_path / "logs")
    return s, read_csv(s / "summary.csv")


def _finish_job(args):
    """One job finishing: its metrics.json, then the summary refresh every job does (on_job_end)."""
    sweep_dir, num, barrier = args
    job = Path(sweep_dir) / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={num}"]))
    barrier.wait()
    (job / "metrics.json").write_text(json.dumps({"status": "ok", "val/acc_best": num / 10}))
    sweep.write_summary(Path(sweep_dir), quiet=True)


def test_summary_has_every_job_when_jobs_finish_together(tmp_path):
    """8 processes finish at once and each rewrites the summary: the last summary has all 8 rows."""
    n = 8
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Manager().Barrier(n)
    with ctx.Pool(n) as pool:
        pool.map(_finish_job, [(str(tmp_path), i, barrier) for i in range(n)])
    rows = read_csv(tmp_path / "summary.csv")
    assert sorted(int(r["job"]) for r in rows) == list(range(n))
    assert [r["status"] for r in rows] == ["ok"] * n
    assert [r["job"] for r in rows] == [str(i) for i in reversed(range(n))]  # best first
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


@pytest.mark.slow
@needs_launchers
def test_joblib_runs_two_jobs_side_by_side(tmp_path, tiny_mnist_dir, monkeypatch):
    s = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=1,2",
        *FAST,
        f"hydra.sweep.dir={s}",
    ]
    _, rows = run_sweep([*args, *side_by_side(s, 2, monkeypatch)], tmp_path, tiny_mnist_dir)
    assert sorted((r["job"], r["seed"], r["status"]) for r in rows) == [("0", "1", "ok"), ("1", "2", "ok")]
    for r in rows:
        saved = json.loads((s / r["job"] / "metrics.json").read_text())
        assert float(r["val/acc_best"]) == pytest.approx(saved["val/acc_best"])
        hydra_cfg = yaml.safe_load((s / r["job"] / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra_cfg["launcher"]["_target_"].endswith("JoblibLauncher")


@pytest.mark.slow
@needs_launchers
def test_submitit_local_runs_a_two_job_grid(tmp_path, tiny_mnist_dir):
    s, rows = run_sweep(["-m", "hydra/launcher=submitit_local", "seed=1,2", *FAST], tmp_path, tiny_mnist_dir)
    assert sorted((r["job"], r["seed"], r["status"]) for r in rows) == [("0", "1", "ok"), ("1", "2", "ok")]
    assert all(float(r["val/acc_best"]) > 0 for r in rows)
    # each job ran as a submitit job: its pickled result and logs are in .submitit/<job id>/
    results = list((s / ".submitit").rglob("*_result.pkl"))
    assert len(results) == 2, results
    for r in rows:
        hydra_cfg = yaml.safe_load((s / r["job"] / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra_cfg["launcher"]["_target_"].endswith("submitit_launcher.LocalLauncher")


@needs_launchers
def test_slurm_gpu_launcher_writes_a_one_job_per_gpu_sbatch_script(tmp_path, monkeypatch):
    """The launcher as the sweep builds it, up to the sbatch script (no cluster here: a fake srun
    on PATH lets submitit build its SLURM executor; submission is stopped before sbatch)."""
    import submitit
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")

    GlobalHydra.instance().clear()
    overrides = [
        "hydra/launcher=submitit_slurm_gpu",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=4",
        "trainer=ddp",
        "trainer.devices=4",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == cfg.hydra.launcher.gpus_per_node == 4
    launcher = Plugins.instance().instantiate_launcher(config=cfg, hydra_context=None, task_function=None)
    assert isinstance(launcher, Launcher)
    launcher.config = cfg

    class Stop(Exception):
        pass

    built = {}

    def capture(executor, *args, **kwargs):
        built["executor"] = executor
        raise Stop

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    with pytest.raises(Stop):
        launcher.launch([["seed=1"]], initial_job_idx=0)
    script = built["executor"]._executor._make_submission_file_text("python -u -m submitit.core._submit", "0")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --time=240",
        "#SBATCH --nodes=1",
    ):
        assert line in script, (line, script)
    assert "--cpus-per-gpu" not in script
    assert "srun" in script
