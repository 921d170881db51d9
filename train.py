"""Train an attention-crop model: `python train.py [overrides]`. See configs/train.yaml."""

import os
from pathlib import Path

os.environ.setdefault("STN_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from stn.tasks import run_task, train  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the optimized metric, for sweepers."""
    return run_task(train, cfg)


if __name__ == "__main__":
    main()
