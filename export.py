"""Export a trained model: `python export.py ckpt_path=<file.ckpt> format=onnx|torchscript out=<file>`.
See configs/export.yaml and stn/export.py."""

import os
from pathlib import Path

os.environ.setdefault("STN_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from stn.export import export_task  # noqa: E402
from stn.inference import run_cli  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> None:
    run_cli(export_task, cfg)


if __name__ == "__main__":
    main()
