"""Mixed precision and torch.compile on the CPU, stand-ins for the GPU settings of trainer=gpu."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stn.tasks import build, train
from tests.test_train import FAST, MEGAPIXEL_SMALL, ROOT, make_cfg

MODELS = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))
# models for large images train on (scaled-down) Megapixel MNIST, the others on MNIST
LARGE_IMAGE_MODELS = {"strided_cnn", "topk_glimpse"}


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_trains_in_bf16_mixed(model, tmp_path, tiny_mnist_dir, monkeypatch):
    """trainer.precision=bf16-mixed runs the model under CPU autocast, and training stays finite."""
    cfg = make_cfg(
        "train",
        tmp_path / model,
        FAST
        + [
            f"paths.data_dir={tiny_mnist_dir}",
            f"model={model}",
            *(["data=megapixel_mnist", *MEGAPIXEL_SMALL] if model in LARGE_IMAGE_MODELS else []),
            "trainer.max_epochs=1",
            "trainer.precision=bf16-mixed",
            "logger=csv",
        ],
    )
    dtypes = []
    forward = torch.nn.Module.__call__

    def spy(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if isinstance(out, dict) and "logits" in out:
            dtypes.append(out["logits"].dtype)
        return out

    monkeypatch.setattr(torch.nn.Module, "__call__", spy)
    metrics = train(cfg)
    assert torch.bfloat16 in dtypes, f"autocast never produced bf16 logits: {set(dtypes)}"
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert 0.0 <= metrics["test/acc"] <= 1.0


def _step(module, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and parameter gradients of one training step (cross-entropy through the whole model)."""
    module.zero_grad()
    logits = module.model(batch["image"])["logits"]
    loss = F.cross_entropy(logits, batch["label"])
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.model.parameters() if p.grad is not None]


@pytest.mark.slow
def test_compile_matches_eager_and_reports_graph_breaks(tmp_path: Path, tiny_mnist_dir):
    """module.compile=true: a compiled training step equals the eager one within float tolerance."""
    cfg = make_cfg(
        "train",
        tmp_path,
        FAST + [f"paths.data_dir={tiny_mnist_dir}", "module.compile=true", "data.batch_size=8"],
    )
    torch.manual_seed(0)
    datamodule, module = build(cfg)
    assert module.hparams.compile
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if batch["image"].dtype == torch.uint8:
        batch["image"] = batch["image"].float() / 255
    eager_loss, eager_grads = _step(module, batch)

    explanation = torch._dynamo.explain(module.model)(batch["image"])
    print(f"graph breaks in the attention model: {explanation.graph_break_count}")
    for reason in explanation.break_reasons:
        print("  ", reason.reason.splitlines()[0])

    module.setup("fit")  # what Lightning calls: compiles self.model in place
    keys = set(module.state_dict())
    compiled_loss, compiled_grads = _step(module, batch)
    assert set(module.state_dict()) == keys, "compiling must keep the checkpoint's state-dict keys"
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-4, atol=1e-5)
    assert len(compiled_grads) == len(eager_grads)
    for eager, compiled in zip(eager_grads, compiled_grads):
        assert torch.allclose(compiled, eager, rtol=1e-3, atol=1e-5)
