"""User mistakes in a run's config or checkpoint, caught before any work, as one line each.

:func:`check_config` checks the values of the composed config (types and ranges of ``data``,
``model``, ``module`` and ``trainer`` keys, a missing ``ckpt_path`` for ``eval.py``) and, when it
names a checkpoint, that the file is one and holds the same model. :func:`read_checkpoint` loads
a checkpoint with a message naming the file and what is wrong with it (empty, truncated, not a
checkpoint, not written by ``train.py``); :func:`load_weights` puts its weights into a module.
Every failure is a :class:`ConfigError` whose message names the key and the value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from stn.ops._checks import check_size


class ConfigError(ValueError):
    """A config value or a checkpoint file the run cannot use; the message says which and why."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _size(v: Any) -> bool:
    """A positive int or an [H, W] pair of them (the ops' own size check)."""
    try:
        check_size(v)
    except (TypeError, ValueError):
        return False
    return True


def _limit(v: Any) -> bool:
    return (_is_int(v) and v >= 0) or (_is_number(v) and 0 <= v <= 1)


Check = Tuple[Callable[[Any], bool], str]
POSITIVE_INT: Check = (lambda v: _is_int(v) and v > 0, "a positive integer")
NONNEG_INT: Check = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
NONNEG: Check = (lambda v: _is_number(v) and v >= 0, "a number >= 0")
POSITIVE: Check = (lambda v: _is_number(v) and v > 0, "a number > 0")
UNIT: Check = (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
BELOW_ONE: Check = (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
SIZE: Check = (_size, "a positive integer or [height, width] of positive integers")
LIMIT: Check = (_limit, "an integer >= 0 (batches) or a fraction in [0, 1]")
TRAIN_LIMIT: Check = (lambda v: _limit(v) and v > 0, "an integer >= 1 (batches) or a fraction in (0, 1]")
EPOCHS: Check = (lambda v: _is_int(v) and (v >= 1 or v == -1), "an integer >= 1 (or -1: no limit)")
INT: Check = (_is_int, "an integer")
VAL_SIZE: Check = (
    lambda v: (_is_int(v) and v >= 0) or (_is_number(v) and 0 <= v < 1),
    "an integer >= 0 or a fraction in [0, 1)",
)
CHANNELS: Check = (lambda v: _is_int(v) and v in (1, 3), "1 (grey) or 3 (RGB)")
WIDTHS: Check = (
    lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(w) and w > 0 for w in v),
    "a list of positive integers",
)

# key -> (check, whether null is allowed). Keys a config does not have are skipped.
RULES: Dict[str, Tuple[Check, bool]] = {
    "seed": (INT, False),
    "data.batch_size": (POSITIVE_INT, False),
    "data.eval_batch_size": (POSITIVE_INT, True),
    "data.val_size": (VAL_SIZE, False),
    "data.num_workers": (NONNEG_INT, True),
    "data.crop_padding": (NONNEG_INT, False),
    "data.max_memory_gb": (POSITIVE, False),
    "data.channels": (CHANNELS, False),
    "data.image_size": (SIZE, True),
    "data.resize": (SIZE, True),
    "model.glimpse_size": (SIZE, True),
    "model.num_glimpses": (POSITIVE_INT, False),
    "model.context_dropout": (UNIT, False),
    "model.localizer.pool_size": (SIZE, False),
    "model.box_head.min_scale": (POSITIVE, False),
    "model.box_head.max_scale": (POSITIVE, False),
    "model.box_head.init_scale": (POSITIVE, False),
    "model.classifier.widths": (WIDTHS, False),
    "module.optimizer.lr": (NONNEG, False),
    "module.optimizer.weight_decay": (NONNEG, False),
    "module.scheduler.pct_start": (UNIT, False),
    "module.loc_lr_mult": (NONNEG, False),
    "module.loc_freeze_epochs": (NONNEG_INT, False),
    "module.label_smoothing": (BELOW_ONE, False),
    "module.box_loss_weight": (NONNEG, False),
    "module.box_area_weight": (NONNEG, False),
    "module.box_area_warmup": (UNIT, False),
    "module.box_edge_weight": (NONNEG, False),
    "module.nonfinite_check_every": (POSITIVE_INT, False),
    "trainer.max_epochs": (EPOCHS, False),
    "trainer.min_epochs": (NONNEG_INT, True),
    "trainer.max_steps": (EPOCHS, True),
    "trainer.limit_train_batches": (TRAIN_LIMIT, True),
    "trainer.limit_val_batches": (LIMIT, True),
    "trainer.limit_test_batches": (LIMIT, True),
    "trainer.check_val_every_n_epoch": (POSITIVE_INT, True),
    "trainer.log_every_n_steps": (POSITIVE_INT, True),
    "trainer.accumulate_grad_batches": (POSITIVE_INT, False),
    "trainer.gradient_clip_val": (NONNEG, True),
    "trainer.num_nodes": (POSITIVE_INT, False),
}

_ABSENT = object()


def _value(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first value of ``cfg`` that a run cannot use.

    ``ckpt_path: ???`` (``eval.py``) must be given; a given ``ckpt_path`` must be a readable
    checkpoint of the model the config asks for (only its config is read, the tensors are mapped).
    """
    for key, ((ok, what), nullable) in RULES.items():
        value = _value(cfg, key)
        if value is _ABSENT or (value is None and nullable):
            continue
        if value is None or not ok(value):
            raise ConfigError(f"{key}: must be {what}, got {_described(value)}")
    max_epochs, min_epochs = _value(cfg, "trainer.max_epochs"), _value(cfg, "trainer.min_epochs")
    if _is_int(min_epochs) and _is_int(max_epochs) and max_epochs >= 1 and min_epochs > max_epochs:
        raise ConfigError(f"trainer.min_epochs={min_epochs} must not exceed trainer.max_epochs={max_epochs}")
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("ckpt_path is required: python eval.py ckpt_path=<file.ckpt>")
    if cfg.get("ckpt_path"):
        read_checkpoint(cfg, mmap=True)


def _described(value: Any) -> str:
    return "null" if value is None else f"{value!r} ({type(value).__name__})"


def read_checkpoint(cfg: DictConfig, *, mmap: bool = False) -> Dict[str, Any]:
    """The checkpoint at ``cfg.ckpt_path``, on the CPU, written by ``train.py`` for the model
    ``cfg.model`` asks for (any model when ``cfg.model`` is null). ``mmap``: map the tensors
    instead of reading them (for a look at the config)."""
    value = cfg.ckpt_path
    path = Path(str(value)).expanduser()
    head = f"ckpt_path={value!r}"
    if not path.is_file():
        raise ConfigError(f"{head}: no such checkpoint file" + (" (it is a folder)" if path.is_dir() else ""))
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"{head} is an empty file (0 bytes), not a checkpoint: its save was interrupted")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except Exception as err:  # torch's own messages suggest weights_only=False: unsafe, and no help here
        if not is_zip:
            raise ConfigError(f"{head} is not a PyTorch checkpoint ({size} bytes of other data)") from None
        reason = "truncated or damaged" if "central directory" in str(err) else "unreadable"
        raise ConfigError(
            f"{head} is a {reason} checkpoint ({size} bytes; {type(err).__name__}): use another checkpoint"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{head} holds PyTorch data but no training checkpoint (no 'state_dict')")
    saved = checkpoint.get("stn_config")
    if not isinstance(saved, dict) or "model" not in saved:
        raise ConfigError(f"{head} has no 'stn_config': it was not written by train.py")
    wanted = cfg.get("model")
    if wanted is not None:
        have, want = saved["model"].get("_target_"), OmegaConf.select(cfg, "model._target_")
        if have != want:
            root = Path(str(OmegaConf.select(cfg, "paths.root_dir", default=".")))
            raise ConfigError(
                f"{head}: this checkpoint is model={_model_name(have, root)}, the config asks for "
                f"model={_model_name(want, root)}"
            )
    return checkpoint


def _model_name(target: Optional[str], root: Path) -> str:
    """The configs/model/<name>.yaml that builds ``target`` (else the class path itself)."""
    for file in sorted((root / "configs" / "model").glob("*.yaml")):
        try:
            if OmegaConf.load(file).get("_target_") == target:
                return file.stem
        except Exception:  # an unreadable config file names nothing
            continue
    return str(target)


def load_weights(module: nn.Module, checkpoint: Dict[str, Any], cfg: DictConfig) -> None:
    """``module.load_state_dict(checkpoint["state_dict"])``, or one line on what does not fit."""
    state = checkpoint["state_dict"]
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts: List[str] = []
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} of other shapes (e.g. {k}: {tuple(state[k].shape)} in the checkpoint, "
                f"{tuple(own[k].shape)} in the model)"
            )
        parts += [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path!r}: its weights do not fit the model the config builds: "
            + "; ".join(parts)
            + ". Leave model=... out to use the checkpoint's own model config."
        )
    module.load_state_dict(state)
