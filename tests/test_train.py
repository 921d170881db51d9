"""End to end: the real configs, the real train()/evaluate(), tiny data in real on-disk formats."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stn import pictures
from stn.tasks import RESULT_HEADER, build, evaluate, train
from stn.validation import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")

# A run short enough for the test suite: 2 epochs of a few batches.
FAST = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.batch_size=16",
    "data.val_size=32",
]


def make_cfg(config_name: str, out: Path, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out.parent)
        cfg.paths.root_dir = str(ROOT)
    return cfg


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_mnist_dir):
    """One real training run on tiny MNIST, shared by the assertions below."""
    out = tmp_path_factory.mktemp("train") / "run"
    # 2 epochs x 4 steps, train/loss logged every 2 steps
    cfg = make_cfg("train", out, FAST + [f"paths.data_dir={tiny_mnist_dir}", "trainer.log_every_n_steps=2"])
    metrics = train(cfg)
    return out, metrics


def test_train_writes_metrics_json(trained):
    out, metrics = trained
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("train/loss", "val/loss", "val/acc", "val/acc_best", "test/acc", "test/loss", "time/wall_s"):
        assert key in saved, key
    assert 0.0 <= saved["test/acc"] <= 1.0
    assert saved["status"] == "ok"
    assert saved["val/acc_best"] >= saved["val/acc"] - 1e-6
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])
    assert saved["tested_checkpoint"] == str(next((out / "checkpoints").glob("epoch_*.ckpt")))


def test_train_checkpoints_best_and_last(trained):
    out, _ = trained
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts
    assert any(name.startswith("epoch_") for name in ckpts), ckpts
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1  # 0-based epoch of the last completed epoch of 2
    assert set(state["stn_config"]) == {"data", "model", "module"}


def test_box_fit_benchmark_on_the_tested_checkpoint(trained, tiny_mnist_dir, monkeypatch, capsys):
    out, _ = trained
    monkeypatch.setenv("STN_DATA_DIR", str(tiny_mnist_dir))
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import box_fit

    ckpt = str(next((out / "checkpoints").glob("epoch_*.ckpt")))
    rows = box_fit.fit(ckpt, batches=1)
    assert rows.shape[1] == 4 and len(rows) > 0
    correct, iou, cover, ratio = rows.unbind(1)
    assert set(correct.tolist()) <= {0.0, 1.0}
    assert ((iou >= 0) & (iou <= 1) & (cover <= 1 + 1e-6) & (ratio > 0)).all()
    assert (cover >= iou - 1e-6).all()  # intersection / true area >= intersection / union
    box_fit.main([ckpt, "--batches", "1"])
    printed = capsys.readouterr().out
    assert f"test images {len(rows)}, error {100 * (1 - correct.mean()):.2f}%" in printed
    assert "| IoU <= 0.5 |" in printed


def test_module_setting_that_does_not_fit_the_model_is_a_config_error(tmp_path, tiny_mnist_dir):
    """Not Hydra's InstantiationException around it: train.py reports a ConfigError in one line."""
    cfg = make_cfg(
        "train",
        tmp_path / "run",
        FAST + [f"paths.data_dir={tiny_mnist_dir}", "model=cnn", "module.box_edge_weight=1.0"],
    )
    with pytest.raises(ConfigError, match="module.box_edge_weight=1.0: .*CNNModel takes no glimpses"):
        build(cfg)


def png(image_event) -> torch.Tensor:
    """(3, H, W) uint8 of a TensorBoard image event."""
    with Image.open(io.BytesIO(image_event.encoded_image_string)) as picture:
        return torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1)


