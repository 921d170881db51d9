"""A Hydra sweeper over Optuna's ask-and-tell API: resumable, prunable, trials in parallel.

``python train.py hparams_search=attention_optuna`` (configs/hydra/sweeper/optuna.yaml). Compared
with hydra-optuna-sweeper (1.3.0: optuna < 3; 1.4.0rc3: a pre-release Hydra), this one

- keeps the study in the sweep folder (``optuna.journal``) by default; run the same command again
  with ``hydra.sweep.dir=<that folder>`` and it goes on: finished trials (complete, pruned or
  failed) count towards ``n_trials``, only the remaining trials run, and a trial that a killed
  sweep left running is run again, with its parameters, in its own folder (the killed attempt's
  folder moves to ``.interrupted/``);
- names each job folder by its trial number (job ``n`` runs trial ``n``), so a resumed search
  never writes into the folders of finished trials;
- records a trial stopped by the pruner (stn/pruning.py, ``hydra.sweeper.pruner``) as PRUNED;
- launches ``n_jobs`` trials at a time through the configured launcher (joblib, submitit).

Hydra imports every module under ``hydra_plugins`` at start-up, so Optuna is imported only when a
search runs.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import yaml
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

LOCK = ".optuna.lock"


@contextmanager
def _only_search_in(sweep_dir: Path) -> Iterator[None]:
    """Hold a lock on the sweep folder while the search runs.

    A second search in the same folder would take the first one's running trials for leftovers of
    a killed search; the lock tells it apart (the OS drops the lock of a killed process).
    """
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"hydra.sweep.dir={sweep_dir}: another Optuna search is running in this folder"
            ) from None
        yield


def _consecutive(numbers: Sequence[int]) -> List[List[int]]:
    """``[2, 3, 5]`` -> ``[[2, 3], [5]]``: a launcher numbers the jobs of one call consecutively."""
    groups: List[List[int]] = []
    for n in numbers:
        if groups and groups[-1][-1] + 1 == n:
            groups[-1].append(n)
        else:
            groups.append([n])
    return groups


def _job_status(ret: JobReturn, fallback_dir: Path) -> Optional[str]:
    """``status`` of the job's metrics.json (stn.sweep writes ``pruned`` for a pruned trial)."""
    out = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
    path = Path(str(out) if out else fallback_dir) / "metrics.json"
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


class OptunaSweeper(Sweeper):
    """Optuna search; the arguments are the keys of configs/hydra/sweeper/optuna.yaml."""

    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: str,
        storage: Optional[str],
        study_name: str,
        n_trials: int,
        n_jobs: int,
        params: Optional[DictConfig] = None,
    ) -> None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction={direction!r}: must be 'maximize' or 'minimize'")
        if int(n_trials) < 1:
            raise ValueError(f"hydra.sweeper.n_trials={n_trials}: must be at least 1")
        # both built by Hydra from their _target_ configs (the pruner also in each job: stn.study)
        self.sampler = sampler
        self.pruner = pruner
        self.direction = direction
        self.storage = storage
        self.study_name = str(study_name)
        self.n_trials = int(n_trials)
        # joblib's n_jobs=-1 (its default) means one per CPU
        self.n_jobs = int(n_jobs) if int(n_jobs) > 0 else (os.cpu_count() or 1)
        self.params = params
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: List[str]) -> List[Any]:
        import optuna

        from stn import study as studies

        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        config_params = [f"{k}={v}" for k, v in (self.params or {}).items()]
        space, fixed = studies.search_space([*config_params, *arguments])
        with _only_search_in(sweep_dir):
            study = optuna.create_study(
                study_name=self.study_name,
                storage=studies.open_storage(self.storage, sweep_dir),
                sampler=self.sampler,
                pruner=self.pruner if self.pruner is not None else optuna.pruners.NopPruner(),
                direction=self.direction,
                load_if_exists=True,
            )
            trials = study.get_trials(deepcopy=False)
            left = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
            done = sum(t.state.is_finished() for t in trials)
            log.info(
                "Optuna study %r in %s: %d finished, %d left running by a killed search, %d to go",
                self.study_name,
                sweep_dir,
                done,
                len(left),
                max(0, self.n_trials - done),
            )
            for t in left[max(0, self.n_trials - done) :]:  # more leftovers than trials to go
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            left = left[: max(0, self.n_trials - done)]
            for t in left:
                self._set_aside(sweep_dir / str(t.number))
            pending: List[tuple] = [(t.number, dict(t.params)) for t in left]
            returns: List[Any] = []
            remaining = self.n_trials - done
            while remaining > 0:
                batch = pending[: self.n_jobs]
                pending = pending[len(batch) :]
                while len(batch) < min(self.n_jobs, remaining):
                    trial = study.ask(fixed_distributions=space)
                    batch.append((trial.number, dict(trial.params)))
                by_number = dict(batch)
                for group in _consecutive(sorted(by_number)):
                    overrides = [studies.trial_overrides(by_number[n], fixed) for n in group]
                    rets = self.launcher.launch(overrides, initial_job_idx=group[0])
                    for number, ret in zip(group, rets):
                        self._tell(study, number, ret, sweep_dir)
                    returns.extend(rets)
                remaining -= len(batch)
                self._write_results(study, sweep_dir)
        return returns

    @staticmethod
    def _set_aside(job_dir: Path) -> None:
        """Move a killed trial's folder to ``.interrupted/`` so that its rerun starts clean."""
        if not job_dir.exists():
            return
        target = job_dir.parent / ".interrupted" / f"{job_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(exist_ok=True)
        shutil.move(str(job_dir), str(target))
        log.info("Trial %s was left running by a killed search; its old folder: %s", job_dir.name, target)

    def _tell(self, study: Any, number: int, ret: JobReturn, sweep_dir: Path) -> None:
        import optuna

        value: Any = ret._return_value if ret.status == JobStatus.COMPLETED else None
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        if math.isfinite(value):
            study.tell(number, value)
        elif _job_status(ret, sweep_dir / str(number)) == "pruned":
            study.tell(number, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(number, state=optuna.trial.TrialState.FAIL)

    def _write_results(self, study: Any, sweep_dir: Path) -> None:
        """``optimization_results.yaml``: best value and parameters so far (summary.md shows them)."""
        import optuna

        states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
        counts: Dict[str, int] = {s: states.count(s) for s in dict.fromkeys(states)}
        results: Dict[str, Any] = {"name": "optuna", "study_name": self.study_name, "trials": counts}
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if complete:
            best = study.best_trial
            results.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params))
        (sweep_dir / "optimization_results.yaml").write_text(yaml.safe_dump(results, sort_keys=False))
