"""Lightning callbacks: TensorBoard pictures of what the model looks at, and config in checkpoints."""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, make_grid

from stn.lit import NonFiniteLossError, nonfinite_tensors

log = logging.getLogger(__name__)

PRED_COLOR = "red"
TRUE_COLOR = "lime"


def _tensorboard(trainer: L.Trainer):
    """The SummaryWriter of the first TensorBoard logger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def draw_boxes(images: Tensor, pred: Optional[Tensor], true: Optional[Tensor], scale: int) -> List[Tensor]:
    """Images (B, C, H, W) in [0, 1] upscaled by ``scale`` with boxes drawn, as uint8 (3, sH, sW) tensors.

    ``pred`` is (B, 4) or (B, G, 4) pixel boxes drawn in red; ``true`` (B, 4) in green.
    """
    big = F.interpolate(images, scale_factor=scale, mode="nearest") if scale > 1 else images
    big = (big.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if big.shape[1] == 1:
        big = big.expand(-1, 3, -1, -1)
    drawn = []
    for i, img in enumerate(big):
        boxes, colors = [], []
        if true is not None:
            boxes.append(true[i].reshape(-1, 4))
            colors += [TRUE_COLOR]
        if pred is not None:
            p = pred[i].reshape(-1, 4)
            boxes.append(p)
            colors += [PRED_COLOR] * len(p)
        if boxes:
            b = (torch.cat(boxes).float().cpu() * scale).round()
            # a diverging model's NaN/Inf boxes are left out, not drawn
            finite = torch.isfinite(b).all(1)
            b, colors = b[finite], [c for c, keep in zip(colors, finite.tolist()) if keep]
            # draw_bounding_boxes wants x2 >= x1 and boxes inside the picture.
            b = torch.stack(
                [
                    torch.minimum(b[:, 0], b[:, 2]),
                    torch.minimum(b[:, 1], b[:, 3]),
                    torch.maximum(b[:, 0], b[:, 2]),
                    torch.maximum(b[:, 1], b[:, 3]),
                ],
                1,
            )
            b[:, 0::2] = b[:, 0::2].clamp(0, img.shape[-1] - 1)
            b[:, 1::2] = b[:, 1::2].clamp(0, img.shape[-2] - 1)
            if len(b):
                img = draw_bounding_boxes(img, b, colors=colors, width=max(1, scale // 2))
        drawn.append(img)
    return drawn


class GlimpseImages(L.Callback):
    """Logs what the model looks at, on a fixed batch, every ``every_n_epochs`` validations.

    TensorBoard tags (``<stage>`` is ``val`` or ``test``):

    - ``<stage>/boxes``: a grid of inputs with the predicted box (red) and, for data with true
      boxes, the true box (green);
    - ``<stage>/glimpses``: the matching glimpses, in the same order (one row of G glimpses per
      input for multi-glimpse models);
    - histograms ``<stage>/box_center_x``, ``<stage>/box_center_y``, ``<stage>/box_scale`` of all
      predicted boxes of the epoch, as fractions of the image size.

    Args:
        num_images: inputs in the grid (the first ones of the first batch: the same every time).
        every_n_epochs: log at validation epochs divisible by this.
        scale: integer upscaling of the inputs, so boxes on 28x28 digits are visible.
        nrow: images per grid row.
    """

    def __init__(self, num_images: int = 16, every_n_epochs: int = 1, scale: int = 4, nrow: int = 8) -> None:
        if num_images <= 0 or every_n_epochs <= 0 or scale <= 0:
            raise ValueError(
                "num_images, every_n_epochs and scale must be positive, "
                f"got {num_images}, {every_n_epochs}, {scale}"
            )
        self.num_images, self.every_n_epochs, self.scale, self.nrow = num_images, every_n_epochs, scale, nrow
        self._fixed: Dict[str, Dict[str, Tensor]] = {}
        self._boxes: List[Tensor] = []

    def _active(self, trainer: L.Trainer, stage: str) -> bool:
        if trainer.sanity_checking or not trainer.is_global_zero or _tensorboard(trainer) is None:
            return False
        return stage == "test" or trainer.current_epoch % self.every_n_epochs == 0

    def _on_batch_end(self, trainer, outputs, batch, batch_idx, stage: str) -> None:
        if not self._active(trainer, stage):
            return
        if batch_idx == 0 and stage not in self._fixed:
            self._fixed[stage] = {k: v[: self.num_images].detach().clone() for k, v in batch.items()}
        if isinstance(outputs, dict) and "boxes" in outputs:
            size = batch["image"].shape[-2:]
            self._boxes.append(_box_stats(outputs["boxes"].reshape(-1, 4), size).cpu())

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
    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        stats, self._boxes = self._boxes, []
        if not self._active(trainer, stage) or stage not in self._fixed:
            return
        writer, step = _tensorboard(trainer), trainer.global_step
        batch = self._fixed[stage]
        was_training = pl_module.training
        pl_module.eval()
        out = pl_module(batch["image"])
        pl_module.train(was_training)
        pred = out.get("boxes")
        drawn = draw_boxes(batch["image"], pred, batch.get("box"), self.scale)
        writer.add_image(f"{stage}/boxes", make_grid(drawn, nrow=self.nrow, padding=2, pad_value=128), step)
        if "glimpses" in out:
            g = out["glimpses"]
            nrow = g.shape[1] if g.dim() == 5 else self.nrow
            g = g.reshape(-1, *g.shape[-3:]).clamp(0, 1).cpu()
            writer.add_image(f"{stage}/glimpses", make_grid(g, nrow=nrow, padding=1, pad_value=0.5), step)
        s = torch.cat(stats) if stats else torch.empty(0, 3)
        s = s[torch.isfinite(s).all(1)]  # a histogram of NaN/Inf boxes has no bins
        if len(s):
            for i, name in enumerate(("box_center_x", "box_center_y", "box_scale")):
                writer.add_histogram(f"{stage}/{name}", s[:, i], step)


def _box_stats(boxes: Tensor, size) -> Tensor:
    """(N, 3): centre x, centre y and sqrt(area) of (N, 4) boxes, as fractions of the image size."""
    h, w = size
    cx = (boxes[:, 0] + boxes[:, 2]) / (2 * w)
    cy = (boxes[:, 1] + boxes[:, 3]) / (2 * h)
    scale = ((boxes[:, 2] - boxes[:, 0]).abs() * (boxes[:, 3] - boxes[:, 1]).abs() / (w * h)).sqrt()
    return torch.stack([cx, cy, scale], 1).float()


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
