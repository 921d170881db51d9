"""What a run writes about itself: ``metrics.json``, TensorBoard's HParams, the console and train.log.

- :func:`is_rank_zero`: the one "does this process write the run's files" check (Lightning's rank,
  0 outside distributed runs).
- :func:`write_metrics`: the one writer of a run's ``metrics.json`` (final metrics, ``status``,
  ``error``, ``tested_checkpoint``), read back by the sweep summary (stn/sweep.py).
- :func:`hyperparameters` and :func:`log_hparams_with_metrics`: TensorBoard's HParams tab shows the
  runs of a sweep side by side with their final metrics.
- :func:`quiet_lightning`, :class:`MetricFreeModelSummary`, :class:`EpochLog`, :func:`run_summary`:
  what the console and the run's ``train.log`` show (Hydra sends our log and Lightning's to both,
  configs/hydra/default.yaml).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams
from torchmetrics import Metric

from stn.sweep_jobs import METRIC_ORDER, WALL_TIME

log = logging.getLogger(__name__)

# Sections of the config that define what a checkpoint contains; eval.py rebuilds them.
MODEL_SECTIONS = ("data", "model", "module")
# Final metrics that no Lightning logger has written (stn.tasks.train measures them itself).
OWN_SCALARS = ("time/",)
# Metrics of EpochLog's line.
EPOCH_METRICS = ("train/loss", "val/loss", "val/acc", "val/acc_best", "val/iou50")
# Metrics in the end-of-run summary (besides the optimized metric).
MAIN_METRICS = ("val/acc_best", "test/acc", "test/iou50", WALL_TIME)


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


# Keys that say where or how a run runs, not what it learns: left out of HParams (as are keys
# ending in _dir or _path, and null values).
NOT_HYPERPARAMETERS = frozenset(
    {
        "_target_",
        "_partial_",
        "accelerator",
        "devices",
        "device",
        "strategy",
        "num_nodes",
        "download",
        "enable_progress_bar",
        "enable_model_summary",
        "enable_checkpointing",
        "num_sanity_val_steps",
        "log_every_n_steps",
        "fast_dev_run",
        "detect_anomaly",
        "eval_batch_size",
    }
)
# Config groups whose choice (model=cnn) is itself a hyperparameter.
CHOICE_GROUPS = ("data", "model", "module", "experiment")


def _hydra_choices_and_overrides() -> Tuple[Dict[str, str], List[str]]:
    """The run's config group choices and its command-line overrides (empty outside Hydra)."""
    if not HydraConfig.initialized():
        return {}, []
    hydra_cfg = HydraConfig.get()
    choices = {
        g: str(hydra_cfg.runtime.choices[g]) for g in CHOICE_GROUPS if hydra_cfg.runtime.choices.get(g)
    }
    return choices, list(hydra_cfg.overrides.task)


def hyperparameters(cfg: DictConfig) -> Dict[str, Any]:
    """The hyperparameters of the run a person would sweep, flat ``section/key``, for HParams.

    ``seed``, the choices of the groups in CHOICE_GROUPS (``model: attention``, when Hydra runs),
    then every ``data``, ``model``, ``module`` and ``trainer`` value except NOT_HYPERPARAMETERS,
    paths (``*_dir``, ``*_path``) and nulls. Values are numbers, strings or booleans.
    """
    choices, _ = _hydra_choices_and_overrides()
    flat: Dict[str, Any] = dict(choices)
    if cfg.get("seed") is not None:
        flat["seed"] = cfg.seed
    for section in MODEL_SECTIONS + ("trainer",):
        if cfg.get(section) is None:
            continue
        stack = [(section, OmegaConf.to_container(cfg[section], resolve=True))]
        while stack:
            prefix, node = stack.pop()
            for k, v in node.items():
                if isinstance(v, dict):
                    stack.append((f"{prefix}/{k}", v))
                elif k not in NOT_HYPERPARAMETERS and not k.endswith(("_dir", "_path")) and v is not None:
                    flat[f"{prefix}/{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return dict(sorted(flat.items()))


def swept_keys(cfg: DictConfig) -> List[str]:
    """The hyperparameters set on the command line (``model=cnn`` -> ``model``, ``module.optimizer.lr=...``
    -> ``module/optimizer/lr``): what a sweep varies."""
    _, overrides = _hydra_choices_and_overrides()
    keys = [o.partition("=")[0].lstrip("+~").replace(".", "/") for o in overrides]
    return [k for k in keys if k in hyperparameters(cfg)]


def metric_order(metrics: Mapping[str, Any], optimized: Optional[str]) -> List[str]:
    """The final metrics' names, optimized metric and ``test/acc`` first, then METRIC_ORDER, then the rest.

    >>> metric_order({"val/loss": 1, "val/acc_best": 1, "test/acc": 1, "lr/x": 1}, "val/acc_best")
    ['val/acc_best', 'test/acc', 'val/loss', 'lr/x']
    """
    ordered = [m for m in (optimized, "test/acc", *METRIC_ORDER) if m in metrics]
    return list(dict.fromkeys(ordered + sorted(metrics)))


def log_hparams_with_metrics(trainer: Any, cfg: DictConfig, metrics: Mapping[str, Any]) -> None:
    """Show this run in TensorBoard's HParams tab: its hyperparameters beside its final metrics.

    For every TensorBoard logger of ``trainer`` (rank zero only), writes the hparams plugin's
    session start info (:func:`hyperparameters`), session end info (status success) and the
    experiment: the metric columns in :func:`metric_order` (optimized metric and ``test/acc``
    first), the hyperparameters set on the command line (:func:`swept_keys`) marked as differing,
    so TensorBoard lists them first. The tab reads each metric's value as the last point of the
    scalar of the same name: Lightning logged ``train/*``, ``val/*``, ``test/*``, so their last
    points are the final metrics; the metrics ``train()`` adds itself (``time/wall_s``) get one
    scalar point here, at the last global step.

    TensorBoard takes the experiment from one run of a log folder: the runs of one sweep share
    their swept keys and metric names; a hyperparameter only some runs have (``model/box_head/*``
    beside ``model=cnn`` runs) shows when the run TensorBoard picks has it. Call this after
    ``trainer.test`` (the logger may be finalized: its writer reopens a new event file in the same
    folder, closed again here).
    """
    if not is_rank_zero():
        return
    loggers = [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, TensorBoardLogger)]
    if not loggers:
        return
    params = hyperparameters(cfg)
    # learning rates are the schedule's, not results: they stay in the scalars only
    final = {k: float(v) for k, v in metrics.items() if _finite(v) and not k.startswith(("lr-", "lr/"))}
    final = {k: final[k] for k in metric_order(final, cfg.get("optimized_metric"))}
    extra = {k: v for k, v in final.items() if k.startswith(OWN_SCALARS)}
    experiment, start_info, end_info = hparams(params, final)
    content = HParamsPluginData.FromString(experiment.value[0].metadata.plugin_data.content)
    swept = set(swept_keys(cfg))
    for info in content.experiment.hparam_infos:
        info.differs = info.name in swept
    experiment.value[0].metadata.plugin_data.content = content.SerializeToString()
    step = int(getattr(trainer, "global_step", 0))
    for logger in loggers:
        writer = logger.experiment
        for tag, value in extra.items():
            writer.add_scalar(tag, value, step)
        file_writer = writer._get_file_writer()  # reopened if Lightning closed it (as Lightning does)
        for summary in (experiment, start_info, end_info):
            file_writer.add_summary(summary)
        writer.flush()
        writer.close()


