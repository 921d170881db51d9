"""The installed package (not only the checkout) has its data: the shipped MNIST files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [
    f"stn/data/bundled/mnist/{p}-{k}.gz"
    for p in ("train", "t10k")
    for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
]


@pytest.mark.slow
def test_wheel_ships_mnist_and_the_installed_package_finds_it(tmp_path):
    # build from a copy: setuptools writes build/ and *.egg-info into the source tree
    src = tmp_path / "src"
    shutil.copytree(ROOT / "stn", src / "stn", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("stn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(SHIPPED) <= names and "stn/data/bundled/README.md" in names
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    code = (
        "import stn.data.mnist as m, sys; p = m.BUNDLED_MNIST; "
        "print(m.__file__); print(p.joinpath('t10k-labels-idx1-ubyte.gz').is_file()); "
        "print(m.read_idx_gz(p / 't10k-labels-idx1-ubyte.gz')[:10].tolist())"
    )
    # run outside the checkout, with only the installed copy of stn on the path
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    module, found, labels = res.stdout.split("\n")[:3]
    assert module.startswith(str(target)) and found == "True"
    assert labels == "[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]"
