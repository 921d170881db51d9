"""Mid-epoch resume: kill -9 after step k of epoch e, resume, same final weights as no kill (#15)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_train import FAST, ROOT, make_cfg

from stn.callbacks import LatestCheckpoint
from stn.data.base import ResumableTensorLoader, TensorSplit
from stn.tasks import train

STEPS = 6  # per epoch
KILL_AT = 8  # global step: after the 2nd of epoch 1's 6 steps
OVERRIDES = [o for o in FAST if not o.startswith(("trainer.limit_train_batches", "trainer.max_epochs"))] + [
    f"trainer.limit_train_batches={STEPS}",
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "callbacks.last_checkpoint.every_n_train_steps=2",
    "callbacks.glimpse_images=null",
    "data.val_size=64",
    "model=multi_glimpse",  # draws from the global torch RNG in training (context dropout)
    "model.retina_scales=[1,2]",
    "model.context_dropout=0.5",
    "test=false",
    "logger=csv",
]

# Run in its own process: the real train(), killed with SIGKILL right after last.ckpt of step
# KILL_AT is written (mid-epoch), as the host's out-of-memory killer would.
KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import lightning
    sys.path.insert(0, {tests!r})
    from test_train import make_cfg
    from stn.tasks import train

    real = lightning.Trainer.save_checkpoint

    def save_then_die(self, filepath, *args, **kwargs):
        real(self, filepath, *args, **kwargs)
        if Path(filepath).name == "last.ckpt" and self.global_step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)

    lightning.Trainer.save_checkpoint = save_then_die
    train(make_cfg("train", Path({out!r}), {overrides!r}))
    """
)


def final_weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_killed_mid_epoch_run_resumes_to_the_same_weights(tmp_path, tiny_mnist_dir):
    overrides = OVERRIDES + [f"paths.data_dir={tiny_mnist_dir}"]
    train(make_cfg("train", tmp_path / "whole", overrides))
    whole = final_weights(tmp_path / "whole")
    assert whole["global_step"] == 3 * STEPS

    killed = tmp_path / "killed"
    script = tmp_path / "killed_run.py"
    script.write_text(
        KILLED_RUN.format(tests=str(ROOT / "tests"), kill_at=KILL_AT, out=str(killed), overrides=overrides)
    )
    # the same intra-op threads as this process: the same float reduction order
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == -9, res.stderr[-3000:]
    state = final_weights(killed)
    assert (state["epoch"], state["global_step"]) == (1, KILL_AT)  # mid-epoch: step 2 of epoch 1
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]

    resumed = tmp_path / "resumed"
    train(make_cfg("train", resumed, overrides + [f"ckpt_path={killed / 'checkpoints' / 'last.ckpt'}"]))
    final = final_weights(resumed)
    assert final["global_step"] == whole["global_step"]
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=0, atol=0, msg=key)  # bitwise


def test_loader_state_skips_the_consumed_batches_of_that_epoch_only():
    split = TensorSplit(torch.arange(40, dtype=torch.uint8).reshape(40, 1, 1, 1), torch.arange(40))
    epoch = [0]

    def loader():
        return ResumableTensorLoader(split, 4, shuffle=True, seed=3, epoch_fn=lambda: epoch[0])

    def labels(batches):
        return [b["label"].tolist() for b in batches]

    full = loader()
    epoch[0] = 1
    uninterrupted = labels(full)
    it = iter(full)
    for _ in range(4):  # three consumed, one prefetched
        next(it)
    full.position_fn = lambda: 3
    state = full.state_dict()
    assert state == {"epoch": 1, "batches": 3}

    resumed = loader()
    resumed.load_state_dict(state)
    assert labels(resumed) == uninterrupted[3:]  # the rest of epoch 1, in the same order
    epoch[0] = 2
    assert len(labels(resumed)) == 10  # the next epoch is whole


def test_mid_epoch_triggers_are_checked():
    with pytest.raises(ValueError, match="every_n_train_steps must be None or >= 0"):
        LatestCheckpoint(every_n_train_steps=-1)
    assert LatestCheckpoint(every_n_minutes=0.5).minutes == 0.5


def test_last_checkpoint_every_few_minutes(tmp_path, tiny_mnist_dir, monkeypatch):
    import lightning

    saves = []
    real = lightning.Trainer.save_checkpoint

    def counting(self, filepath, *args, **kwargs):
        saves.append((Path(filepath).name, self.global_step))
        return real(self, filepath, *args, **kwargs)

    monkeypatch.setattr(lightning.Trainer, "save_checkpoint", counting)
    overrides = FAST + [
        f"paths.data_dir={tiny_mnist_dir}",
        "trainer.max_epochs=1",
        "test=false",
        "logger=csv",
    ]
    # a minute of 1e-7: due after every step
    train(make_cfg("train", tmp_path / "run", overrides + ["callbacks.last_checkpoint.every_n_minutes=1e-7"]))
    assert [step for name, step in saves if name == "last.ckpt"] == [1, 2, 3, 4]