# -- the console and train.log ---------------------------------------------------------------------
# Lightning's messages that say nothing about the run: advertising tips, and the note that our own
# model summary (MetricFreeModelSummary) replaces its default one.
LIGHTNING_NOISE = ("💡 Tip:", "Trainer already configured with model summary callbacks")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_NOISE)


def quiet_lightning() -> None:
    """Drop Lightning's tips (LIGHTNING_NOISE) and the deprecation warning its pytree helper triggers
    on every fit (``isinstance(treespec, LeafSpec)`` is deprecated, torch >= 2.9). Idempotent."""
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropNoise) for f in rank_zero_logger.filters):
        rank_zero_logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")


class MetricFreeModelSummary(ModelSummary):
    """Lightning's model summary without the torchmetrics objects the LightningModule holds
    (accuracies, loss means, IoU): they have no parameters and are not part of the network."""

    def _summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        summary = super()._summary(trainer, pl_module)
        layers = getattr(summary, "_layer_summary", {})
        for name, layer in list(layers.items()):
            if isinstance(getattr(layer, "_module", None), Metric):
                layer.detach_hook()
                del layers[name]
        return summary


class EpochLog(L.Callback):
    """One log line per training epoch, for runs without a progress bar (output not a terminal):
    the epoch, its main metrics (EPOCH_METRICS) and its wall time."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.time()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_rank_zero():
            return
        metrics = trainer.callback_metrics
        shown = ", ".join(f"{k} {float(metrics[k]):.4f}" for k in EPOCH_METRICS if k in metrics)
        elapsed = time.time() - getattr(self, "_start", time.time())
        log.info("Epoch %d/%d: %s (%.0f s)", trainer.current_epoch + 1, trainer.max_epochs, shown, elapsed)


def run_summary(
    output_dir: str,
    metrics: Mapping[str, Any],
    tested_checkpoint: Optional[str],
    optimized_metric: Optional[str],
    tensorboard_dir: Optional[str],
) -> str:
    """The end-of-run summary: where the run is, what was tested, its main metrics, what to run next.

    >>> print(run_summary("/r", {"test/acc": 0.99, "time/wall_s": 12.3}, "/r/best.ckpt", None, "/r"))
    Run folder:        /r
    Tested checkpoint: /r/best.ckpt
    Metrics:           test/acc 0.9900, time/wall_s 12.3
    Evaluate again:    python eval.py ckpt_path=/r/best.ckpt
    TensorBoard:       tensorboard --logdir /r
    """
    names = metric_order(metrics, optimized_metric)
    main = [m for m in names if m in MAIN_METRICS or m == optimized_metric]
    shown = ", ".join(
        f"{m} {metrics[m]:.1f}" if m == WALL_TIME else f"{m} {metrics[m]:.4f}"
        for m in main
        if _finite(metrics.get(m))
    )
    lines = [
        f"Run folder:        {output_dir}",
        f"Tested checkpoint: {tested_checkpoint or 'none (the weights at the end of training)'}",
        f"Metrics:           {shown or 'none'}",
    ]
    if tested_checkpoint:
        lines.append(f"Evaluate again:    python eval.py ckpt_path={shlex.quote(str(tested_checkpoint))}")
    if tensorboard_dir:
        lines.append(f"TensorBoard:       tensorboard --logdir {shlex.quote(str(tensorboard_dir))}")
    return "\n".join(lines)
