"""Train and evaluate from a composed Hydra config; ``train.py`` and ``eval.py`` only call these."""

from __future__ import annotations

import gc
import logging
import math
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from stn.callbacks import SaveConfig
from stn.data.base import DataMissingError, TensorDataModule
from stn.inference import build_model, data_info
from stn.logs import (
    MODEL_SECTIONS,
    EpochLog,
    MetricFreeModelSummary,
    hyperparameters,
    is_rank_zero,
    log_hparams_with_metrics,
    quiet_lightning,
    run_summary,
    write_metrics,
)
from stn.sweep_jobs import WALL_TIME
from stn.validation import ConfigError, check_config, load_weights, read_checkpoint

log = logging.getLogger(__name__)
# Tracebacks of failed runs: to the run's train.log only (configs/hydra/default.yaml).
traceback_log = logging.getLogger("stn.traceback")
# Mistakes in a command, config or data folder: reported in one line, without a traceback.
USER_ERRORS = (DataMissingError, ConfigError)


def instantiate_all(section: Optional[DictConfig]) -> List[Any]:
    """Instantiate every entry of a config dict that has a ``_target_`` (others, and nulls, are skipped)."""
    if not section:
        return []
    return [instantiate(c) for c in section.values() if isinstance(c, DictConfig) and "_target_" in c]


def build(cfg: DictConfig) -> Tuple[TensorDataModule, L.LightningModule]:
    """The datamodule, and the LightningModule around the model sized for the data."""
    datamodule = instantiate(cfg.data)
    # The model is sized and normalized from the data; some sets measure that in setup()
    # (the mean and std of synthetic canvases or of an image folder), so set it up here, once.
    datamodule.setup()
    model = build_model(cfg.model, data_info(datamodule))
    try:
        module = instantiate(cfg.module, model=model, num_classes=datamodule.num_classes)
    except InstantiationException as err:
        # Hydra wraps what the constructor raised; a ConfigError (a module setting that does not
        # fit the model) stays the one-line user error it is
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise
    return datamodule, module


def build_trainer(cfg: DictConfig, extra_callbacks: List[L.Callback] = ()) -> L.Trainer:
    """The Trainer with the configured callbacks and loggers.

    ``trainer.enable_progress_bar: null`` shows the progress bar only when stdout is a terminal (a
    redirected log would get every redraw), else one line per epoch (:class:`~stn.logs.EpochLog`);
    the model summary leaves out the metric objects.
    """
    quiet_lightning()
    callbacks = instantiate_all(cfg.get("callbacks")) + list(extra_callbacks)
    loggers = instantiate_all(cfg.get("logger"))
    overrides: Dict[str, Any] = {}
    if cfg.trainer.get("enable_progress_bar") is None:
        overrides["enable_progress_bar"] = sys.stdout.isatty()
        if not overrides["enable_progress_bar"]:
            callbacks.append(EpochLog())
    if cfg.trainer.get("enable_model_summary") is not False:
        callbacks.append(MetricFreeModelSummary())
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def _tensorboard_dir(cfg: DictConfig, trainer: L.Trainer) -> Optional[str]:
    """What to pass to ``tensorboard --logdir``: the sweep folder in a multirun, else the run folder."""
    if not any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
        return None
    return str(HydraConfig.get().sweep.dir) if in_multirun() else str(cfg.paths.output_dir)


def finish_run(cfg: DictConfig, trainer: L.Trainer, metrics: Dict[str, float], tested: Optional[str]) -> None:
    """``metrics.json`` with status ok, and the end-of-run summary on the console and in train.log."""
    write_metrics(cfg.paths.output_dir, metrics, status="ok", tested_checkpoint=tested)
    if is_rank_zero():
        summary = run_summary(
            cfg.paths.output_dir, metrics, tested, cfg.get("optimized_metric"), _tensorboard_dir(cfg, trainer)
        )
        log.info("Run finished.\n%s", summary)


def _floats(metrics: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if isinstance(v, (int, float, torch.Tensor))}


