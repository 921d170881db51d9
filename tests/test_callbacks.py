"""GlimpseImages: box statistics, and a model whose boxes went NaN does not crash the pictures."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

from stn.callbacks import GlimpseImages, box_stats

pytestmark = pytest.mark.usefixtures("single_thread")


def test_box_stats_are_fractions_of_the_image_and_skip_non_finite_boxes():
    boxes = torch.tensor(
        [[10.0, 5.0, 30.0, 25.0], [float("nan"), 0.0, 1.0, 1.0], [0.0, 0.0, 40.0, float("inf")]]
    )
    stats = box_stats(boxes, (50, 40))  # H = 50, W = 40
    assert int(stats.pop("nonfinite")) == 2
    expected = {
        "box_center_x": 0.5,
        "box_center_y": 0.3,
        "box_width": 0.5,
        "box_height": 0.4,
        "box_scale": 0.2**0.5,
    }
    for name, value in expected.items():
        assert stats[name].tolist() == pytest.approx([value]), name


class DivergedModel(L.LightningModule):
    """Predicts NaN boxes for every other image, like a run that is diverging."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16 * 16, 3)

    def forward(self, images):
        boxes = torch.tensor([2.0, 2.0, 10.0, 12.0]).repeat(len(images), 1)
        boxes[::2] = float("nan")
        glimpses = images[..., :8, :8]
        return {"logits": self.linear(images.flatten(1)), "boxes": boxes, "glimpses": glimpses}

    def validation_step(self, batch, batch_idx):
        return {"boxes": self(batch["image"])["boxes"]}

    def val_dataloader(self):
        images = torch.rand(6, 1, 16, 16)
        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        boxes = torch.tensor([3.0, 3.0, 9.0, 11.0]).repeat(6, 1)
        return DataLoader([{"image": images, "label": labels, "box": boxes}], batch_size=None)


def test_non_finite_boxes_are_left_out_and_counted(tmp_path):
    trainer = L.Trainer(
        logger=TensorBoardLogger(tmp_path, name="", version=""),
        callbacks=[GlimpseImages(num_images=4, scale=2, nrow=2)],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with pytest.warns(UserWarning, match="3 predicted boxes were NaN/Inf"):
        trainer.validate(DivergedModel())
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0, "histograms": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("val/nonfinite_boxes")] == [3]
    assert {"val/boxes", "val/glimpses"} <= set(acc.Tags()["images"])
    assert acc.Histograms("val/box_width")[-1].histogram_value.num == 3  # the finite half
    assert acc.Histograms("val/box_width_true")[-1].histogram_value.num == 6


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        GlimpseImages(scale=0)
    with pytest.raises(ValueError, match="nrow"):
        GlimpseImages(nrow=1.5)
