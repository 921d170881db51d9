"""The LightningModule: steps, metrics, optimizers. No drawing, no model code."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerStatus
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchvision.ops import box_area

from stn.metrics import BoxIoU, GlimpseHits
from stn.validation import ConfigError


def one_cycle(
    optimizer: Optimizer,
    total_steps: int,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e3,
) -> OneCycleLR:
    """OneCycleLR that peaks at each parameter group's own LR (so LR multipliers survive)."""
    return OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )


class NonFiniteLossError(FloatingPointError):
    """Training diverged: the loss, a parameter or a buffer became NaN or Inf."""


def nonfinite_tensors(module: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` holding a NaN or Inf.

    One reduction per tensor on its device and a single host sync for all of them.
    """
    named = [
        (n, t) for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_floating_point()
    ]
    if not named:
        return []
    bad = torch.stack([~torch.isfinite(t.detach()).all().cpu() for _, t in named]).tolist()
    return [n for (n, _), b in zip(named, bad) if b]


def edge_intensity(glimpses: Tensor) -> Tensor:
    """Mean of each glimpse's outermost ring of pixels over its channels: (..., C, h, w) -> (...).

    The ring's samples sit half a glimpse pixel inside the box edges, so the value is what the box
    edges cross, and its gradient w.r.t. the box moves them off bright structure.
    """
    ring = torch.ones(glimpses.shape[-2:], dtype=torch.bool, device=glimpses.device)
    ring[1:-1, 1:-1] = False
    return glimpses[..., ring].mean((-2, -1))


class LitClassifier(L.LightningModule):
    """Trains a classifier (glimpse model or plain CNN) end to end with cross-entropy.

    The model maps images (B, C, H, W) in [0, 1] to a dict with ``"logits"`` (B, classes) and,
    for glimpse models, ``"boxes"`` ((B, 4) or (B, G, 4) pixel ``x1, y1, x2, y2``). When a batch
    carries true boxes (``batch["box"]``, synthetic data), validation and test also report IoU
    of the first glimpse's box with the true box; the boxes never reach the loss unless
    ``box_loss_weight > 0``.

    Args:
        model: the ``nn.Module``; must provide ``localization_parameters()``.
        num_classes: number of classes.
        optimizer: partial optimizer, called with the parameter groups.
        scheduler: optional partial LR scheduler; it receives ``total_steps`` when its signature
            takes it (e.g. :func:`one_cycle`) and is stepped every step.
        loc_lr_mult: learning-rate multiplier for the localization network (STN practice: 0.1).
        loc_freeze_epochs: keep the localization network frozen (identity/full-image boxes) for
            this many initial epochs, so the classifier learns on whole images first.
        label_smoothing: cross-entropy label smoothing.
        box_loss_weight: weight of a supervised smooth-L1 box loss (pixels / image size); 0 keeps
            training weakly supervised.
        box_area_weight: weight of a training-loss penalty on the mean box area as a fraction of
            the image area (every glimpse's box; not part of ``val/loss`` or ``test/loss``).
            Unsupervised: classification alone never rewards a box smaller than "object plus
            margin", this pulls boxes in until cutting the object costs more.
        box_area_warmup: fraction of the training steps over which ``box_area_weight`` (and
            ``box_edge_weight``) ramps up linearly from 0, so the localizer learns where the object
            is before boxes shrink (a full-strength penalty from the first step can shrink them
            onto nothing).
        box_edge_weight: weight of a training-loss penalty on the mean intensity of each
            glimpse's outermost ring of pixels (``out["glimpses"]``, unnormalized, every channel):
            for objects on a dark background (MNIST variants), a box edge that cuts through the
            object sees its strokes and is pushed off them, out (or in, to a gap), so a box the
            area penalty pulls in stops at the object's outline instead of cutting it. Unsupervised
            (it never sees a true box); not part of ``val/loss`` or ``test/loss``.
        nonfinite_check_every: also stop as soon as the loss became NaN/Inf, checked every this
            many steps (a host sync). Every step's loss goes into a flag on the device either way,
            and that flag, the parameters and the buffers are checked before each validation and
            each checkpoint save, so neither ever sees a diverged model.
        compile: compile the model with ``torch.compile`` when fitting starts (``nn.Module.compile``
            in place, so checkpoints keep the same state-dict keys as an eager run).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: Callable[..., Optimizer],
        scheduler: Optional[Callable[..., LRScheduler]] = None,
        loc_lr_mult: float = 0.1,
        loc_freeze_epochs: int = 0,
        label_smoothing: float = 0.0,
        box_loss_weight: float = 0.0,
        box_area_weight: float = 0.0,
        box_area_warmup: float = 0.0,
        box_edge_weight: float = 0.0,
        nonfinite_check_every: int = 20,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if loc_lr_mult < 0:
            raise ValueError(f"loc_lr_mult must be >= 0, got {loc_lr_mult}")
        if box_area_weight < 0:
            raise ValueError(f"box_area_weight must be >= 0, got {box_area_weight}")
        if box_edge_weight < 0:
            raise ValueError(f"box_edge_weight must be >= 0, got {box_edge_weight}")
        if box_edge_weight > 0 and not list(model.localization_parameters()):
            # a config choice: train.py reports a ConfigError as one line, not a traceback
            raise ConfigError(
                f"module.box_edge_weight={box_edge_weight}: penalizes glimpse edges, and "
                f"{type(model).__name__} takes no glimpses (set it to 0)"
            )
        if not 0 <= box_area_warmup <= 1:
            raise ValueError(
                f"box_area_warmup must be a fraction of training in [0, 1], got {box_area_warmup}"
            )
        if loc_freeze_epochs < 0:
            raise ValueError(f"loc_freeze_epochs must be >= 0, got {loc_freeze_epochs}")
        # Factories stay out of the checkpoint, so checkpoints load with torch.load(weights_only=True);
        # train.py stores the config that builds them next to the weights.
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"], logger=False)
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        metric = lambda **kw: MulticlassAccuracy(num_classes, average="micro", **kw)  # noqa: E731
        # the training metrics skip their input checks and NaN scans: each is a host sync per step
        self.train_acc, self.val_acc, self.test_acc = metric(validate_args=False), metric(), metric()
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self._window: Optional[Tensor] = None  # summed loss, correct, count since the last logged step
        self.val_acc_best = MaxMetric()
        self.val_iou, self.test_iou = BoxIoU(), BoxIoU()
        self.val_hits, self.test_hits = GlimpseHits(), GlimpseHits()
        self._nonfinite = torch.zeros((), dtype=torch.bool)

    def setup(self, stage: str) -> None:
        if self.hparams.compile and stage == "fit":
            self.model.compile()

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        return self.model(images)

    # -- steps ----------------------------------------------------------------------------------
    def _shared_step(self, batch: Dict[str, Tensor], train: bool = False) -> tuple[Tensor, Dict[str, Tensor]]:
        """Loss and model outputs. ``train`` adds the box-area and box-edge penalties, training
        priors that stay out of ``val/loss`` and ``test/loss`` (they remain comparable across runs
        and weights)."""
        out = self.model(batch["image"])
        loss = F.cross_entropy(out["logits"], batch["label"], label_smoothing=self.hparams.label_smoothing)
        if self.hparams.box_loss_weight > 0 and "box" in batch and "boxes" in out:
            size = batch["image"].shape[-1]
            loss = loss + self.hparams.box_loss_weight * F.smooth_l1_loss(
                _first_box(out["boxes"]) / size, batch["box"] / size
            )
        if train and self.hparams.box_area_weight > 0 and "boxes" in out:
            height, width = batch["image"].shape[-2:]
            area = box_area(out["boxes"].reshape(-1, 4)).abs() / (height * width)
            loss = loss + self.hparams.box_area_weight * self._warmup() * area.mean()
        if train and self.hparams.box_edge_weight > 0:
            loss = (
                loss + self.hparams.box_edge_weight * self._warmup() * edge_intensity(out["glimpses"]).mean()
            )
        return loss, out

    def _warmup(self) -> float:
        """Factor of the box penalties: ramps from 0 to 1 over the first box_area_warmup of training."""
        warmup = self.hparams.box_area_warmup
        if warmup == 0 or self._trainer is None:
            return 1.0
        ramp = warmup * self.trainer.estimated_stepping_batches
        return min(1.0, self.global_step / ramp)

    def training_step(self, batch: Dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, out = self._shared_step(batch, train=True)
        # no host sync here: the flag stays on the device until a check reads it
        self._nonfinite = self._nonfinite.to(loss.device) | ~torch.isfinite(loss.detach())
        if (batch_idx + 1) % self.hparams.nonfinite_check_every == 0:
            self._raise_if_nonfinite()
        self._log_train(loss.detach(), out["logits"].detach(), batch["label"], batch_idx)
        return loss

    def _log_train(self, loss: Tensor, logits: Tensor, labels: Tensor, batch_idx: int) -> None:
        """``train/loss`` and ``train/acc``: the mean over the steps since the last logged point,
        every ``trainer.log_every_n_steps`` steps and at each epoch's first step (so the progress
        bar has a loss from the start); ``train/loss_epoch`` and ``train/acc_epoch``: epoch means.

        The window sums stay on the device; they reach the host (one sync) only when logged, and
        are logged as CPU tensors so the progress bar never syncs in between."""
        self.train_loss.update(loss)
        self.train_acc.update(logits, labels)
        correct = (logits.argmax(-1) == labels).sum()
        step = torch.stack(
            [loss.float() * len(labels), correct.float(), correct.new_tensor(len(labels)).float()]
        )
        self._window = step if self._window is None else self._window + step
        if self._trainer is None:  # a step called by hand: nothing to log to
            return
        if batch_idx == 0 or (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            total_loss, correct, count = self._window.cpu()
            self._window = None
            self.log("train/loss", total_loss / count, on_step=True, on_epoch=False, prog_bar=True)
            self.log("train/acc", correct / count, on_step=True, on_epoch=False)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        self.log("train/acc_epoch", self.train_acc, on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        self._raise_if_nonfinite()

    def _raise_if_nonfinite(self, state: bool = False, sync: bool = False) -> None:
        """Raise :class:`NonFiniteLossError` if a training loss so far was NaN/Inf or, with
        ``state``, a parameter or buffer is. ``sync``: decide together with the other ranks."""
        lossbad = bool(self._nonfinite)
        tensors = nonfinite_tensors(self) if state else []
        diverged = lossbad or bool(tensors)
        if sync and self._trainer is not None:
            diverged = self.trainer.strategy.reduce_boolean_decision(diverged, all=False)
        if not diverged:
            return
        what = "training loss became NaN/Inf" if lossbad else "parameters/buffers became NaN/Inf"
        if tensors:
            shown = ", ".join(tensors[:5]) + (f" and {len(tensors) - 5} more" if len(tensors) > 5 else "")
            what += f" ({shown})" if not lossbad else f" (and parameters/buffers: {shown})"
        raise NonFiniteLossError(
            f"{what} by epoch {self.current_epoch}, step {self.global_step}: the run diverged. Lower the "
            "learning rate (module.optimizer.lr) or the localization LR multiplier (module.loc_lr_mult)."
        )

    def on_validation_start(self) -> None:
        # validation (and the checkpoints it triggers) must never see a diverged model
        self._raise_if_nonfinite(state=True, sync=True)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # every save goes through here: no checkpoint ever holds NaN/Inf weights or statistics
        # (ranks decide together, except in the crash handler, where the other ranks may not save)
        running = self._trainer is not None and self.trainer.state.status == TrainerStatus.RUNNING
        self._raise_if_nonfinite(state=True, sync=running)

    def _eval_step(self, stage: str, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        loss, out = self._shared_step(batch)
        getattr(self, f"{stage}_loss")(loss)
        acc = getattr(self, f"{stage}_acc")
        acc(out["logits"], batch["label"])
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        if "box" in batch and "boxes" in out:
            iou = getattr(self, f"{stage}_iou")
            iou.update(_first_box(out["boxes"]), batch["box"])
        if "boxes" in batch and "boxes" in out:  # several objects per image: every glimpse is scored
            marked = batch["digit_labels"] == batch["label"][:, None]
            getattr(self, f"{stage}_hits").update(
                out["boxes"].reshape(len(marked), -1, 4), batch["boxes"], marked
            )
        # Boxes go to callbacks (histograms, pictures); nothing heavy.
        return {"boxes": out["boxes"].detach()} if "boxes" in out else {}

    def validation_step(self, batch: Dict[str, Tensor], batch_idx: int) -> Dict[str, Tensor]:
        return self._eval_step("val", batch)

    def test_step(self, batch: Dict[str, Tensor], batch_idx: int) -> Dict[str, Tensor]:
        return self._eval_step("test", batch)

    def _log_iou(self, stage: str) -> None:
        iou = getattr(self, f"{stage}_iou")
        if iou.update_called:
            mean_iou, iou50 = iou.compute()
            self.log(f"{stage}/iou", mean_iou)
            self.log(f"{stage}/iou50", iou50)
            iou.reset()
        hits = getattr(self, f"{stage}_hits")
        if hits.update_called:  # multi-object data: over all glimpses, with each one's nearest object
            mean_iou, iou50, seen = hits.compute()
            self.log(f"{stage}/iou", mean_iou)
            self.log(f"{stage}/iou50", iou50)
            self.log(f"{stage}/label_digits_seen", seen)
            hits.reset()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_iou.reset()
            self.val_hits.reset()
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)
        self._log_iou("val")

    def on_test_epoch_end(self) -> None:
        self._log_iou("test")

    def on_train_start(self) -> None:
        # The sanity check must not count towards the best validation accuracy.
        self.val_acc_best.reset()
        self._check_schedule_length()

    def _check_schedule_length(self) -> None:
        """A resumed run whose schedule (restored from the checkpoint) is shorter than the run."""
        for config in self.trainer.lr_scheduler_configs:
            planned = getattr(config.scheduler, "total_steps", None)
            needed = int(self.trainer.estimated_stepping_batches)
            if planned is not None and planned < needed:
                raise ValueError(
                    f"the LR schedule restored from ckpt_path covers {planned} steps but this run needs "
                    f"{needed}: trainer.max_epochs (or the data size) changed since the checkpoint. Resume "
                    "with the original trainer.max_epochs, or start a new run with module.scheduler=null."
                )

    # -- localization freeze ----------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        frozen = self.current_epoch < self.hparams.loc_freeze_epochs
        for p in self.model.localization_parameters():
            p.requires_grad_(not frozen)

    # -- optimizers -------------------------------------------------------------------------------
    def configure_optimizers(self) -> Dict[str, Any]:
        loc = list(self.model.localization_parameters())
        loc_ids = {id(p) for p in loc}
        rest = [p for p in self.model.parameters() if id(p) not in loc_ids]
        # group names name the LR curves: lr/classifier, lr/localizer (LearningRateMonitor)
        optimizer = self.optimizer_factory(params=[{"params": rest, "name": "classifier"}])
        if loc:
            optimizer.add_param_group(
                {
                    "params": loc,
                    "lr": optimizer.defaults["lr"] * self.hparams.loc_lr_mult,
                    "name": "localizer",
                }
            )
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        kwargs = {}
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
        }


def _first_box(boxes: Tensor) -> Tensor:
    """(B, 4) from (B, 4) or the first glimpse of (B, G, 4)."""
    return boxes if boxes.dim() == 2 else boxes[:, 0]


# The class's name before it was renamed: the config saved in checkpoints written before then
# (``stn_config`` -> ``module._target_``) names it, and eval.py builds the module from that config.
GlimpseClassifier = LitClassifier
