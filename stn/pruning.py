"""Optuna pruning: report a validation metric to the job's trial every epoch, stop a pruned trial.

Active only in a job of our Optuna sweeper (stn/study.py finds the trial); in any other run the
callback does nothing. The pruner itself is Optuna's (``hydra.sweeper.pruner``, e.g.
``hydra/sweeper/pruner=median``); with ``pruner: null`` the values are reported (the study keeps
every trial's learning curve) and nothing is pruned.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Optional

import lightning as L
import torch

from stn.logs import is_rank_zero

log = logging.getLogger(__name__)


class OptunaPruning(L.Callback):
    """After each validation (not the sanity check), ``trial.report(monitor, epoch)``; raise
    ``optuna.TrialPruned`` when the pruner says so.

    The exception carries ``metrics`` (the logged metrics at that point, floats), which
    ``stn.sweep.record_failure`` writes to the job's ``metrics.json`` with ``"status": "pruned"``;
    the sweeper then tells the study PRUNED. Under DDP rank zero reports and asks the pruner, and
    every rank gets its answer, so all ranks stop together.
    """

    def __init__(self, monitor: str = "val/acc") -> None:
        self.monitor = monitor
        self._trial: Optional[Any] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not is_rank_zero():
            return
        from stn.study import job_trial

        self._trial = job_trial()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune, message, metrics = False, "", {}
        if self._trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                log.warning("OptunaPruning: no %r logged; nothing reported to the trial", self.monitor)
            else:
                value = float(value)
                epoch = trainer.current_epoch
                if math.isfinite(value):
                    self._trial.report(value, step=epoch)
                prune = self._trial.should_prune()
                message = f"pruned after epoch {epoch}: {self.monitor}={value:.4f}"
                metrics = _floats(trainer.callback_metrics)
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune)
        if prune:
            import optuna

            err = optuna.TrialPruned(message or "pruned")
            err.metrics = metrics
            raise err


def _floats(metrics: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor))}
