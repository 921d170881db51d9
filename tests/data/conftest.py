"""Compose the real data configs (configs/data/*.yaml) without the rest of the project's configs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tests.data.synthetic_digits import write_rect_mnist

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def data_config() -> Callable[..., DictConfig]:
    """``data_config(name, data_dir, cache_dir=None, *overrides)`` -> the resolved ``data`` node."""

    def make(name: str, data_dir: Path, cache_dir: Optional[Path] = None, *overrides: str) -> DictConfig:
        with initialize_config_dir(str(CONFIGS), version_base="1.3"):
            cfg = compose(
                overrides=[
                    f"+data={name}",
                    "+seed=0",
                    f"+paths.data_dir='{data_dir}'",
                    f"+paths.cache_dir='{cache_dir}'" if cache_dir else "+paths.cache_dir=null",
                    *overrides,
                ]
            )
        return cfg.data

    return make


@pytest.fixture(scope="module")
def rect_mnist(tmp_path_factory) -> Path:
    """A data dir whose MNIST/raw IDX files hold rectangles of ink (tests/data/synthetic_digits.py)."""
    return write_rect_mnist(tmp_path_factory.mktemp("rect_mnist"))
