"""A trained model for use on images as people hold them: ``load_model(path).predict(x)``.

A checkpoint of ``train.py`` holds the weights (``state_dict``), the config that built them
(``stn_config``: data, model, module) and what the model was sized for (``stn_data``: class names
in label order, ``image_shape`` (C, H, W), ``mean``, ``std``; see :func:`data_info`). Checkpoints
written before ``stn_data`` existed still load: the shape and the class names are then asked of
the data config (MNIST digits, CIFAR-10 names, an image folder's folder names while the folder is
still there), and where that fails the classes are named by their index.

Inputs go through :mod:`stn.convert` (PIL, numpy, tensors; channels, value range, size); boxes
come back in each input's own pixels, ``(x1, y1, x2, y2)`` with the whole image ``(0, 0, W, H)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from stn.convert import Preprocess, as_images, boxes_to_input
from stn.validation import ConfigError, load_weights, read_checkpoint

log = logging.getLogger(__name__)

__all__ = ["TrainedModel", "build_model", "data_info", "load_model", "run_cli"]


def run_cli(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point's task; a :class:`~stn.validation.ConfigError` (a mistake in a path or
    an option) ends it with its message and exit status 1 instead of a traceback."""
    try:
        return task(cfg)
    except ConfigError as err:
        log.error(str(err))
        raise SystemExit(1) from None


def data_info(datamodule: Any) -> Dict[str, list]:
    """What a model is sized for, from its datamodule, as plain lists (stored in checkpoints):
    ``classes`` (names in label order), ``image_shape`` (C, H, W), ``mean`` and ``std`` (per channel)."""
    return {
        "classes": [str(c) for c in datamodule.classes],
        "image_shape": [int(v) for v in datamodule.image_shape],
        "mean": [float(v) for v in datamodule.mean],
        "std": [float(v) for v in datamodule.std],
    }


def build_model(model_cfg: Union[DictConfig, Mapping], info: Mapping[str, Sequence]) -> nn.Module:
    """The model of a ``model`` config, sized by :func:`data_info` (as ``train.py`` builds it)."""
    channels, height, width = info["image_shape"]
    return instantiate(
        model_cfg,
        in_channels=channels,
        num_classes=len(info["classes"]),
        image_size=(height, width),
        mean=tuple(info["mean"]),
        std=tuple(info["std"]),
    )


def saved_config(saved: Mapping) -> DictConfig:
    """The checkpoint's data/model/module sections with the keys their interpolations name
    (``paths.*``, ``seed``) filled in, so they resolve outside a Hydra run."""
    data_dir = os.environ.get("STN_DATA_DIR", "data")
    paths = {"root_dir": ".", "data_dir": data_dir, "log_dir": "logs", "cache_dir": None, "output_dir": "."}
    return OmegaConf.create({**dict(saved), "paths": paths, "seed": 0})


def _infer_info(cfg: DictConfig, checkpoint: Mapping) -> Dict[str, list]:
    """:func:`data_info` for a checkpoint that predates ``stn_data``, from its data config."""
    try:
        datamodule = instantiate(cfg.data)
        shape = [int(v) for v in datamodule.image_shape]
    except Exception as err:
        raise ConfigError(
            "the checkpoint has no 'stn_data' (it predates class names in checkpoints) and its data config "
            f"cannot tell the image size ({type(err).__name__}: {err}); retrain, or make its data available"
        ) from None
    num_classes = int(checkpoint.get("hyper_parameters", {}).get("num_classes", 0))
    try:
        classes = [str(c) for c in datamodule.classes]
    except Exception as err:  # an image folder that is gone
        classes = []
        log.warning("class names unknown (%s: %s): naming classes by index", type(err).__name__, err)
    if num_classes and len(classes) != num_classes:
        classes = [str(i) for i in range(num_classes)]
    return {"classes": classes, "image_shape": shape, "mean": [0.0] * shape[0], "std": [1.0] * shape[0]}


