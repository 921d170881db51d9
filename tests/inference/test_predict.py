"""`python predict.py`: files of every mode (and one that is not an image) to predictions.csv rows
and per-image pictures."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stn import load_model
from stn.predict import COLUMNS, find_inputs, predict_files
from stn.validation import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write_every_mode(folder: Path, digit: np.ndarray) -> dict:
    """One file per mode, all showing ``digit`` (28x28 uint8) at another size; name -> (W, H)."""
    folder.mkdir(parents=True)
    big = np.kron(digit, np.ones((2, 3), np.uint8))  # 56 x 84
    rgb = np.stack([big, big // 2, big], -1)
    sizes = {}
    files = {
        "grey.png": Image.fromarray(digit),
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.concatenate([rgb, np.full_like(big, 200)[..., None]], -1), "RGBA"),
        "palette.png": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
        "sixteen.png": Image.fromarray(big.astype(np.uint16) * 257),
        "photo.jpg": Image.fromarray(rgb),
    }
    for name, image in files.items():
        image.save(folder / name)
        sizes[name] = image.size
    (folder / "notes.png").write_text("not an image, whatever its name says\n")
    return sizes


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def check_rows(rows: list[dict], folder: Path, sizes: dict, out: Path, classes: list[str]) -> None:
    by_name = {Path(r["file"]).name: r for r in rows}
    assert set(by_name) == set(sizes) | {"notes.png"}
    bad = by_name.pop("notes.png")
    assert "cannot identify image file" in bad["error"]
    assert bad["label"] == bad["class_name"] == bad["prob"] == bad["boxes"] == ""
    assert not (out / "notes.png").exists()
    for name, row in by_name.items():
        assert row["error"] == "", (name, row["error"])
        assert row["class_name"] == classes[int(row["label"])], name
        assert 0 < float(row["prob"]) <= 1, name
        boxes = json.loads(row["boxes"])
        assert len(boxes) == 1 and len(boxes[0]) == 4, name
        width, height = sizes[name]
        x1, y1, x2, y2 = boxes[0]
        # in the file's own pixels: the box is about the image (the model starts at the whole image)
        assert -0.2 * width < x1 < x2 < 1.2 * width and -0.2 * height < y1 < y2 < 1.2 * height, (name, boxes)
        picture = Image.open(out / f"{Path(name).stem}.png")
        assert picture.mode == "RGB" and picture.height >= height and picture.width > picture.height, name
    # the same picture in different modes: the same class
    assert len({by_name[n]["label"] for n in ("rgb.png", "rgba.png", "photo.jpg", "palette.png")}) == 1


def test_predict_files_every_mode(mnist_ckpt, digit, tmp_path):
    folder = tmp_path / "images"
    sizes = write_every_mode(folder, digit(3))
    model = load_model(mnist_ckpt)
    out = tmp_path / "out"
    predict_files(model, find_inputs(str(folder)), out, batch_size=4)
    rows = read_rows(out / "predictions.csv")
    check_rows(rows, folder, sizes, out, model.classes)
    # grey PNG and its 16-bit copy hold the same digit (one at 2x3 the size): same answer
    grey, sixteen = (next(r for r in rows if r["file"].endswith(n)) for n in ("grey.png", "sixteen.png"))
    assert grey["label"] == sixteen["label"]


def test_find_inputs(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.png", "a/y.JPG", "a/z.txt", "b.png"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in find_inputs(str(tmp_path / "a"))] == ["x.png", "y.JPG"]
    assert [p.name for p in find_inputs(str(tmp_path / "**" / "*.png"))] == ["x.png", "b.png"]
    assert find_inputs(str(tmp_path / "a" / "z.txt")) == [tmp_path / "a" / "z.txt"]
    with pytest.raises(ConfigError, match="no such file or folder"):
        find_inputs(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no files match"):
        find_inputs(str(tmp_path / "*.gif"))


def run(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_predict(mnist_ckpt, digit, tmp_path):
    folder = tmp_path / "images"
    sizes = write_every_mode(folder, digit(4))
    out = tmp_path / "out"
    # a glob, quoted for Hydra; it matches every file, the text file too
    args = [f"ckpt_path={mnist_ckpt}", f"inputs='{folder}/*'", f"out={out}", f"paths.log_dir={tmp_path}"]
    res = run("predict.py", args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    check_rows(read_rows(out / "predictions.csv"), folder, sizes, out, [str(i) for i in range(10)])
    # the user's mistake: one message
    res = run(
        "predict.py",
        [f"ckpt_path={tmp_path}/none.ckpt", f"inputs={folder}", f"paths.log_dir={tmp_path}"],
        tmp_path,
    )
    assert res.returncode == 1
    assert "none.ckpt" in res.stdout + res.stderr and "Traceback" not in res.stdout + res.stderr