def train(cfg: DictConfig) -> Dict[str, float]:
    """Fit, then test the best checkpoint; write ``metrics.json``; return the final metrics."""
    start = time.time()
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build(cfg)
    saved = {k: OmegaConf.to_container(cfg[k], resolve=False) for k in MODEL_SECTIONS}
    trainer = build_trainer(cfg, [SaveConfig(saved, data_info(datamodule))])
    for logger in trainer.loggers:
        logger.log_hyperparams(hyperparameters(cfg))

    metrics: Dict[str, float] = {}
    best = None
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(_floats(trainer.callback_metrics))
    if cfg.get("test", True):
        if cfg.get("train", True):
            best = best_checkpoint(trainer, cfg.get("ckpt_path")) or None
            if not best:
                log.warning("No best checkpoint was saved; testing the current weights.")
        else:
            best = cfg.get("ckpt_path")
        trainer.test(module, datamodule=datamodule, ckpt_path=best)
        metrics.update(_floats(trainer.callback_metrics))
    metrics[WALL_TIME] = time.time() - start
    log_hparams_with_metrics(trainer, cfg, metrics)
    finish_run(cfg, trainer, metrics, best)
    return metrics


def best_checkpoint(trainer: L.Trainer, resumed_from: Optional[str]) -> str:
    """The checkpoint with the best monitored score ("" if none was saved).

    A run resumed into a new output folder (every Hydra run has its own) gets from Lightning only
    the old best's path, not its score, so the first epoch after the resume becomes "best" however
    it scores. The best of the epochs before the resume, read from the resumed checkpoint, competes
    here too, when its file still exists.
    """
    callback = trainer.checkpoint_callback
    if callback is None:
        return ""
    best, score = callback.best_model_path, callback.best_model_score
    if resumed_from:
        state = torch.load(resumed_from, map_location="cpu", weights_only=True).get("callbacks", {})
        old = state.get(callback.state_key, {})
        old_path, old_score = old.get("best_model_path"), old.get("best_model_score")
        if (
            old_path
            and old_score is not None
            and Path(old_path).is_file()
            and (score is None or (old_score > score if callback.mode == "max" else old_score < score))
        ):
            best = old_path
    return best


def evaluate(cfg: DictConfig) -> Dict[str, float]:
    """Rebuild data and model from a checkpoint, test them, write ``metrics.json``, return metrics.

    Prints the checkpoint's results-table row (:func:`result_row`) under its header.
    """
    check_config(cfg)
    path = Path(cfg.ckpt_path).expanduser()
    checkpoint = read_checkpoint(cfg)
    saved = checkpoint["stn_config"]
    with open_dict(cfg):
        for key in MODEL_SECTIONS:
            if cfg.get(key) is None:
                cfg[key] = saved[key]
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build(cfg)
    load_weights(module, checkpoint, cfg)
    trainer = build_trainer(cfg)
    trainer.test(module, datamodule=datamodule)
    metrics = _floats(trainer.callback_metrics)
    finish_run(cfg, trainer, metrics, str(path))
    if is_rank_zero():
        print(RESULT_HEADER)
        print(result_row(path.name, metrics))
    return metrics


# The header of result_row's markdown table.
RESULT_HEADER = "| checkpoint | test acc % | test error % | test IoU | test IoU>=0.5 |\n|---|---|---|---|---|"


def result_row(name: str, metrics: Dict[str, float]) -> str:
    """A markdown table row under RESULT_HEADER: name | accuracy % | error % | IoU | IoU>=0.5."""
    acc = metrics.get("test/acc", float("nan"))
    cells = [name, f"{100 * acc:.2f}", f"{100 * (1 - acc):.2f}"]
    cells += [f"{metrics[k]:.3f}" if k in metrics else "-" for k in ("test/iou", "test/iou50")]
    return "| " + " | ".join(cells) + " |"


# -- running a task for an entry point: its status, failures, the sweeper's value -----------------
class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (a scheduler or ``kill`` stopping the run)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``, ``hparams_search=...``).

    False when Hydra is not initialized (``stn.tasks.train`` called directly, as in tests).
    """
    if not HydraConfig.initialized():
        return False
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # a partial hydra config
        return False


def error_text(err: BaseException) -> str:
    """``"<type>: <message>"`` of an exception."""
    message = str(err).strip()
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _chain(err: BaseException) -> List[BaseException]:
    """``err`` and the exceptions it was raised from or while handling."""
    found: List[BaseException] = []
    while err is not None and all(err is not e for e in found):
        found.append(err)
        err = err.__cause__ or err.__context__
    return found


def _pruned(err: BaseException) -> bool:
    """``optuna.TrialPruned`` (stn.pruning stops a trial with it); Optuna is imported only by searches."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(err, optuna.TrialPruned)