def test_train_tensorboard_scalars_images_histograms(trained):
    """The default config (translated MNIST, 60x60 canvases with true boxes) on tiny data."""
    out, metrics = trained
    acc = events(out / "tensorboard")
    tags = acc.Tags()
    for tag in (
        "train/loss",
        "train/acc",
        "train/loss_epoch",
        "val/loss",
        "val/acc",
        "val/acc_best",
        "test/acc",
    ):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    for tag in ("val/iou", "val/iou50", "test/iou", "test/iou50"):  # the default data has true boxes
        assert tag in tags["scalars"] and tag in metrics, (tag, tags["scalars"])
    # 8 steps logged every 2 steps; the epoch means once per epoch
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 3, 5, 7]
    assert len(acc.Scalars("train/loss_epoch")) == 2
    # learning rates named by parameter group, every logged step
    assert {"lr/classifier", "lr/localizer"} <= set(tags["scalars"]), tags["scalars"]
    assert not [t for t in tags["scalars"] if t.startswith("lr-")]
    assert len(acc.Scalars("lr/localizer")) == 4
    for tag in ("val/boxes", "val/glimpses", "test/boxes", "test/glimpses"):
        assert tag in tags["images"], (tag, tags["images"])
    # 16 inputs of 60x60 upscaled 4x in rows of 8 (2 rows), each framed and titled, a legend below
    boxes = acc.Images("val/boxes")
    assert len(boxes) == 2  # one per validation epoch
    tile = 4 * 60 + 2 * pictures.FRAME
    assert boxes[-1].width == 8 * tile + 9 * pictures.PADDING
    picture = png(boxes[-1])
    assert picture.shape[1:] == (boxes[-1].height, boxes[-1].width)
    # the same grid drawn without classes: the titles make each tile taller, and hold red
    # (predicted) and green (true) text
    images = torch.zeros(16, 1, 60, 60)
    bare = pictures.box_grid(images, torch.zeros(16, 4), torch.zeros(16, 4), scale=4)
    titled = pictures.box_grid(images, torch.zeros(16, 4), torch.zeros(16, 4), *torch.zeros(2, 16), scale=4)
    assert picture.shape == titled.shape and picture.shape[1] > bare.shape[1] + 2 * 10
    title = picture[:, pictures.PADDING + pictures.FRAME :, pictures.PADDING + pictures.FRAME :][
        :, :12, : 4 * 60
    ]
    r, g, b = title.int()
    assert ((r > 150) & (g < 110)).any() and ((g > 150) & (r < 110)).any()
    # glimpses 28x28 upscaled like the inputs, in rows of 8
    glimpses = acc.Images("val/glimpses")[-1]
    cell = 4 * 28 + 2 * pictures.FRAME
    assert glimpses.width == 8 * cell + 9 * pictures.PADDING
    assert glimpses.height == 2 * cell + 3 * pictures.PADDING
    for tag in ("center_x", "center_y", "scale", "width", "height", "width_true", "height_true"):
        assert f"val/box_{tag}" in tags["histograms"], (tag, tags["histograms"])
    true_widths = acc.Histograms("val/box_width_true")[-1].histogram_value
    # the 32 validation digits (tiny MNIST: noise fills the 28x28, so the tight box is all of it)
    assert true_widths.num == 32 and true_widths.min == true_widths.max == pytest.approx(28 / 60)


def test_multi_glimpse_pictures_show_every_glimpse_and_retina_level(tmp_path, tiny_mnist_dir):
    out = tmp_path / "multi"
    overrides = [
        "model=multi_glimpse",
        "model.num_glimpses=2",
        "model.retina_scales=[1,2]",
        "trainer.max_epochs=1",
    ]
    train(make_cfg("train", out, FAST + [f"paths.data_dir={tiny_mnist_dir}", *overrides]))
    acc = events(out / "tensorboard")
    # one row per input (16 rows), 2 glimpses each with its 2x level beside it
    glimpses = acc.Images("val/glimpses")[-1]
    cell_w = 2 * 4 * 28 + 2 + 2 * pictures.FRAME
    assert glimpses.width == 2 * cell_w + 3 * pictures.PADDING
    assert glimpses.height > 16 * (4 * 28 + 2 * pictures.FRAME) + 17 * pictures.PADDING
    # both glimpses' boxes are drawn, each in its colour
    boxes = png(acc.Images("val/boxes")[-1])
    for k in range(2):
        colour = torch.tensor(pictures.glimpse_colour(k), dtype=torch.uint8).view(3, 1, 1)
        assert (boxes == colour).all(0).sum() > 16 * 4 * 10, k


def test_resume_with_longer_schedule_is_a_clear_error(trained, tmp_path, tiny_mnist_dir):
    out, _ = trained
    last = out / "checkpoints" / "last.ckpt"
    cfg = make_cfg(
        "train",
        tmp_path / "longer",
        FAST
        + [f"paths.data_dir={tiny_mnist_dir}", f"ckpt_path={last}", "trainer.max_epochs=3", "test=false"],
    )
    with pytest.raises(ValueError, match="trainer.max_epochs"):
        train(cfg)