class TrainedModel(nn.Module):
    """A trained model with its class names and input conversion; made by :func:`load_model`.

    ``forward(images)`` is the model's own: images (B, C, H, W) float in [0, 1] at ``image_size``.
    :meth:`predict` takes any image :mod:`stn.convert` accepts.

    Attributes:
        model: the ``nn.Module`` (in eval mode).
        classes: class names in label order.
        preprocess: the :class:`~stn.convert.Preprocess` that makes the model's input.
    """

    def __init__(self, model: nn.Module, classes: Sequence[str], preprocess: Preprocess) -> None:
        super().__init__()
        self.model = model.eval()
        self.classes = list(classes)
        self.preprocess = preprocess

    @property
    def image_shape(self) -> tuple:
        """(C, H, W) of the model's input."""
        return (self.preprocess.channels, *self.preprocess.size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        return self.model(images)

    @torch.no_grad()
    def predict(self, x: Any, batch_size: int = 256) -> Dict[str, Any]:
        """Classify images and say where the model looked.

        Args:
            x: a PIL image or a list of them; a numpy array (H, W) or (H, W, C), uint8 or float in
                [0, 1]; a tensor (C, H, W) or (B, C, H, W); or a list mixing these (any sizes).
                Converted as the training data was (:mod:`stn.convert`).
            batch_size: images per forward pass.

        Returns:
            A dict, N being the number of images, G of glimpses per image (1 for one-glimpse
            models; a plain CNN reports its whole input as one glimpse):

            - ``"labels"``: (N,) long, the predicted class indices;
            - ``"class_names"``: list of N str;
            - ``"probs"``: (N,) float, the softmax probability of the predicted class;
            - ``"boxes"``: (N, G, 4) float ``(x1, y1, x2, y2)`` in each input's own pixels;
            - ``"glimpses"``: (N, G, C, h, w) float in [0, 1], what the classifier saw.

            Tensors are on the CPU.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        prepared = [self.preprocess(image) for image in as_images(x)]
        images = torch.stack([image for image, _ in prepared])
        frames = torch.tensor([frame for _, frame in prepared], dtype=torch.float32)
        self.model.eval()
        logits, boxes, glimpses = [], [], []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(self.device)
            out = self.model(batch)
            logits.append(out["logits"].float().cpu())
            b, g = model_boxes(out, batch)
            boxes.append(b.float().cpu())
            glimpses.append(g.float().cpu())
        probs, labels = torch.cat(logits).softmax(-1).max(-1)
        return {
            "labels": labels,
            "class_names": [self.classes[i] for i in labels.tolist()],
            "probs": probs,
            "boxes": boxes_to_input(torch.cat(boxes), frames),
            "glimpses": torch.cat(glimpses),
        }


def model_boxes(out: Mapping[str, Tensor], images: Tensor) -> tuple:
    """Boxes (B, G, 4) in the model's pixels and glimpses (B, G, C, h, w) from a model's outputs;
    a model without boxes (the CNN) looks at the whole image: one box (0, 0, W, H), the image."""
    if "boxes" not in out:
        b, _, h, w = images.shape
        full = torch.tensor([0.0, 0.0, w, h], device=images.device).expand(b, 1, 4)
        return full, images[:, None]
    boxes, glimpses = out["boxes"], out["glimpses"]
    if boxes.dim() == 2:
        boxes, glimpses = boxes[:, None], glimpses[:, None]
    return boxes, glimpses


def load_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> TrainedModel:
    """The model of a ``train.py`` checkpoint, ready for :meth:`TrainedModel.predict`.

    Args:
        path: the ``.ckpt`` file.
        device: where the model runs (``"cpu"``, ``"cuda"``, ...).

    Raises:
        ConfigError: the file is missing, unreadable, or not a checkpoint of ``train.py``.
    """
    where = OmegaConf.create({"ckpt_path": str(path)})
    checkpoint = read_checkpoint(where)
    cfg = saved_config(checkpoint["stn_config"])
    info = checkpoint.get("stn_data") or _infer_info(cfg, checkpoint)
    model = build_model(cfg.model, info)
    prefix = "model."  # the LightningModule's attribute holding the model
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    load_weights(model, {"state_dict": state}, where)
    data = cfg.data
    preprocess = Preprocess(
        channels=int(info["image_shape"][0]),
        size=(int(info["image_shape"][1]), int(info["image_shape"][2])),
        resize=_plain(data.get("resize")),
        center_crop=bool(data.get("center_crop", False)),
    )
    return TrainedModel(model, info["classes"], preprocess).to(device)


def _plain(value: Any) -> Optional[Union[int, List[int]]]:
    """A config value (int, ListConfig or None) as plain Python."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
