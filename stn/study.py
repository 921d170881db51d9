"""The Optuna study of a search: where it is stored, its search space, and a job's own trial.

Shared by the sweeper (hydra_plugins/stn_sweeper, in the sweep's process) and the pruning
callback (stn/pruning.py, in each job's process): both open the same study from the same config.

- :func:`open_storage`: ``hydra.sweeper.storage`` null -> ``optuna.journal`` in the sweep folder
  (a rerun with the same ``hydra.sweep.dir`` finds it); a URL with ``://`` -> Optuna's RDB storage
  (``sqlite:///study.db``, ``postgresql://...``); any other text -> a journal file at that path.
- :func:`search_space`: Hydra's sweep syntax (``choice(14, 28)``, ``interval(0.1, 0.6)``,
  ``tag(log, interval(1e-4, 1e-2))``, ``range(1, 9)``) as Optuna distributions.
- :func:`job_trial`: inside a job of the search, the trial it runs (its number is the job number,
  and so the job folder's name).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.utils import instantiate
from omegaconf import DictConfig
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

# The sweeper class named by hydra.sweeper._target_ (configs/hydra/sweeper/optuna.yaml).
SWEEPER = "hydra_plugins.stn_sweeper.optuna_sweeper.OptunaSweeper"
JOURNAL = "optuna.journal"


def open_storage(storage: Optional[str], sweep_dir: Path) -> optuna.storages.BaseStorage:
    """The study's storage: a journal file in ``sweep_dir`` by default (see the module docstring).

    The journal file takes appends from several processes at once (jobs of a parallel launcher
    report intermediate values for pruning), locking with a symlink, which also works on NFS.
    """
    if storage is not None and "://" in str(storage):
        return optuna.storages.RDBStorage(str(storage))
    path = Path(sweep_dir) / JOURNAL if storage is None else Path(str(storage)).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _encoded_choices(override: Override) -> List[Any]:
    choices = list(override.sweep_iterator(transformer=Transformer.encode))
    for choice in choices:
        if not isinstance(choice, (str, int, float, bool, type(None))):
            raise ValueError(
                f"{override.input_line!r}: a choice must be a str, int, float, bool or null, "
                f"got {type(choice).__name__}"
            )
    return choices


def distribution(override: Override) -> BaseDistribution:
    """An Optuna distribution from a Hydra sweep override.

    ``choice(a, b)`` and shuffled ranges -> categorical; ``range(start, stop, step)`` -> int (or
    float) steps from ``start`` to the last value below ``stop``; ``interval(low, high)`` -> uniform
    float (int when both ends are ints), log-uniform with ``tag(log, ...)``.
    """
    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(_encoded_choices(override))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        count = math.ceil((stop - start) / step)
        if count < 1:
            raise ValueError(f"{override.input_line!r}: the range is empty")
        last = start + step * (count - 1)
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(int(start), int(last), step=int(step))
        return FloatDistribution(float(start), float(last), step=float(step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(f"{override.input_line!r}: not a search range (choice, range or interval)")


def search_space(arguments: List[str]) -> Tuple[Dict[str, BaseDistribution], List[str]]:
    """Split overrides into a search space (sweeps) and fixed overrides (passed to every trial as is).

    Later arguments win over earlier ones for the same key, so a range on the command line
    replaces the config's ``hydra.sweeper.params`` entry (which comes first).
    """
    entries: Dict[str, Any] = {}  # key -> distribution or override text, in order of first appearance
    for override in OverridesParser.create().parse_overrides(arguments):
        entries[override.get_key_element()] = (
            distribution(override) if override.is_sweep_override() else override.input_line
        )
    space = {k: v for k, v in entries.items() if isinstance(v, BaseDistribution)}
    return space, [v for v in entries.values() if isinstance(v, str)]


def _override_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def trial_overrides(params: Mapping[str, Any], fixed: List[str]) -> List[str]:
    """A trial's job overrides: its sampled ``key=value`` pairs, then the fixed overrides."""
    return [f"{k}={_override_value(v)}" for k, v in params.items()] + list(fixed)


def make_pruner(config: Optional[DictConfig]) -> optuna.pruners.BasePruner:
    """``hydra.sweeper.pruner`` (a ``_target_`` config, e.g. MedianPruner), or no pruning for null."""
    return optuna.pruners.NopPruner() if config is None else instantiate(config)


def job_trial() -> Optional[optuna.trial.Trial]:
    """The trial a job of our Optuna sweeper runs, or None outside such a job.

    The study is opened from the job's own Hydra config (storage, study name, pruner: Optuna keeps
    no pruner in a storage); the trial number is ``hydra.job.num``, which the sweeper sets to the
    trial's number.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.get("sweeper")
    if sweeper is None or sweeper.get("_target_") != SWEEPER:
        return None
    study = optuna.load_study(
        study_name=str(sweeper.study_name),
        storage=open_storage(sweeper.storage, Path(str(hydra_cfg.sweep.dir))),
        pruner=make_pruner(sweeper.get("pruner")),
    )
    # Optuna has no public "trial by number" for a live trial; the storage maps it to an id
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(hydra_cfg.job.num))
    return optuna.trial.Trial(study, trial_id)