def test_resume_into_a_new_folder_still_tests_the_best_epoch(tmp_path, tiny_mnist_dir):
    """Lightning keeps only the old best's path, not its score, when a resumed run writes to a new
    folder; train() still tests the better of the pre-resume best and the new ones."""
    base = [o for o in FAST if not o.startswith("trainer.max_epochs")]
    base += [f"paths.data_dir={tiny_mnist_dir}", "module.scheduler=null"]
    first = tmp_path / "first"
    train(make_cfg("train", first, base + ["trainer.max_epochs=1", "test=false"]))
    last = first / "checkpoints" / "last.ckpt"
    (old_best,) = (first / "checkpoints").glob("epoch_*.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=True)
    (key,) = [k for k in state["callbacks"] if k.startswith("ModelCheckpoint")]
    assert state["callbacks"][key]["best_model_path"] == str(old_best)

    def resume(name: str, old_score: float) -> dict:
        state["callbacks"][key]["best_model_score"] = torch.tensor(old_score)
        torch.save(state, last)
        out = tmp_path / name
        train(make_cfg("train", out, base + ["trainer.max_epochs=2", f"ckpt_path={last}"]))
        return json.loads((out / "metrics.json").read_text())

    # val/acc is at most 1: no epoch after the resume beats 2, every one beats -1
    assert resume("unbeaten", 2.0)["tested_checkpoint"] == str(old_best)
    assert resume("beaten", -1.0)["tested_checkpoint"] == str(
        tmp_path / "beaten" / "checkpoints" / "epoch_001.ckpt"
    )
    assert old_best.is_file()  # nothing in the resumed run's folder is deleted


def test_eval_rebuilds_model_from_checkpoint(trained, tmp_path, tiny_mnist_dir):
    out, metrics = trained
    ckpt = next((out / "checkpoints").glob("epoch_*.ckpt"))
    cfg = make_cfg(
        "eval",
        tmp_path / "eval",
        [
            f"ckpt_path={ckpt}",
            f"paths.data_dir={tiny_mnist_dir}",
            "trainer.limit_test_batches=2",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
        ],
    )
    result = evaluate(cfg)
    # train() tested the same best checkpoint on the same batches
    assert result["test/acc"] == pytest.approx(metrics["test/acc"])
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(result["test/acc"])
    assert saved["tested_checkpoint"] == str(ckpt)
    tags = events(tmp_path / "eval" / "tensorboard").Tags()
    assert {"test/boxes", "test/glimpses"} <= set(tags["images"])


def test_checkpoint_naming_the_old_module_class_still_evaluates(tmp_path, tiny_mnist_dir):
    """Checkpoints written before stn.lit.GlimpseClassifier became LitClassifier name the old class in
    their saved config (stn_config.module._target_); eval.py still rebuilds and tests them."""
    out = tmp_path / "old"
    old = ["module._target_=stn.lit.GlimpseClassifier", "trainer.max_epochs=1", "test=false"]
    train(make_cfg("train", out, FAST + [f"paths.data_dir={tiny_mnist_dir}", *old]))
    last = out / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)["stn_config"]
    assert saved["module"]["_target_"] == "stn.lit.GlimpseClassifier"
    cfg = make_cfg(
        "eval",
        tmp_path / "eval",
        [f"ckpt_path={last}", f"paths.data_dir={tiny_mnist_dir}", "trainer.limit_test_batches=2"],
    )
    result = evaluate(cfg)
    assert 0.0 <= result["test/acc"] <= 1.0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("model", ["attention", "affine_stn", "multi_glimpse", "cnn"])
