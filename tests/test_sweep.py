"""Sweeps: failed jobs do not stop a multirun, summaries of sweep folders, seed groups, HParams.

Two real sweeps run as a user runs them (`python train.py -m ...` and `hparams_search=...`, tiny MNIST,
a few batches); everything else (summary sorting, seed statistics, run_task's failure branch) runs
on hand-written rows and job folders.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from stn import sweep, sweep_jobs, tasks
from stn.data.base import DataMissingError
from stn.tasks import run_task

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")

# One short epoch of a small model: enough for every metric and file to exist.
# plain MNIST, not the default translated canvas: these tests are about sweeping, not the data
TINY = [
    "data=mnist",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.glimpse_images=null",
    "data.batch_size=16",
    "data.eval_batch_size=64",
    "data.val_size=32",
    "model.classifier.widths=[8,16,32]",
]


def run_train(args: list[str], cwd: Path, data_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STN_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def the_sweep(log_dir: Path) -> Path:
    sweeps = list((log_dir / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- seed groups -----------------------------------------------------------------------------------
def test_group_by_seed_mean_std_median():
    def row(job, lr, seed, acc, status="ok"):
        return {
            "job": job,
            "status": status,
            "overrides": {"module.optimizer.lr": lr, "seed": seed},
            "metrics": {"val/acc": acc} if acc is not None else {},
        }

    rows = [
        row("0", "0.1", "1", 0.5),
        row("1", "0.1", "2", 0.75),
        row("2", "0.1", "3", 1.0),
        row("3", "0.1", "4", 0.25),
        row("4", "1", "1", 0.5),
        row("5", "1", "2", None, status="failed"),
    ]
    assert sweep_jobs.has_seed_repeats(rows)
    groups = sweep_jobs.group_by_seed(rows, ["val/acc"])
    assert [g["overrides"] for g in groups] == [{"module.optimizer.lr": "0.1"}, {"module.optimizer.lr": "1"}]
    a, b = groups
    assert (a["n"], a["n_failed"], a["seeds"], a["jobs"]) == (
        4,
        0,
        ["1", "2", "3", "4"],
        ["0", "1", "2", "3"],
    )
    st = a["stats"]["val/acc"]
    assert st["mean"] == 0.625
    assert st["median"] == 0.625  # mean of the middle two, 0.5 and 0.75
    # sample std (n - 1): deviations +-0.125, +-0.375 -> sum of squares 0.3125 / 3
    assert st["std"] == pytest.approx(math.sqrt(0.3125 / 3), rel=1e-12)
    assert st["std"] == pytest.approx(statistics.stdev([0.5, 0.75, 1.0, 0.25]), rel=1e-12)
    assert st["n"] == 4
    assert (b["n"], b["n_failed"], b["seeds"]) == (1, 1, ["1", "2"])
    assert b["stats"]["val/acc"] == {"mean": 0.5, "std": None, "median": 0.5, "n": 1}
    # no seed override, or every configuration once: nothing to group
    assert not sweep_jobs.has_seed_repeats([row("0", "0.1", "1", 0.5), row("1", "1", "1", 0.6)])


# -- summaries of hand-written sweep folders -------------------------------------------------------
def write_job(
    sweep_dir: Path,
    num: int,
    overrides: list[str],
    metrics: dict | None,
    optimized_metric: str = "val/acc_best",
    direction: str | None = None,
) -> Path:
    job = sweep_dir / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"seed": 1, "optimized_metric": optimized_metric})
    )
    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}
    if direction:
        sweeper = {
            "_target_": "hydra_plugins.stn_sweeper.optuna_sweeper.OptunaSweeper",
            "direction": direction,
        }
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": sweeper}}))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def test_summary_sorts_best_first_failed_last_and_groups_seeds(tmp_path):
    s = tmp_path / "2026-01-01_00-00-00"
    acc = {(0.1, 1): 0.8, (0.1, 2): 0.9, (1.0, 1): 0.95, (1.0, 2): 0.85}
    num = 0
    for lr in (0.1, 1.0):
        for seed in (1, 2):
            write_job(
                s,
                num,
                [f"module.optimizer.lr={lr}", f"seed={seed}", "trainer.max_epochs=1"],
                {
                    "status": "ok",
                    "val/acc_best": acc[lr, seed],
                    "test/acc": acc[lr, seed] - 0.05,
                    "time/wall_s": 10.0 + num,
                },
            )
            num += 1
    write_job(
        s,
        4,
        ["module.optimizer.lr=10.0", "seed=1", "trainer.max_epochs=1"],
        {"status": "failed", "error": "NonFiniteLossError: loss | became NaN", "time/wall_s": 1.5},
    )
    write_job(s, 5, ["module.optimizer.lr=10.0", "seed=2", "trainer.max_epochs=1"], None)  # killed
    (s / "10").mkdir()  # not a job folder
    (s / "multirun.yaml").write_text("{}\n")

    paths = sweep.write_summary(s)
    assert set(paths) == {"csv", "md", "grouped"}
    rows = read_csv(s / "summary.csv")
    assert [r["job"] for r in rows] == ["2", "1", "3", "0", "5", "4"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["incomplete", "failed"]
    assert [float(r["val/acc_best"]) for r in rows[:4]] == [0.95, 0.9, 0.85, 0.8]
    assert rows[0]["module.optimizer.lr"] == "1.0" and rows[0]["seed"] == "1"
    assert rows[0]["trainer.max_epochs"] == "1"
    assert float(rows[0]["time/wall_s"]) == 12.0
    assert rows[5]["error"] == "NonFiniteLossError: loss | became NaN" and rows[5]["val/acc_best"] == ""
    assert list(rows[0])[:6] == ["rank", "job", "status", "module.optimizer.lr", "seed", "trainer.max_epochs"]

    grouped = read_csv(s / "summary_grouped.csv")
    assert [g["module.optimizer.lr"] for g in grouped] == ["1.0", "0.1", "10.0"]  # best mean first
    g1, g01, g10 = grouped
    assert float(g1["val/acc_best/mean"]) == pytest.approx(0.9)
    assert float(g1["val/acc_best/std"]) == pytest.approx(statistics.stdev([0.95, 0.85]))
    assert float(g1["val/acc_best/median"]) == pytest.approx(0.9)
    assert (g1["n"], g1["n_failed"], g1["seeds"], g1["jobs"]) == ("2", "0", "1 2", "2 3")
    assert float(g01["test/acc/mean"]) == pytest.approx(0.8)
    assert (g10["n"], g10["n_failed"], g10["val/acc_best/mean"]) == ("0", "1", "")

    md = (s / "summary.md").read_text()
    assert "6 jobs (4 ok, 1 failed, 1 incomplete). Sorted by `val/acc_best` (maximize)" in md
    assert "Same in every job: `trainer.max_epochs=1`" in md
    assert "| 1 | 2 | ok | 1.0 | 1 | 0.9500 |" in md
    assert "loss \\| became NaN" in md  # escaped for the table
    assert "## Across seeds" in md and "| 1.0 | 2 | 0 | 1 2 | 0.9000 ± 0.0707 | 0.9000 |" in md

    # a later refresh without seed repeats removes the grouped file
    for job in ("1", "3", "5"):
        for f in sorted((s / job).rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (s / job).rmdir()
    assert set(sweep.write_summary(s)) == {"csv", "md"}
    assert not (s / "summary_grouped.csv").exists()


def test_summary_minimizes_losses_and_follows_the_optuna_direction(tmp_path):
    a = tmp_path / "a"
    for i, loss in enumerate([0.3, 0.1, 0.2]):
        write_job(a, i, [f"module.optimizer.lr={i}"], {"val/loss": loss}, optimized_metric="val/loss")
    sweep.write_summary(a)
    rows = read_csv(a / "summary.csv")
    assert [r["job"] for r in rows] == ["1", "2", "0"]
    assert [r["status"] for r in rows] == ["ok"] * 3  # metrics.json without status: written by train()
    b = tmp_path / "b"
    for i, v in enumerate([0.3, 0.1, 0.2]):
        write_job(b, i, [f"x={i}"], {"status": "ok", "val/acc_best": v}, direction="minimize")
    sweep.write_summary(b)
    assert [r["job"] for r in read_csv(b / "summary.csv")] == ["1", "2", "0"]


def test_cli_writes_and_prints_the_summary(tmp_path):
    s = tmp_path / "sweep"
    write_job(s, 0, ["model=cnn"], {"status": "ok", "val/acc_best": 0.5})
    write_job(s, 1, ["model=attention"], {"status": "ok", "val/acc_best": 0.7})
    res = subprocess.run(
        [sys.executable, "-m", "stn.sweep", str(s)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "| 1 | 1 | ok | attention | 0.7000 |" in res.stdout
    assert (s / "summary.csv").is_file() and (s / "summary.md").is_file()
    assert sweep.main([str(tmp_path / "empty")]) == 2


# -- run_task's failure branch ---------------------------------------------------------------------
def _cfg(out: Path, optimized_metric: str = "val/acc_best"):
    return OmegaConf.create({"paths": {"output_dir": str(out)}, "optimized_metric": optimized_metric})


def test_run_task_records_a_failed_job_in_a_multirun(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tasks, "in_multirun", lambda: True)

    def diverges(cfg):
        raise FloatingPointError("loss became NaN")

    assert run_task(diverges, _cfg(tmp_path / "a")) is None
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["status"] == "diverged" and saved["error"] == "FloatingPointError: loss became NaN"
    assert saved["time/wall_s"] >= 0
    assert "Traceback" in caplog.text and "loss became NaN" in caplog.text

    def missing(cfg):
        raise DataMissingError("MNIST", Path("/nowhere"), "a hint", downloadable=False)

    assert run_task(missing, _cfg(tmp_path / "b")) is None
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert saved["status"] == "failed"
    assert saved["error"].startswith("DataMissingError: MNIST not found in /nowhere.\na hint")

    def breaks(cfg):
        raise RuntimeError("CUDA out of memory")

    assert run_task(breaks, _cfg(tmp_path / "g")) is None
    saved = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert saved["status"] == "failed" and saved["error"] == "RuntimeError: CUDA out of memory"

    # a successful job: status ok, the metric for the sweeper; None when it is missing or NaN
    assert run_task(lambda cfg: {"val/acc_best": 0.5}, _cfg(tmp_path / "c")) == 0.5
    # (train() and evaluate() write metrics.json with status ok themselves: see tests/test_train.py)
    assert run_task(lambda cfg: {"val/acc_best": float("nan")}, _cfg(tmp_path / "d")) is None
    assert run_task(lambda cfg: {"val/acc": 0.5}, _cfg(tmp_path / "e")) is None

    def interrupted(cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C stops the sweep
        run_task(interrupted, _cfg(tmp_path / "f"))
    assert json.loads((tmp_path / "f" / "metrics.json").read_text())["status"] == "interrupted"


def test_run_task_records_a_failed_single_run(tmp_path):
    assert not tasks.in_multirun()

    def diverges(cfg):
        raise FloatingPointError("loss became NaN")

    with pytest.raises(SystemExit) as exit_info:  # the divergence message, no traceback
        run_task(diverges, _cfg(tmp_path / "a"))
    assert exit_info.value.code == 1
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["status"] == "diverged" and saved["error"] == "FloatingPointError: loss became NaN"

    def missing(cfg):
        raise DataMissingError("MNIST", Path("/nowhere"), "a hint", downloadable=False)

    with pytest.raises(SystemExit) as exit_info:
        run_task(missing, _cfg(tmp_path / "b"))
    assert exit_info.value.code == 1
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["status"] == "failed"

    def breaks(cfg):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):  # a bug keeps its traceback
        run_task(breaks, _cfg(tmp_path / "c"))
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["error"] == "RuntimeError: a bug"

    def ctrl_c_in_lightning(cfg):
        # Lightning's trainer turns a Ctrl-C into sys.exit(1) inside its except KeyboardInterrupt
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)

    with pytest.raises(SystemExit):
        run_task(ctrl_c_in_lightning, _cfg(tmp_path / "d"))
    assert json.loads((tmp_path / "d" / "metrics.json").read_text())["status"] == "interrupted"

    def sigterm(cfg):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    with pytest.raises(KeyboardInterrupt):
        run_task(sigterm, _cfg(tmp_path / "e"))
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert saved["status"] == "interrupted" and "SIGTERM" in saved["error"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back
    assert math.isnan(run_task(lambda cfg: {"val/acc": 0.5}, _cfg(tmp_path / "f")))


def test_in_multirun_reads_the_hydra_mode():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfgs = {
            mode: compose("train", overrides=[f"hydra.mode={mode}"], return_hydra_config=True)
            for mode in ("RUN", "MULTIRUN")
        }
    try:
        HydraConfig.instance().set_config(cfgs["MULTIRUN"])
        assert tasks.in_multirun()
        HydraConfig.instance().set_config(cfgs["RUN"])
        assert not tasks.in_multirun()
        callbacks = cfgs["RUN"].hydra.callbacks
        assert callbacks.sweep_summary._target_ == "stn.sweep.SweepSummary"
    finally:
        HydraConfig.instance().cfg = None
    assert not tasks.in_multirun()


# -- real sweeps -----------------------------------------------------------------------------------
def hparams_of(tensorboard_dir: Path):
    """From event files: (session start hparams as python values, session end status,
    scalars {tag: last value}, the experiment: (metric names in order, hparams marked differing))."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    params = {}
    for k, v in start.hparams.items():
        kind = v.WhichOneof("kind")
        params[k] = getattr(v, kind)
    scalars = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = [m.name.tag for m in experiment.metric_infos]
    differing = {h.name for h in experiment.hparam_infos if h.differs}
    return params, end.status, scalars, (metrics, differing)


