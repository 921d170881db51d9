"""Lightning callbacks: TensorBoard pictures of what the model looks at, and config in checkpoints."""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from stn import pictures
from stn.lit import NonFiniteLossError, nonfinite_tensors
from stn.logs import is_rank_zero

log = logging.getLogger(__name__)


def _tensorboard(trainer: L.Trainer):
    """The SummaryWriter of the first TensorBoard logger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class GlimpseImages(L.Callback):
    """Logs what the model looks at, on a fixed batch, every ``every_n_epochs`` validations.

    TensorBoard tags (``<stage>`` is ``val`` or ``test``), drawn by :mod:`stn.pictures` (its colour
    convention: predicted box and class red, true box and class green, glimpse k in its own
    colour, a red frame for a wrong prediction; a legend strip under each picture):

    - ``<stage>/boxes``: a grid of inputs, upscaled ``scale`` times (at most ``max_side`` pixels a
      side: large canvases are shrunk to it), with every predicted box (all K of multi-glimpse
      models) and, for data with true boxes, the true box (``batch["box"]``) or all true boxes
      (``batch["boxes"]``, those of another class than the label, by ``batch["digit_labels"]``, in
      pale green); each tile titled with the predicted and the true class;
    - ``<stage>/glimpses``: the matching glimpses, upscaled like the inputs, in rows of ``nrow``
      (one row of K glimpses per input for multi-glimpse models), with the retina's context levels
      beside each glimpse;
    - histograms of all predicted boxes of the epoch, as fractions of the image size:
      ``<stage>/box_center_x``, ``box_center_y``, ``box_width``, ``box_height``, ``box_scale``
      (sqrt of the area fraction), and for data with true boxes ``box_width_true`` and
      ``box_height_true`` beside them. Non-finite boxes (a diverging run) are left out of the
      pictures and histograms and counted in the scalar ``<stage>/nonfinite_boxes``.

    Args:
        num_images: inputs in the grid (the first ones of the first batch: the same every time).
        every_n_epochs: log at validation epochs divisible by this.
        scale: integer upscaling of the inputs and glimpses, so boxes on 28x28 digits are visible.
        nrow: images per grid row.
        max_side: the largest side of an input in ``<stage>/boxes``, in pixels (the upscaling is
            lowered, and larger inputs shrunk anti-aliased, to fit).
    """

    def __init__(
        self,
        num_images: int = 16,
        every_n_epochs: int = 1,
        scale: int = 4,
        nrow: int = 8,
        max_side: int = 512,
    ) -> None:
        for name, value in (
            ("num_images", num_images),
            ("every_n_epochs", every_n_epochs),
            ("scale", scale),
            ("nrow", nrow),
            ("max_side", max_side),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GlimpseImages: {name} must be a positive integer, got {value!r}")
        self.num_images, self.every_n_epochs, self.scale, self.nrow = num_images, every_n_epochs, scale, nrow
        self.max_side = max_side
        self._fixed: Dict[str, Dict[str, Tensor]] = {}
        self._stats: List[Dict[str, Tensor]] = []

    def _active(self, trainer: L.Trainer, stage: str) -> bool:
        if trainer.sanity_checking or not is_rank_zero() or _tensorboard(trainer) is None:
            return False
        return stage == "test" or trainer.current_epoch % self.every_n_epochs == 0

    def _on_batch_end(self, trainer, outputs, batch, batch_idx, stage: str) -> None:
        if not self._active(trainer, stage):
            return
        if batch_idx == 0 and stage not in self._fixed:
            self._fixed[stage] = {k: v[: self.num_images].detach().clone() for k, v in batch.items()}
        if isinstance(outputs, dict) and "boxes" in outputs:
            size = batch["image"].shape[-2:]
            stats = box_stats(outputs["boxes"].reshape(-1, 4), size)
            true = _true_boxes(batch)
            if true is not None:
                true = box_stats(true.reshape(-1, 4), size)
                stats.update({f"{k}_true": true[k] for k in ("box_width", "box_height")})
            self._stats.append({k: v.cpu() for k, v in stats.items()})

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._on_batch_end(trainer, outputs, batch, batch_idx, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._on_batch_end(trainer, outputs, batch, batch_idx, "test")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, "test")

    @torch.no_grad()
    def draw(
        self, pl_module: torch.nn.Module, batch: Dict[str, Tensor], classes: Optional[List[str]] = None
    ) -> Dict[str, Tensor]:
        """The pictures of one batch, as logged: ``{"boxes": (3, H', W'), "glimpses": (3, H'', W'')}``
        uint8 (no ``"glimpses"`` for models without them); the model is run in eval mode."""
        was_training = pl_module.training
        pl_module.eval()
        out = pl_module(batch["image"])
        pl_module.train(was_training)
        drawn = {
            "boxes": pictures.box_grid(
                batch["image"],
                out.get("boxes"),
                _true_boxes(batch),
                out["logits"].argmax(-1).cpu(),
                batch["label"].cpu(),
                class_names=classes,
                scale=self.scale,
                nrow=self.nrow,
                true_box_labels=batch.get("digit_labels") if "boxes" in batch else None,
                max_side=self.max_side,
                coarse_boxes=out.get("coarse_boxes"),
            )
        }
        if "glimpses" in out:
            drawn["glimpses"] = pictures.glimpse_grid(
                out["glimpses"],
                out.get("retina"),
                scale=self.scale,
                nrow=self.nrow,
                retina_scales=getattr(getattr(pl_module, "model", None), "retina_scales", None),
            )
        return drawn

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        stats, self._stats = self._stats, []
        if not self._active(trainer, stage) or stage not in self._fixed:
            return
        writer, step = _tensorboard(trainer), trainer.global_step
        classes = getattr(trainer.datamodule, "classes", None) or None
        for name, picture in self.draw(pl_module, self._fixed[stage], classes).items():
            writer.add_image(f"{stage}/{name}", picture, step)
        if stats:
            merged = {k: torch.cat([s[k] for s in stats]) for k in stats[0]}
            bad = int(merged.pop("nonfinite").sum())
            if bad:
                writer.add_scalar(f"{stage}/nonfinite_boxes", bad, step)
                rank_zero_warn(f"{stage}: {bad} predicted boxes were NaN/Inf; left out of the pictures")
            for name, values in merged.items():
                if len(values):
                    writer.add_histogram(f"{stage}/{name}", values, step)


def _true_boxes(batch: Dict[str, Tensor]) -> Optional[Tensor]:
    """The batch's true pixel boxes: (B, T, 4) ``"boxes"`` (several objects per image), else (B, 4)
    ``"box"``, else None."""
    return batch.get("boxes", batch.get("box"))


def box_stats(boxes: Tensor, size) -> Dict[str, Tensor]:
    """Centre, width, height and sqrt(area) of (N, 4) pixel boxes as fractions of the image size
    ``(H, W)``, each of the finite boxes only, and ``"nonfinite"``: the (1,) count of the others."""
    h, w = size
    boxes = boxes.detach().float()
    finite = torch.isfinite(boxes).all(1)
    b = boxes[finite]
    width = (b[:, 2] - b[:, 0]).abs() / w
    height = (b[:, 3] - b[:, 1]).abs() / h
    return {
        "box_center_x": (b[:, 0] + b[:, 2]) / (2 * w),
        "box_center_y": (b[:, 1] + b[:, 3]) / (2 * h),
        "box_width": width,
        "box_height": height,
        "box_scale": (width * height).sqrt(),
        "nonfinite": (~finite).sum().reshape(1),
    }


class SaveConfig(L.Callback):
    """Stores the run's composed (unresolved) config in every checkpoint under ``"stn_config"``,
    so ``eval.py`` can rebuild the data and model from a checkpoint file alone, and what the model
    was sized for (class names, image shape, normalization: :func:`stn.inference.data_info`)
    under ``"stn_data"``, so ``load_model`` and ``predict.py`` need no data."""

    def __init__(self, config: Dict[str, Any], data: Optional[Dict[str, Any]] = None) -> None:
        self.config, self.data = config, data

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        checkpoint["stn_config"] = self.config
        if self.data is not None:
            checkpoint["stn_data"] = self.data


class LatestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps ``last.ckpt`` resumable.

    Saved after every epoch, every ``every_n_train_steps`` optimizer steps and every
    ``every_n_minutes`` of training (either or both, besides the epoch ends; a run resumed from
    such a mid-epoch file continues at that step with the same data order), and when a run crashes
    or is interrupted, but not when training diverged (NaN/Inf loss, parameters or buffers),
    whatever the exception was, so the file keeps the last finite weights. The file also holds
    the global torch random state, restored on resume, for models that draw from it in training.

    Args:
        every_n_train_steps: also save every this many optimizer steps (None or 0: no).
        every_n_minutes: also save when this many minutes passed since the last save (None: no).
        **kwargs: as for :class:`~lightning.pytorch.callbacks.ModelCheckpoint` (``dirpath``,
            ``filename``...), except Lightning's own step and time triggers.
    """

    def __init__(
        self,
        *args: Any,
        every_n_train_steps: Optional[int] = None,
        every_n_minutes: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        for name, value in (
            ("every_n_train_steps", every_n_train_steps),
            ("every_n_minutes", every_n_minutes),
        ):
            if value is not None and (isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be None or >= 0, got {value!r}")
        self.step_interval = every_n_train_steps or 0
        self.minutes = every_n_minutes or None
        self._saved_at = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if (batch_idx + 1) % trainer.accumulate_grad_batches:  # mid-accumulation: not a step
            return
        due = bool(self.step_interval) and trainer.global_step % self.step_interval == 0
        if self.minutes is not None:
            # ranks decide together: their clocks differ
            due = trainer.strategy.broadcast(due or time.monotonic() - self._saved_at >= 60 * self.minutes)
        if due and not self._should_skip_saving_checkpoint(trainer):
            self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._saved_at = time.monotonic()

    def state_dict(self) -> Dict[str, Any]:
        state = {**super().state_dict(), "torch_rng_state": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng_states"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state = dict(state_dict)
        if "torch_rng_state" in state:
            torch.set_rng_state(state.pop("torch_rng_state"))
        cuda = state.pop("cuda_rng_states", None)
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        super().load_state_dict(state)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, NonFiniteLossError) or nonfinite_tensors(pl_module):
            log.warning(
                "not saving %s on %s: the weights are not finite", self.dirpath, type(exception).__name__
            )
            return
        super().on_exception(trainer, pl_module, exception)
