"""Train and evaluate from a composed Hydra config; ``train.py`` and ``eval.py`` only call these."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from stn import sweep
from stn.callbacks import SaveConfig
from stn.data.base import DataMissingError, TensorDataModule

log = logging.getLogger(__name__)

# Sections of the config that define what a checkpoint contains; eval.py rebuilds them.
MODEL_SECTIONS = ("data", "model", "module")


def instantiate_all(section: Optional[DictConfig]) -> List[Any]:
    """Instantiate every entry of a config dict that has a ``_target_`` (others, and nulls, are skipped)."""
    if not section:
        return []
    return [instantiate(c) for c in section.values() if isinstance(c, DictConfig) and "_target_" in c]


def build(cfg: DictConfig) -> Tuple[TensorDataModule, L.LightningModule]:
    """The datamodule, and the LightningModule around the model sized for the data."""
    datamodule = instantiate(cfg.data)
    channels, height, width = datamodule.image_shape
    model = instantiate(
        cfg.model,
        in_channels=channels,
        num_classes=datamodule.num_classes,
        image_size=(height, width),
        mean=tuple(datamodule.mean),
        std=tuple(datamodule.std),
    )
    module = instantiate(cfg.module, model=model, num_classes=datamodule.num_classes)
    return datamodule, module


def build_trainer(cfg: DictConfig, extra_callbacks: List[L.Callback] = ()) -> L.Trainer:
    callbacks = instantiate_all(cfg.get("callbacks")) + list(extra_callbacks)
    loggers = instantiate_all(cfg.get("logger"))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def _floats(metrics: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if isinstance(v, (int, float, torch.Tensor))}


@rank_zero_only
def write_metrics(output_dir: str, metrics: Dict[str, Any]) -> Path:
    """Write ``metrics.json`` (floats; NaN as null) in the run's output folder."""
    path = Path(output_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
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


def train(cfg: DictConfig) -> Dict[str, float]:
    """Fit, then test the best checkpoint; write ``metrics.json``; return the final metrics."""
    start = time.time()
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build(cfg)
    saved = {k: OmegaConf.to_container(cfg[k], resolve=False) for k in MODEL_SECTIONS}
    trainer = build_trainer(cfg, [SaveConfig(saved)])
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
    metrics["time/wall_s"] = time.time() - start
    sweep.log_hparams_with_metrics(trainer, cfg, metrics)
    write_metrics(cfg.paths.output_dir, {**metrics, "status": "ok", "tested_checkpoint": best})
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
    """Rebuild data and model from a checkpoint, test them, write ``metrics.json``, return metrics."""
    path = Path(cfg.ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path!r}: no such checkpoint file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    saved = checkpoint.get("stn_config")
    if saved is None:
        raise ValueError(f"ckpt_path={cfg.ckpt_path!r} has no 'stn_config': it was not written by train.py")
    with open_dict(cfg):
        for key in MODEL_SECTIONS:
            if cfg.get(key) is None:
                cfg[key] = saved[key]
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    trainer = build_trainer(cfg)
    trainer.test(module, datamodule=datamodule)
    metrics = _floats(trainer.callback_metrics)
    write_metrics(cfg.paths.output_dir, {**metrics, "status": "ok", "tested_checkpoint": str(path)})
    return metrics


def result_row(name: str, metrics: Dict[str, float]) -> str:
    """A markdown table row: name | accuracy % | error % | IoU | IoU>=0.5."""
    acc = metrics.get("test/acc", float("nan"))
    cells = [name, f"{100 * acc:.2f}", f"{100 * (1 - acc):.2f}"]
    cells += [f"{metrics[k]:.3f}" if k in metrics else "-" for k in ("test/iou", "test/iou50")]
    return "| " + " | ".join(cells) + " |"


def run_task(task, cfg: DictConfig) -> Optional[float]:
    """Run ``train`` or ``evaluate`` for an entry point.

    Data that is missing stops the run with one message instead of a traceback. Returns the
    metric named by ``cfg.optimized_metric`` (NaN when absent), for sweepers; ``eval.py`` also
    prints the results-table row of the checkpoint. In a multirun (stn/sweep.py) a job that raises
    is recorded as failed (``metrics.json`` ``status``/``error``, traceback in its log) and returns
    None, so the sweep goes on; a job without a finite metric also returns None.
    """
    start = time.time()
    try:
        metrics = task(cfg)
    except Exception as err:
        if sweep.in_multirun():
            return sweep.record_failure(cfg, err, time.time() - start)
        if isinstance(err, DataMissingError):
            log.error(str(err))
            raise SystemExit(1) from None
        raise
    if task is evaluate:
        print(result_row(Path(cfg.ckpt_path).name, metrics))
    return sweep.sweeper_value(metrics.get(cfg.get("optimized_metric") or "", float("nan")))