@pytest.mark.slow
def test_grid_sweep_goes_on_after_failed_jobs_and_writes_the_summary(tmp_path, tiny_mnist_dir):
    """2x2 grid, the lr=1e30 jobs diverge: exit 0, both recorded as failed, both others ok and summarized."""
    res = run_train(
        [
            "-m",
            "model=attention,cnn",
            "module.optimizer.lr=1e-3,1e30",
            "module.scheduler=null",
            "module.nonfinite_check_every=1",
            *TINY,
            f"paths.log_dir={tmp_path}/logs",
        ],
        tmp_path,
        tiny_mnist_dir,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    s = the_sweep(tmp_path / "logs")
    jobs = {p.name: p for p in s.iterdir() if p.is_dir()}
    assert sorted(jobs) == ["0", "1", "2", "3"]

    rows = read_csv(s / "summary.csv")
    assert len(rows) == 4
    assert [r["status"] for r in rows] == ["ok", "ok", "diverged", "diverged"]
    assert {(r["model"], r["module.optimizer.lr"]) for r in rows[:2]} == {
        ("attention", "0.001"),
        ("cnn", "0.001"),
    }
    assert {(r["model"], r["module.optimizer.lr"]) for r in rows[2:]} == {
        ("attention", "1e+30"),
        ("cnn", "1e+30"),
    }
    best = [float(r["val/acc_best"]) for r in rows[:2]]
    assert best == sorted(best, reverse=True)
    for r in rows[:2]:
        saved = json.loads((jobs[r["job"]] / "metrics.json").read_text())
        assert saved["status"] == "ok"
        for key in ("val/acc", "val/acc_best", "test/acc", "time/wall_s"):
            assert float(r[key]) == pytest.approx(saved[key]), key
        assert r["module.scheduler"] == "null" and r["trainer.max_epochs"] == "1"
    for r in rows[2:]:
        assert r["error"].startswith("NonFiniteLossError: training loss became NaN/Inf"), r["error"]
        assert r["val/acc_best"] == "" and float(r["time/wall_s"]) > 0
        saved = json.loads((jobs[r["job"]] / "metrics.json").read_text())
        assert saved["status"] == "diverged" and saved["error"] == r["error"]
        log_text = (jobs[r["job"]] / "train.log").read_text()
        assert "Traceback" in log_text and "NonFiniteLossError" in log_text
    md = (s / "summary.md").read_text()
    assert "4 jobs (2 ok, 2 diverged)" in md and "| model | module.optimizer.lr |" in md
    assert not (s / "summary_grouped.csv").exists()

    # TensorBoard HParams: the hyperparameters a person would sweep beside the final metrics, per ok
    # job; the swept ones marked (TensorBoard lists them first), the optimized metric first
    for r in rows[:2]:
        params, status, scalars, (metric_names, differing) = hparams_of(jobs[r["job"]] / "tensorboard")
        assert status == 1  # STATUS_SUCCESS
        assert params["module/optimizer/lr"] == pytest.approx(1e-3)
        assert params["seed"] == 12345
        assert params["model"] == r["model"] and params["data"] == "mnist"
        assert params["trainer/max_epochs"] == 1
        assert ("model/box_head/min_scale" in params) == (r["model"] == "attention")
        for key in params:
            assert not key.endswith(("_target_", "_partial_", "_dir", "/devices", "/accelerator")), key
        assert "data/data_dir" not in params and "trainer/default_root_dir" not in params
        # the overrides of the command line that are hyperparameters (not devices, paths, callbacks)
        assert differing == {
            "data",
            "model",
            "module/optimizer/lr",
            "module/nonfinite_check_every",
            "trainer/max_epochs",
            "trainer/limit_train_batches",
            "trainer/limit_val_batches",
            "trainer/limit_test_batches",
            "data/batch_size",
            "data/val_size",
            "model/classifier/widths",
        }
        assert metric_names[:2] == ["val/acc_best", "test/acc"]
        assert not any(m.startswith("lr-") for m in metric_names)
        saved = json.loads((jobs[r["job"]] / "metrics.json").read_text())
        for key in ("val/acc", "val/acc_best", "test/acc", "time/wall_s"):
            assert scalars[key] == pytest.approx(saved[key], rel=1e-6), key
