"""What a run writes about itself: ``metrics.json`` and TensorBoard's HParams.

- :func:`is_rank_zero`: the one "does this process write the run's files" check (Lightning's rank,
  0 outside distributed runs).
- :func:`write_metrics`: the one writer of a run's ``metrics.json`` (final metrics, ``status``,
  ``error``, ``tested_checkpoint``), read back by the sweep summary (stn/sweep.py).
- :func:`hyperparameters` and :func:`log_hparams_with_metrics`: TensorBoard's HParams tab shows the
  runs of a sweep side by side with their final metrics.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard.summary import hparams

# Sections of the config that define what a checkpoint contains; eval.py rebuilds them.
MODEL_SECTIONS = ("data", "model", "module")
# Final metrics that no Lightning logger has written (stn.tasks.train measures them itself).
OWN_SCALARS = ("time/",)


def is_rank_zero() -> bool:
    """True in the process that writes the run's files (rank 0; every process outside DDP)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def write_metrics(output_dir: str, metrics: Mapping[str, Any], **fields: Any) -> Optional[Path]:
    """Write ``<output_dir>/metrics.json``: ``metrics`` and ``fields`` (``status``, ``error``, ...).

    Non-finite floats become null. Rank zero only (other ranks return None).
    """
    if not is_rank_zero():
        return None
    path = Path(output_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**metrics, **fields}
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    # via a rename: a summary refreshed by a parallel job at this moment reads all of it or none
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def hyperparameters(cfg: DictConfig) -> Dict[str, Any]:
    """Flat ``section/key`` hyperparameters of the run, for TensorBoard's HParams tab."""
    flat: Dict[str, Any] = {"seed": cfg.get("seed")}
    for section in MODEL_SECTIONS + ("trainer",):
        if cfg.get(section) is None:
            continue
        container = OmegaConf.to_container(cfg[section], resolve=True)
        stack = [(section, container)]
        while stack:
            prefix, node = stack.pop()
            for k, v in node.items():
                if isinstance(v, dict):
                    stack.append((f"{prefix}/{k}", v))
                else:
                    flat[f"{prefix}/{k}"] = (
                        v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
                    )
    return flat


def _hparam_value(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v
    return "None" if v is None else str(v)


def log_hparams_with_metrics(trainer: Any, cfg: DictConfig, metrics: Mapping[str, Any]) -> None:
    """Show this run in TensorBoard's HParams tab: its hyperparameters beside its final metrics.

    For every TensorBoard logger of ``trainer`` (rank zero only), writes the hparams plugin's
    session start info (:func:`hyperparameters`: flat ``section/key`` values) and session end info
    (status success). The tab reads each metric's value as the last point of the scalar of the
    same name: Lightning logged ``train/*``, ``val/*``, ``test/*`` (every epoch end) and ``lr-*``,
    so their last points are the final metrics; the metrics ``train()`` adds itself
    (``time/wall_s``) get one scalar point here, at the last global step.

    No ``experiment`` summary is written on purpose: TensorBoard takes the experiment (the list of
    hparams and metrics) from the first run that has one and ignores the others, so one run's
    keys would hide those of runs that differ (e.g. ``model=attention`` beside ``model=cnn``);
    without it, TensorBoard builds the experiment from all runs' session infos and scalar tags.
    Call it after ``trainer.test`` (the logger may be finalized: its writer reopens a new event
    file in the same folder, closed again here).
    """
    if not is_rank_zero():
        return
    loggers = [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, TensorBoardLogger)]
    if not loggers:
        return
    params = {k: _hparam_value(v) for k, v in hyperparameters(cfg).items()}
    final = {k: float(v) for k, v in metrics.items() if _finite(v)}
    extra = {k: v for k, v in final.items() if k.startswith(OWN_SCALARS)}
    _, start_info, end_info = hparams(params, final)
    step = int(getattr(trainer, "global_step", 0))
    for logger in loggers:
        writer = logger.experiment
        for tag, value in extra.items():
            writer.add_scalar(tag, value, step)
        file_writer = writer._get_file_writer()  # reopened if Lightning closed it (as Lightning does)
        file_writer.add_summary(start_info)
        file_writer.add_summary(end_info)
        writer.flush()
        writer.close()
