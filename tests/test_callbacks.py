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


class BoxesModel(nn.Module):
    """Three glimpses per canvas at fixed boxes: glimpse k's box of 60 px at (100 + 400k, 1300)."""

    def forward(self, images):
        k = torch.arange(3.0)[:, None]
        boxes = torch.cat(
            [100 + 400 * k, torch.full_like(k, 1300), 160 + 400 * k, torch.full_like(k, 1360)], 1
        )
        return {
            "logits": torch.zeros(len(images), 10),
            "boxes": boxes.expand(len(images), 3, 4),
            "glimpses": torch.zeros(len(images), 3, 1, 32, 32),
        }


def test_megapixel_boxes_show_every_glimpse_and_every_true_box_shrunk(tiny_mnist_dir):
    from stn.data.megapixel import MegapixelMNISTDataModule
    from stn.pictures import FRAME, OTHER_TRUE_COLOUR, PADDING, TRUE_COLOUR, box_tiles, glimpse_colour

    dm = MegapixelMNISTDataModule(
        str(tiny_mnist_dir),
        train_size=20,
        val_size=4,
        test_size=4,
        batch_size=2,
        download=False,
        device="cpu",
    )
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape[-2:] == (1500, 1500) and batch["boxes"].shape[1:] == (5, 4)
    drawn = GlimpseImages(num_images=2, nrow=2).draw(BoxesModel(), batch)
    grid = drawn["boxes"]
    # tiles of the canvas shrunk to 512 (max_side), under a title strip, in a frame
    title = box_tiles(torch.zeros(1, 1, 512, 512), None, None, torch.zeros(1), torch.zeros(1)).shape[-2]
    title -= 512 + 2 * FRAME
    tile_w = 512 + 2 * FRAME
    assert grid.shape[-1] == 2 * tile_w + 3 * PADDING
    f = 512 / 1500
    for i in range(2):
        x0, y0 = PADDING + i * (tile_w + PADDING) + FRAME, PADDING + FRAME + title
        canvas = grid[:, y0 : y0 + 512, x0 : x0 + 512]
        marked = batch["digit_labels"][i] == batch["label"][i]
        assert int(marked.sum()) == 3
        for box, label_class in zip(batch["boxes"][i].tolist(), marked.tolist()):
            # the outline one pixel outside the shrunk box (stn.pictures' convention)
            x1, y1, x2, y2 = (
                round(box[0] * f - 1),
                round(box[1] * f - 1),
                round(box[2] * f),
                round(box[3] * f),
            )
            colour = torch.tensor(TRUE_COLOUR if label_class else OTHER_TRUE_COLOUR, dtype=torch.uint8)
            for edge in (canvas[:, y1, x1 : x2 + 1], canvas[:, y2, x1 : x2 + 1], canvas[:, y1 : y2 + 1, x1]):
                assert (edge == colour[:, None]).all(0).float().mean() > 0.8, (i, box)
        for k in range(3):  # each glimpse's box in its own colour, where it was put
            colour = torch.tensor(glimpse_colour(k), dtype=torch.uint8)
            y, left, right = round(1300 * f - 1), round((100 + 400 * k) * f - 1), round((160 + 400 * k) * f)
            assert (canvas[:, y, left : right + 1] == colour[:, None]).all(0).all(), k
    assert drawn["glimpses"].shape[1] > 2 * 32 * 4  # two rows of three 4x upscaled glimpses


def test_a_coarse_to_fine_model_shows_its_first_look_under_the_refined_box():
    from stn.models import BoxRefiner, MultiGlimpseModel
    from stn.pictures import box_grid

    model = MultiGlimpseModel(num_glimpses=1, retina_scales=[1, 2], refiner=BoxRefiner, image_size=(28, 28))
    with torch.no_grad():
        model.refiner.linear.bias.copy_(torch.tensor([0.0, 0.0, -100.0, -100.0]))  # half the size
    batch = {"image": torch.rand(2, 1, 28, 28), "label": torch.tensor([1, 2])}
    drawn = GlimpseImages(num_images=2, nrow=2).draw(model, batch)["boxes"]
    out = model.eval()(batch["image"])
    kw = dict(pred_labels=out["logits"].argmax(-1), true_labels=batch["label"], scale=4, nrow=2, max_side=512)
    assert torch.equal(drawn, box_grid(batch["image"], out["boxes"], coarse_boxes=out["coarse_boxes"], **kw))
    assert not torch.equal(drawn, box_grid(batch["image"], out["boxes"], **kw))