def run_status(err: BaseException) -> str:
    """The ``metrics.json`` status of a run that raised ``err``: interrupted, pruned, diverged or failed.

    ``interrupted``: Ctrl-C or SIGTERM. Lightning turns a Ctrl-C during ``fit``/``test`` into
    ``sys.exit(1)`` raised while it handles the KeyboardInterrupt, and a SIGTERM into its
    ``SIGTERMException``: both are found in the exception's chain. ``diverged``: a
    FloatingPointError (stn.lit.NonFiniteLossError is one). ``pruned``: an Optuna trial stopped by
    its pruner (stn.pruning). ``failed``: anything else.
    """
    chain = _chain(err)
    if any(isinstance(e, (KeyboardInterrupt, SIGTERMException)) for e in chain):
        return "interrupted"
    if any(_pruned(e) for e in chain):
        return "pruned"
    if any(isinstance(e, FloatingPointError) for e in chain):
        return "diverged"
    return "failed"


def record_failure(cfg: DictConfig, err: BaseException, status: str, wall_s: float) -> str:
    """Record a run that raised: one log line, its traceback in the run's log, ``metrics.json``.

    ``metrics.json`` gets ``status``, ``"error": "<type>: <message>"`` and ``time/wall_s``. The
    traceback goes to the logger ``stn.traceback``, which configs/hydra/default.yaml sends to the
    run's ``train.log`` only (the console gets the one line, and Hydra's own report where the
    error propagates); user mistakes (:data:`USER_ERRORS`) need no traceback. A pruned trial is
    no error: one info line, no traceback, and the metrics it had reached (``err.metrics``, set by
    stn.pruning). Returns the error text.
    """
    text = error_text(err)
    metrics = {WALL_TIME: wall_s}
    if status == "pruned":  # not an error: the pruner's decision, with the metrics reached so far
        log.info("Trial %s", text)
        metrics = {**getattr(err, "metrics", {}), **metrics}
    else:
        where = "the sweep goes on" if in_multirun() and status != "interrupted" else "stopping"
        log.error("Run %s (%s): %s", status, where, text)
    if not isinstance(err, USER_ERRORS) and status != "pruned":
        traceback_log.error("%s run:", status.capitalize(), exc_info=(type(err), err, err.__traceback__))
    write_metrics(cfg.paths.output_dir, metrics, status=status, error=text)
    return text


def release(err: BaseException) -> None:
    """Free what a failed job held (the traceback's frames hold the trainer, model and batches)."""
    traceback.clear_frames(err.__traceback__)
    err.__traceback__ = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sweeper_value(value: Any) -> Optional[float]:
    """What a job returns to the sweeper: the optimized metric, or None when it is not a finite number.

    In a multirun a missing or NaN metric becomes None, which our Optuna sweeper
    (hydra_plugins/stn_sweeper) records as a FAIL trial, or PRUNED when the job's metrics.json
    says ``pruned``; the study goes on. Hydra's basic (grid) sweeper ignores return values.
    Outside a multirun the value is returned as is (NaN when missing).
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if in_multirun() and not math.isfinite(number):
        return None
    return number


def run_task(task: Callable[[DictConfig], Dict[str, float]], cfg: DictConfig) -> Optional[float]:
    """Run ``train`` or ``evaluate`` for an entry point; return the optimized metric for sweepers.

    Returns the metric named by ``cfg.optimized_metric`` (NaN when absent; None in a multirun when
    it is not finite). A run that raises writes ``metrics.json`` with its status (see
    :func:`run_status`) and error and logs its traceback to ``train.log`` (:func:`record_failure`);
    then Ctrl-C and SIGTERM stop the run (and a sweep); in a multirun any other failure returns
    None, so the sweep goes on; a single run ends with exit status 1: one line for a user mistake
    or a divergence, the error re-raised for anything else.
    """
    start = time.time()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    try:
        metrics = task(cfg)
    except BaseException as err:
        status = run_status(err)
        record_failure(cfg, err, status, time.time() - start)
        if status == "interrupted":
            raise
        if in_multirun():
            release(err)
            return None
        if status == "diverged" or isinstance(err, USER_ERRORS):
            raise SystemExit(1) from None
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return sweeper_value(metrics.get(cfg.get("optimized_metric") or "", float("nan")))
