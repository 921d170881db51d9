"""Evaluate a checkpoint on the test split: `python eval.py ckpt_path=<file.ckpt>`."""

import os
from pathlib import Path

os.environ.setdefault("STN_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from stn.tasks import evaluate, run_task  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> float:
    return run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
