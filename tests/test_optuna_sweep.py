"""Optuna searches through our sweeper (hydra_plugins/stn_sweeper): search space from the config,
failed trials, a search killed with SIGKILL and resumed, pruned trials, trials in parallel (joblib).

Real searches run `python train.py hparams_search=attention_optuna` on tiny MNIST with two
batches per epoch; they need the sweep extra (optuna >= 4.9).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from test_launchers import run_sweep, side_by_side
from test_sweep import CONFIGS, ROOT, TINY, read_csv, run_train

try:
    import optuna
    from packaging.version import Version

    HAS_OPTUNA = Version(optuna.__version__) >= Version("4.9")
except ImportError:
    HAS_OPTUNA = False
pytestmark = pytest.mark.skipif(not HAS_OPTUNA, reason='needs the sweep extra: pip install -e ".[sweep]"')

SEARCH = ["hparams_search=attention_optuna", *TINY, "logger=csv", "test=false"]


def load_study(sweep_dir: Path, name: str = "attention") -> "optuna.Study":
    from stn.study import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(None, sweep_dir))


def states(study) -> list[str]:
    return [t.state.name for t in sorted(study.get_trials(), key=lambda t: t.number)]


def compose_search(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(
            "train", overrides=["hparams_search=attention_optuna", *overrides], return_hydra_config=True
        )


def test_search_space_and_pruner_from_the_config():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from stn.study import make_pruner, search_space

    cfg = compose_search([])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.stn_sweeper.optuna_sweeper.OptunaSweeper"
    assert (
        sweeper.storage is None and sweeper.direction == "maximize" and cfg.optimized_metric == "val/acc_best"
    )
    assert sweeper.pruner is None and isinstance(make_pruner(sweeper.pruner), optuna.pruners.NopPruner)
    assert sweeper.n_jobs == 1  # the basic launcher has no n_jobs
    assert cfg.callbacks.optuna_pruning.monitor == "val/acc"
    assert str(cfg.hydra.mode) in ("MULTIRUN", "RunMode.MULTIRUN")
    space, fixed = search_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert fixed == []
    assert list(space) == [
        "module.optimizer.lr",
        "module.loc_lr_mult",
        "model.box_head.min_scale",
        "model.glimpse_size",
    ]
    assert space["module.optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["module.loc_lr_mult"] == FloatDistribution(0.01, 1.0, log=True)
    assert space["model.box_head.min_scale"] == FloatDistribution(0.1, 0.6)
    assert space["model.glimpse_size"] == CategoricalDistribution([14, 20, 28])

    # the command line replaces a range (in place) and adds fixed overrides; range() excludes its stop
    space, fixed = search_space(
        ["a=interval(1, 4)", "b=range(2, 9, 3)", "seed=3", "a=choice(x,y)", "c=range(0.5,1.6,0.5)"]
    )
    assert space == {
        "a": CategoricalDistribution(["x", "y"]),
        "b": IntDistribution(2, 8, step=3),
        "c": FloatDistribution(0.5, 1.5, step=0.5),
    }
    assert fixed == ["seed=3"]
    with pytest.raises(ValueError, match="the range is empty"):
        search_space(["b=range(5, 5)"])

    cfg = compose_search(["hydra/sweeper/pruner=median", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    pruner = make_pruner(cfg.hydra.sweeper.pruner)
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert (pruner._n_startup_trials, pruner._n_warmup_steps) == (5, 1)
    assert cfg.hydra.sweeper.n_jobs == 2  # follows the parallel launcher


def test_a_second_search_in_the_same_folder_is_refused(tmp_path):
    from hydra_plugins.stn_sweeper.optuna_sweeper import _only_search_in

    with _only_search_in(tmp_path):
        with pytest.raises(RuntimeError, match="another Optuna search is running in this folder"):
            with _only_search_in(tmp_path):
                pass
    with _only_search_in(tmp_path):  # released when the first search ends
        pass


@pytest.mark.slow
def test_search_goes_on_after_a_failed_trial(tmp_path, tiny_mnist_dir):
    """3 trials; lr is a choice of 1e-3 and 1e30 here, and with sampler seed 3 TPE's random start draws
    1e30, 1e-3, 1e-3: the first trial diverges, is recorded as diverged (a FAIL trial), the study goes
    on and its best value is the best of the other two."""
    args = [
        *SEARCH,
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=3",
        "module.optimizer.lr=choice(1e-3,1e30)",
        "module.scheduler=null",
        "module.nonfinite_check_every=1",
    ]
    s, rows = run_sweep(args, tmp_path, tiny_mnist_dir)
    assert len(rows) == 3
    statuses = {r["module.optimizer.lr"]: set() for r in rows}
    for r in rows:
        statuses[r["module.optimizer.lr"]].add(r["status"])
    assert statuses.get("1e+30") == {"diverged"} and statuses.get("0.001") == {"ok"}, (
        f"expected both lr values among the trials, got {statuses}: pick another hydra.sweeper.sampler.seed"
    )
    assert [r["status"] for r in rows] == ["ok", "ok", "diverged"]
    for key in ("module.loc_lr_mult", "model.box_head.min_scale", "model.glimpse_size"):
        assert all(r[key] for r in rows), key  # sampled by optuna, one column each
    assert all(0.01 <= float(r["module.loc_lr_mult"]) <= 1.0 for r in rows)
    study = load_study(s)
    by_job = {r["job"]: r for r in rows}
    for t in study.get_trials():  # trial n ran in job folder n
        assert by_job[str(t.number)]["status"] == {"COMPLETE": "ok", "FAIL": "diverged"}[t.state.name]
    results = yaml.safe_load((s / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(float(rows[0]["val/acc_best"]))
    assert results["best_params"]["module.optimizer.lr"] == pytest.approx(1e-3)
    assert results["trials"] == {"fail": 1, "complete": 2}
    md = (s / "summary.md").read_text()
    assert "3 jobs (2 ok, 1 diverged)" in md and "Optuna best value" in md


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.slow
def test_a_killed_search_resumes_with_the_same_command(tmp_path, tiny_mnist_dir):
    """4 trials; SIGKILL once 2 are finished in the study; the same command again: the 2 remaining
    trials run (a trial the kill interrupted is run again in its folder), the first two folders are
    untouched, the study has 4 complete trials and the summary 4 rows."""
    s = tmp_path / "search"
    args = [*SEARCH, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={s}", f"paths.log_dir={tmp_path}/logs"]
    env = {"STN_DATA_DIR": str(tiny_mnist_dir), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "killed.log", "w") as out:  # a file, not a pipe nobody reads while it runs
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args],
            cwd=tmp_path,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.time() + 300
    try:
        while True:
            assert proc.poll() is None, "the search ended before it was killed"
            assert time.time() < deadline, "2 trials did not finish in time"
            if (s / "optuna.journal").is_file() and states(load_study(s)).count("COMPLETE") >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = states(load_study(s))
    assert killed[:2] == ["COMPLETE", "COMPLETE"] and len(killed) <= 3, killed
    before = {job: snapshot(s / job) for job in ("0", "1")}
    interrupted = len(killed) == 3 and (s / "2").exists()
    params = {t.number: t.params for t in load_study(s).get_trials()}

    res = run_train(args, tmp_path, tiny_mnist_dir)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "2 finished" in res.stdout + res.stderr
    study = load_study(s)
    assert states(study) == ["COMPLETE"] * 4
    assert all(t.params == params[t.number] for t in study.get_trials() if t.number in params)
    rows = read_csv(s / "summary.csv")
    assert sorted(r["job"] for r in rows) == ["0", "1", "2", "3"] and {r["status"] for r in rows} == {"ok"}
    for job in ("0", "1"):
        assert snapshot(s / job) == before[job], f"folder {job} of a finished trial changed"
    values = {str(t.number): t.value for t in study.get_trials()}
    assert all(float(r["val/acc_best"]) == pytest.approx(values[r["job"]]) for r in rows)
    if interrupted:  # the kill interrupted trial 2 in its folder: set aside, trial 2 run again
        assert len(list((s / ".interrupted").glob("2-*"))) == 1


@pytest.mark.slow
def test_a_pruned_trial_is_recorded_as_pruned_and_trials_run_in_parallel(
    tmp_path, tiny_mnist_dir, monkeypatch
):
    """2 trials side by side (joblib), trainer.max_epochs a choice of 1 and 3 (TPE's random start with
    seed 0 draws 3, then 1) and a pruner that prunes any val/acc below 1.1 after the first epoch: the
    1-epoch trial completes, the 3-epoch one is pruned after its second epoch."""
    pytest.importorskip(
        "hydra_plugins.hydra_joblib_launcher", reason='needs the sweep extra: pip install -e ".[sweep]"'
    )
    args = [
        *SEARCH,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path}/search",
        *side_by_side(tmp_path / "search", 2, monkeypatch),
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=0",
        "~hydra.sweeper.params",
        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.1,n_warmup_steps:1}",
        "trainer.max_epochs=choice(1,3)",
    ]
    s, rows = run_sweep(args, tmp_path, tiny_mnist_dir)
    rows = {r["trainer.max_epochs"]: r for r in rows}
    assert sorted(rows) == ["1", "3"], "expected both choices among the trials: pick another sampler seed"
    assert (rows["1"]["status"], rows["3"]["status"]) == ("ok", "pruned")
    pruned = rows["3"]
    saved = json.loads((s / pruned["job"] / "metrics.json").read_text())
    assert saved["status"] == "pruned" and saved["error"].startswith("TrialPruned: pruned after epoch 1")
    assert float(pruned["val/acc"]) == pytest.approx(saved["val/acc"])
    trials = {str(t.number): t for t in load_study(s).get_trials()}
    assert trials[pruned["job"]].state.name == "PRUNED"
    assert sorted(trials[pruned["job"]].intermediate_values) == [0, 1]  # val/acc of epochs 0 and 1
    assert trials[rows["1"]["job"]].state.name == "COMPLETE"
    assert "2 jobs (1 ok, 1 pruned)" in (s / "summary.md").read_text()