def test_every_model_config_trains(model, tmp_path, tiny_mnist_dir):
    cfg = make_cfg(
        "train",
        tmp_path / model,
        FAST + [f"paths.data_dir={tiny_mnist_dir}", f"model={model}", "trainer.max_epochs=1", "logger=csv"],
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "test/acc" in metrics


def run_cli(script: str, args: list[str], cwd: Path, env_extra: dict | None = None, timeout: int = 300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_cli_train_then_eval(tmp_path, tiny_mnist_dir):
    """`python train.py` and `python eval.py` as a user runs them, output folders from Hydra; what
    the console and train.log show (the model summary and the progress bar as by default)."""
    quiet = ("trainer.enable_progress_bar", "trainer.enable_model_summary")
    args = [o for o in FAST if not o.startswith(quiet)] + [f"paths.log_dir={tmp_path}/logs"]
    res = run_cli("train.py", args, tmp_path, {"STN_DATA_DIR": str(tiny_mnist_dir)})
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert (run / ".hydra" / "config.yaml").is_file()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test/acc"] >= 0
    output = res.stdout + res.stderr
    # no tips, no known deprecation noise, no metric objects in the model summary; stdout is a
    # pipe here, so no progress bar redraws
    for noise in ("Tip:", "litlogger", "litmodels", "LeafSpec", "MulticlassAccuracy", "MeanMetric", "it/s"):
        assert noise not in output, noise
    assert "AttentionModel" in output  # the model summary is there
    # the end-of-run summary, on the console and in train.log with Lightning's log
    log_text = (run / "train.log").read_text()
    best = saved["tested_checkpoint"]
    for text in (output, log_text):
        assert f"Run folder:        {run}" in text
        assert f"Tested checkpoint: {best}" in text
        assert f"python eval.py ckpt_path={best}" in text
        assert f"tensorboard --logdir {run}" in text
        assert f"test/acc {saved['test/acc']:.4f}" in text
    assert "GPU available" in log_text and "AttentionModel" in log_text
    assert "Epoch 2/2: train/loss " in log_text  # one line per epoch instead of the progress bar
    last = run / "checkpoints" / "last.ckpt"
    res = run_cli(
        "eval.py",
        [f"ckpt_path={last}", f"paths.log_dir={tmp_path}/logs", "trainer.limit_test_batches=2"],
        tmp_path,
        {"STN_DATA_DIR": str(tiny_mnist_dir)},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    header, rule = RESULT_HEADER.splitlines()
    lines = res.stdout.splitlines()
    at = lines.index(header)
    assert lines[at + 1] == rule and lines[at + 2].startswith("| last.ckpt |")
    evals = list((tmp_path / "logs" / "eval" / "runs").iterdir())
    assert json.loads((evals[0] / "metrics.json").read_text())["test/acc"] >= 0
    assert f"Tested checkpoint: {last}" in (evals[0] / "eval.log").read_text()


def test_cli_help_lists_groups_and_examples(tmp_path):
    for script in ("train.py", "eval.py"):
        res = run_cli(script, ["--help"], tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.startswith(f"{script}: train (train.py) or evaluate (eval.py)")
        for text in (
            "model: affine_stn, attention, cnn",
            "experiment: cifar10",
            "module=",
            "python eval.py ckpt_path=",
        ):
            assert text in res.stdout, (script, text)


@pytest.mark.slow
def test_cli_diverged_run_records_its_status(tmp_path, tiny_mnist_dir):
    """A single run that diverges: one line, exit 1, metrics.json: diverged, train.log: the traceback."""
    args = [
        *FAST,
        "trainer.max_epochs=1",
        "module.optimizer.lr=1e30",
        "module.scheduler=null",
        "module.nonfinite_check_every=1",
        "callbacks.glimpse_images=null",
        f"hydra.run.dir={tmp_path}/run",
    ]
    res = run_cli("train.py", args, tmp_path, {"STN_DATA_DIR": str(tiny_mnist_dir)})
    assert res.returncode == 1
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["status"] == "diverged"
    assert saved["error"].startswith("NonFiniteLossError: training loss became NaN/Inf")
    assert "Traceback" not in res.stdout + res.stderr
    assert saved["error"] in res.stdout + res.stderr
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert "Traceback" in log_text and "NonFiniteLossError" in log_text and "GPU available" in log_text


@pytest.mark.slow
def test_cli_multirun_one_folder_per_job(tmp_path, tiny_mnist_dir):
    res = run_cli(
        "train.py",
        [
            "-m",
            "seed=1,2",
            "model=attention,cnn",
            *FAST,
            "trainer.max_epochs=1",
            f"paths.log_dir={tmp_path}/logs",
        ],
        tmp_path,
        {"STN_DATA_DIR": str(tiny_mnist_dir)},
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    sweeps = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1", "2", "3"]
    for job in jobs:
        assert (sweeps[0] / job / "metrics.json").is_file()


@pytest.mark.slow
def test_cli_interrupted_run_keeps_checkpoint_and_resumes(tmp_path, tiny_mnist_dir):
    """Ctrl-C mid-run leaves last.ckpt; `ckpt_path=<last.ckpt>` finishes the same run."""
    args = [
        *FAST,
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=30",
        "test=false",
        "logger=csv",
        f"hydra.run.dir={tmp_path}/run",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STN_DATA_DIR": str(tiny_mnist_dir)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert last.exists(), (
        proc.communicate()[0][-3000:] if proc.poll() is not None else "no checkpoint in time"
    )
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 or "max_epochs=3` reached" in output
    if proc.returncode != 0:  # stopped by the Ctrl-C, not finished before it: the folder says so
        saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert saved["status"] == "interrupted", (saved, output[-3000:])
    interrupted = torch.load(last, map_location="cpu", weights_only=True)
    res = run_cli("train.py", args + [f"ckpt_path={last}"], tmp_path, {"STN_DATA_DIR": str(tiny_mnist_dir)})
    assert res.returncode == 0, res.stderr[-3000:]
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["epoch"] == 2
    assert final["global_step"] == 3 * 30
    assert final["global_step"] >= interrupted["global_step"]


def test_cli_missing_data_is_one_clear_message(tmp_path):
    missing = tmp_path / "nowhere"
    res = run_cli(
        "train.py",
        ["trainer.max_epochs=1", f"paths.log_dir={tmp_path}/logs", "data.download=false"],
        tmp_path,
        {"STN_DATA_DIR": str(missing)},
    )
    assert res.returncode == 1
    output = res.stdout + res.stderr
    assert str(missing) in output
    assert "STN_DATA_DIR" in output
    assert "Traceback" not in output
    # the run folder says why it stopped
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["status"] == "failed" and saved["error"].startswith("DataMissingError: ")
    assert saved["error"] in (run / "train.log").read_text()


@pytest.mark.slow
def test_cli_ddp_two_cpu_processes(tmp_path, tiny_mnist_dir):
    """trainer=ddp with 2 gloo processes: trains, and ranks share one output folder."""
    res = run_cli(
        "train.py",
        [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            *FAST,
            "trainer.max_epochs=1",
            f"paths.log_dir={tmp_path}/logs",
        ],
        tmp_path,
        {"STN_DATA_DIR": str(tiny_mnist_dir)},
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1, runs
    assert json.loads((runs[0] / "metrics.json").read_text())["test/acc"] >= 0
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.realdata
@pytest.mark.slow
def test_real_mnist_smoke_accuracy_floor(tmp_path, real_mnist_dir):
    """Real plain MNIST, the default model, 150 training steps: the attention model must learn."""
    cfg = make_cfg(
        "train",
        tmp_path / "real",
        [
            "data=mnist",
            f"paths.data_dir={real_mnist_dir}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=150",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "logger=csv",
        ],
    )
    metrics = train(cfg)
    assert metrics["test/acc"] >= 0.93, metrics


EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


# Megapixel canvases scaled down so the experiment trains in seconds (the model adapts to any size).
MEGAPIXEL_SMALL = ["data.canvas_size=300", "data.num_noise=10", "data.train_size=96", "data.test_size=32"]
SMALL = {"megapixel": MEGAPIXEL_SMALL}


def experiment_cfg(name: str, out: Path, data_dirs: dict, extra=()):
    data = data_dirs["cifar"] if name.startswith("cifar10") else data_dirs["mnist"]
    small = [o for prefix, overrides in SMALL.items() if name.startswith(prefix) for o in overrides]
    return make_cfg("train", out, FAST + small + [f"experiment={name}", f"paths.data_dir={data}", *extra])


@pytest.fixture
def data_dirs(tiny_mnist_dir, tiny_cifar_dir):
    return {"mnist": tiny_mnist_dir, "cifar": tiny_cifar_dir}


def test_every_experiment_has_a_cnn_twin_of_the_same_budget(tmp_path, data_dirs):
    glimpse = [name for name in EXPERIMENTS if not name.endswith("_cnn")]
    assert glimpse and sorted(glimpse + [f"{name}_cnn" for name in glimpse]) == EXPERIMENTS
    for name in glimpse:
        counts = {}
        for variant in (name, f"{name}_cnn"):
            cfg = experiment_cfg(variant, tmp_path / variant, data_dirs)
            _, module = build(cfg)
            counts[variant] = sum(p.numel() for p in module.model.parameters())
        small, large = sorted(counts.values())
        assert large / small <= 1.15, counts


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_trains(name, tmp_path, data_dirs):
    cfg = experiment_cfg(name, tmp_path / name, data_dirs, ["trainer.max_epochs=1", "logger=csv"])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "test/acc" in metrics
    glimpses, boxes = not name.endswith("_cnn"), not name.startswith(("mnist", "cifar10"))
    # synthetic data carries true boxes: glimpse models are scored on them
    assert ("test/iou50" in metrics) == (glimpses and boxes)
