"""Checkpoint saves are atomic wherever $TMPDIR is: a kill mid-save keeps the previous file (#15)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from test_train import FAST, ROOT, make_cfg

from stn.checkpoint_io import AtomicCheckpointIO, remove_orphans
from stn.tasks import train

# Run by the test in its own process: the real config's trainer, whose second save of last.ckpt
# (end of epoch 1) writes half the file, says so and sleeps until it is killed. torch.save is the
# serializer of Lightning's own CheckpointIO and of ours.
SLOW_SAVE = textwrap.dedent(
    """
    import io, sys, time
    from pathlib import Path
    import lightning, torch
    sys.path.insert(0, {tests!r})
    from test_train import make_cfg
    from stn.tasks import train

    marker, target, saves = Path({marker!r}), [None], []
    real_save, real_trainer_save = torch.save, lightning.Trainer.save_checkpoint

    def trainer_save(self, filepath, *args, **kwargs):
        target[0] = Path(filepath).name
        return real_trainer_save(self, filepath, *args, **kwargs)

    def slow_save(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and "state_dict" in obj and target[0] == "last.ckpt"):
            return real_save(obj, f, *args, **kwargs)
        saves.append(target[0])
        if len(saves) < 2:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        marker.write_text(str(len(data)))
        time.sleep(600)

    torch.save, lightning.Trainer.save_checkpoint = slow_save, trainer_save
    train(make_cfg("train", Path({out!r}), {overrides!r}))
    """
)


@pytest.fixture
def other_filesystem_tmpdir(tmp_path):
    """A $TMPDIR on another filesystem than tmp_path: /dev/shm (a tmpfs)."""
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp_path")
    folder = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="stn-test-"))
    yield folder
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


def test_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path, tiny_mnist_dir, other_filesystem_tmpdir):
    out, marker = tmp_path / "run", tmp_path / "mid-write"
    overrides = FAST + [f"paths.data_dir={tiny_mnist_dir}", "test=false", "logger=csv"]
    script = tmp_path / "slow_save.py"
    script.write_text(
        SLOW_SAVE.format(tests=str(ROOT / "tests"), marker=str(marker), out=str(out), overrides=overrides)
    )
    env = {
        **os.environ,
        "TMPDIR": str(other_filesystem_tmpdir),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if not marker.exists():
        proc.kill()
        pytest.fail("the save never started: " + proc.communicate()[0][-3000:])
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)

    ckpts = out / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (0, 4)  # the previous save, whole
    # the half-written file lay in the checkpoint's folder (same filesystem as the rename)
    (orphan,) = ckpts.glob(".last.ckpt.*.tmp")
    assert 0 < orphan.stat().st_size < int(marker.read_text())
    assert not list(other_filesystem_tmpdir.iterdir())

    # resuming from it continues the run, and removes the orphan first
    resumed = make_cfg("train", tmp_path / "resumed", overrides + [f"ckpt_path={ckpts / 'last.ckpt'}"])
    train(resumed)
    assert not orphan.exists()
    final = torch.load(
        tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert (final["epoch"], final["global_step"]) == (1, 8)


def test_orphans_are_removed_but_not_a_save_in_progress(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, tmp_path / "last.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    dead = tmp_path / ".last.ckpt.abc123.tmp"
    dead.write_bytes(b"half a checkpoint")
    live = tmp_path / ".epoch_000.ckpt.def456.tmp"
    with open(live, "wb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # a writer still at work
        assert remove_orphans(tmp_path) == [dead]
    assert live.exists() and not dead.exists()
    assert io.load_checkpoint(tmp_path / "last.ckpt")["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]
    assert not live.exists()  # loading from the folder removes orphans too


def test_configured_trainer_saves_atomically(tmp_path, tiny_mnist_dir):
    from stn.tasks import build_trainer

    cfg = make_cfg("train", tmp_path / "run", FAST + [f"paths.data_dir={tiny_mnist_dir}"])
    assert isinstance(build_trainer(cfg).strategy.checkpoint_io, AtomicCheckpointIO)
