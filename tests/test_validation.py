"""A bad config value or checkpoint file: one line naming the key and what is wrong (#15)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train import FAST, make_cfg, run_cli

from stn.tasks import evaluate, train
from stn.validation import ConfigError

BAD_VALUES = [
    ("trainer.max_epochs=0", "trainer.max_epochs: must be an integer >= 1"),
    ("trainer.max_epochs=-3", "trainer.max_epochs: must be an integer >= 1"),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches: must be an integer >= 1"),
    ("trainer.min_epochs=5", "trainer.min_epochs=5 must not exceed trainer.max_epochs=2"),
    ("data.batch_size=abc", "data.batch_size: must be a positive integer, got 'abc' (str)"),
    ("data.batch_size=0", "data.batch_size: must be a positive integer, got 0 (int)"),
    ("data.batch_size=2.5", "data.batch_size: must be a positive integer, got 2.5 (float)"),
    ("data.batch_size=null", "data.batch_size: must be a positive integer, got null"),
    ("data.eval_batch_size=-1", "data.eval_batch_size: must be a positive integer"),
    ("data.val_size=-5", "data.val_size: must be an integer >= 0 or a fraction"),
    ("module.optimizer.lr=-0.1", "module.optimizer.lr: must be a number >= 0, got -0.1 (float)"),
    ("module.optimizer.lr=fast", "module.optimizer.lr: must be a number >= 0, got 'fast' (str)"),
    ("module.loc_lr_mult=-1", "module.loc_lr_mult: must be a number >= 0"),
    ("module.label_smoothing=1.0", "module.label_smoothing: must be a number in [0, 1)"),
    ("model.glimpse_size=[0,28]", "model.glimpse_size: must be a positive integer or [height, width]"),
    ("model.classifier.widths=[16,-32]", "model.classifier.widths: must be a list of positive integers"),
    ("seed=abc", "seed: must be an integer"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_config_value_is_one_clear_error(override, message, tmp_path, tiny_mnist_dir):
    cfg = make_cfg("train", tmp_path / "run", FAST + [f"paths.data_dir={tiny_mnist_dir}", override])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any work


def test_cli_bad_value_and_missing_ckpt_path_are_one_line(tmp_path, tiny_mnist_dir):
    env = {"STN_DATA_DIR": str(tiny_mnist_dir)}
    logs = f"paths.log_dir={tmp_path}/logs"
    # trainer.max_epochs=0 used to train nothing, test the untrained model and exit 0 with status ok
    for script, args, message in (
        ("train.py", ["trainer.max_epochs=0", logs], "trainer.max_epochs: must be an integer >= 1"),
        ("eval.py", [logs], "ckpt_path is required: python eval.py ckpt_path=<file.ckpt>"),
    ):
        res = run_cli(script, args, tmp_path, env)
        output = res.stdout + res.stderr
        assert res.returncode == 1, output[-2000:]
        assert message in output
        assert "Traceback" not in output and "MissingMandatoryValue" not in output


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory, tiny_mnist_dir) -> Path:
    out = tmp_path_factory.mktemp("cnn") / "run"
    overrides = FAST + [f"paths.data_dir={tiny_mnist_dir}", "model=cnn", "trainer.max_epochs=1", "test=false"]
    train(make_cfg("train", out, overrides + ["logger=csv", "callbacks.glimpse_images=null"]))
    return out / "checkpoints" / "last.ckpt"


def bad_files(folder: Path, good: Path) -> dict:
    data = good.read_bytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "random": bytes(range(256)) * 40,
    }
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.ckpt"
        paths[name].write_bytes(content)
    paths["tensors"] = folder / "tensors.ckpt"
    torch.save({"weights": torch.ones(3)}, paths["tensors"])
    paths["foreign"] = folder / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, paths["foreign"])
    return paths


CHECKPOINT_MESSAGES = {
    "empty": "is an empty file (0 bytes), not a checkpoint",
    "truncated": "is a truncated or damaged checkpoint",
    "random": "is not a PyTorch checkpoint (10240 bytes of other data)",
    "tensors": "holds PyTorch data but no training checkpoint (no 'state_dict')",
    "foreign": "has no 'stn_config': it was not written by train.py",
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_MESSAGES))
def test_bad_checkpoint_file_is_named_for_eval_and_resume(kind, cnn_checkpoint, tmp_path, tiny_mnist_dir):
    path = bad_files(tmp_path, cnn_checkpoint)[kind]
    data = f"paths.data_dir={tiny_mnist_dir}"
    for cfg in (
        make_cfg("eval", tmp_path / "eval", [f"ckpt_path={path}", data, "trainer.accelerator=cpu"]),
        make_cfg("train", tmp_path / "resume", FAST + [f"ckpt_path={path}", data]),
    ):
        with pytest.raises(ConfigError) as err:
            (evaluate if cfg.task_name == "eval" else train)(cfg)
        message = str(err.value)
        assert message.startswith(f"ckpt_path={str(path)!r}"), message
        assert CHECKPOINT_MESSAGES[kind] in message
        assert "weights_only" not in message and "\n" not in message


def test_checkpoint_of_another_model_names_both(cnn_checkpoint, tmp_path, tiny_mnist_dir):
    data = f"paths.data_dir={tiny_mnist_dir}"
    expected = "this checkpoint is model=cnn, the config asks for model=attention"
    for cfg in (
        make_cfg("eval", tmp_path / "eval", [f"ckpt_path={cnn_checkpoint}", data, "model=attention"]),
        make_cfg(
            "train", tmp_path / "resume", FAST + [f"ckpt_path={cnn_checkpoint}", data, "model=attention"]
        ),
    ):
        with pytest.raises(ConfigError, match=expected):
            (evaluate if cfg.task_name == "eval" else train)(cfg)


def test_checkpoint_weights_of_another_shape_are_one_line(cnn_checkpoint, tmp_path, tiny_mnist_dir):
    cfg = make_cfg(
        "eval",
        tmp_path / "eval",
        [f"ckpt_path={cnn_checkpoint}", f"paths.data_dir={tiny_mnist_dir}", "model=cnn"]
        + ["model.classifier.widths=[8,16,32,64]", "trainer.accelerator=cpu"],
    )
    with pytest.raises(
        ConfigError, match=r"its weights do not fit the model the config builds: \d+ of other shapes"
    ):
        evaluate(cfg)


def test_cli_bad_checkpoint_is_one_line(cnn_checkpoint, tmp_path, tiny_mnist_dir):
    path = bad_files(tmp_path, cnn_checkpoint)["random"]
    res = run_cli(
        "eval.py",
        [f"ckpt_path={path}", f"paths.log_dir={tmp_path}/logs"],
        tmp_path,
        {"STN_DATA_DIR": str(tiny_mnist_dir)},
    )
    output = res.stdout + res.stderr
    assert res.returncode == 1
    assert f"ckpt_path={str(path)!r} is not a PyTorch checkpoint" in output
    assert "Traceback" not in output and "weights_only" not in output
