"""Export a trained model to ONNX or TorchScript: ``python export.py ckpt_path=<file.ckpt> format=onnx``.

The exported graph takes ``images`` (N, C, H, W) float32 in [0, 1] at the training size (N is
dynamic; convert other images with :mod:`stn.convert` first) and returns ``logits`` (N, K) and
``boxes`` (N, G, 4), ``(x1, y1, x2, y2)`` in pixels of those (H, W) images (a plain CNN reports
the whole image, ``(0, 0, W, H)``). Class names and the input shape travel with the file: ONNX
``metadata_props`` ``stn_classes`` and ``stn_image_shape`` (JSON), TorchScript extra files
``stn_classes.json`` and ``stn_image_shape.json``.

ONNX goes through ``torch.onnx.export(dynamo=True)`` (``torch.export``; needs the ``[export]``
extra: onnx, onnxscript, onnxruntime) at opset 18; glimpses become ONNX ``GridSample``
(opset >= 16), as :func:`stn.ops.glimpse` samples through ``grid_sample`` while exporting.
TorchScript is ``torch.jit.trace`` (which PyTorch 2.14 deprecates in favour of ``torch.export``;
ONNX is the format to prefer).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from stn.inference import TrainedModel, load_model, model_boxes
from stn.validation import ConfigError

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
OPSET = 18


class ExportModule(nn.Module):
    """``images (N, C, H, W) -> (logits (N, K), boxes (N, G, 4))``: the model's outputs as a tuple of
    tensors, as exporters want them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        out = self.model(images)
        boxes, _ = model_boxes(out, images)
        return out["logits"], boxes


def _metadata(trained: TrainedModel) -> Dict[str, str]:
    return {
        "stn_classes": json.dumps(trained.classes),
        "stn_image_shape": json.dumps(list(trained.image_shape)),
    }


def export(
    trained: TrainedModel,
    fmt: str,
    out: Union[str, Path],
    opset: int = OPSET,
    example: Optional[Tensor] = None,
) -> Path:
    """Write ``trained`` (moved to the CPU) as ``fmt`` (``"onnx"`` or ``"torchscript"``) to ``out``.

    ``example``: the (N, C, H, W) batch the exporter traces with; default 2 random images."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}: must be one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    module = ExportModule(trained.model.cpu().eval()).eval()
    if example is None:
        example = torch.rand(2, *trained.image_shape, generator=torch.Generator().manual_seed(0))
    if fmt == "onnx":
        try:
            import onnxscript  # noqa: F401  (torch.onnx's exporter imports it)
        except ImportError:
            raise ConfigError('format=onnx needs the export extra: pip install -e ".[export]"') from None
        program = torch.onnx.export(
            module,
            (example,),
            input_names=["images"],
            output_names=["logits", "boxes"],
            dynamic_shapes=({0: torch.export.Dim("N")},),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
        program.model.metadata_props.update(_metadata(trained))
        program.save(str(out))
    else:
        with torch.no_grad(), warnings.catch_warnings():
            # The models' input-shape checks read sizes that are fixed for the trained (C, H, W); a
            # test runs the trace on other batch sizes.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            traced = torch.jit.trace(module, example, check_trace=False)
        extra = {f"{k}.json": v for k, v in _metadata(trained).items()}
        torch.jit.save(traced, str(out), _extra_files=extra)
    return out


def run_exported(path: Union[str, Path], images: Tensor) -> Tuple[Tensor, Tensor]:
    """(logits, boxes) of an exported file on ``images`` (N, C, H, W): onnxruntime for ``.onnx``,
    ``torch.jit.load`` for ``.pt``."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits, boxes = session.run(["logits", "boxes"], {"images": images.numpy()})
        return torch.from_numpy(logits), torch.from_numpy(boxes)
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(images)


def max_difference(trained: TrainedModel, path: Union[str, Path], images: Tensor) -> Dict[str, float]:
    """Largest absolute differences of the exported file's logits and boxes from PyTorch's."""
    with torch.no_grad():
        want = ExportModule(trained.model.cpu().eval())(images)
    got = run_exported(path, images)
    return {name: float((g - w).abs().max()) for name, g, w in zip(("logits", "boxes"), got, want)}


def export_task(cfg: DictConfig) -> Path:
    """``export.py``: load ``cfg.ckpt_path``, export it to ``cfg.out`` as ``cfg.format``, check it."""
    fmt = cfg.format
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}: must be one of {', '.join(FORMATS)}")
    trained = load_model(cfg.ckpt_path)
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.ckpt_path).expanduser().with_suffix(FORMATS[fmt])
    export(trained, fmt, out, opset=cfg.get("opset", OPSET))
    log.info("wrote %s (%s, input images (N, %d, %d, %d))", out, fmt, *trained.image_shape)
    if cfg.get("check", True):
        images = torch.rand(5, *trained.image_shape, generator=torch.Generator().manual_seed(1))
        try:
            diff = max_difference(trained, out, images)
        except ImportError:
            log.warning("not checked: onnxruntime is not installed (pip install -e '.[export]')")
        else:
            log.info("max |exported - PyTorch| on 5 random images: logits %.2e, boxes %.2e", *diff.values())
    return out
