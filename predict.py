"""Run a trained model on your images: `python predict.py ckpt_path=<file.ckpt> inputs=<file | folder | glob>
out=<folder>`. See configs/predict.yaml and stn/predict.py."""

import os
from pathlib import Path

os.environ.setdefault("STN_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from stn.inference import run_cli  # noqa: E402
from stn.predict import predict_task  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_cli(predict_task, cfg)


if __name__ == "__main__":
    main()
