"""stn.models: shapes, identity initialization, bounds, gradients, configs and argument checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from stn.models import (
    AffineHead,
    AffineSTN,
    AttentionModel,
    BoxHead,
    BoxRefiner,
    CifarNet,
    CNNModel,
    DigitNet,
    Localizer,
    MultiGlimpseModel,
)

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs" / "model")
MNIST = dict(in_channels=1, num_classes=10, image_size=(28, 28), mean=(0.1307,), std=(0.3081,))
GLIMPSE_MODELS = (AttentionModel, AffineSTN, MultiGlimpseModel)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def images(b=4, c=1, h=28, w=28, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def train_steps(model, x, steps=2, lr=1e-2):
    y = torch.arange(x.shape[0]) % model.num_classes
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(x)["logits"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss


# -- shapes and keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [AttentionModel, AffineSTN, MultiGlimpseModel, CNNModel])
def test_output_shapes_and_training_steps(cls):
    torch.manual_seed(0)
    model = cls(**MNIST)
    x = images()
    loss = train_steps(model, x)
    assert torch.isfinite(loss)
    out = model(x)
    assert out["logits"].shape == (4, 10)
    if cls is CNNModel:
        assert set(out) == {"logits"}
        assert model.localization_parameters() == []
        return
    g = (4, 2) if cls is MultiGlimpseModel else (4,)
    assert out["boxes"].shape == (*g, 4)
    assert out["glimpses"].shape == (*g, 1, 28, 28)
    if cls is AffineSTN:
        assert out["theta"].shape == (4, 2, 3)
    loc_ids = {id(p) for p in model.localization_parameters()}
    assert loc_ids and loc_ids < {id(p) for p in model.parameters()}


def test_non_square_images_and_glimpse_size():
    model = AttentionModel(
        glimpse_size=(12, 16),
        in_channels=3,
        num_classes=5,
        image_size=(24, 40),
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.2, 0.2),
    )
    out = model(images(c=3, h=24, w=40))
    assert out["logits"].shape == (4, 5)
    assert out["glimpses"].shape == (4, 3, 12, 16)
    torch.testing.assert_close(
        out["boxes"], torch.tensor([[0.0, 0.0, 40.0, 24.0]]).expand(4, 4), atol=1e-5, rtol=0
    )


# -- identity initialization ----------------------------------------------------------------------


def test_attention_starts_at_the_full_image():
    model = AttentionModel(**MNIST)
    x = images()
    out = model(x)
    torch.testing.assert_close(
        out["boxes"], torch.tensor([[0.0, 0.0, 28.0, 28.0]]).expand(4, 4), atol=1e-5, rtol=0
    )
    # a full-image box sampled at the image size is the image itself
    torch.testing.assert_close(out["glimpses"], x, atol=1e-4, rtol=0)


def test_affine_stn_starts_at_the_identity():
    model = AffineSTN(**MNIST)
    x = images()
    out = model(x)
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(4, 2, 3)
    torch.testing.assert_close(out["theta"], eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        out["boxes"], torch.tensor([[0.0, 0.0, 28.0, 28.0]]).expand(4, 4), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(out["glimpses"], x, atol=1e-4, rtol=0)


def test_multi_glimpse_starts_at_the_full_image_and_custom_starts():
    out = MultiGlimpseModel(num_glimpses=3, **MNIST)(images())
    torch.testing.assert_close(
        out["boxes"], torch.tensor([0.0, 0.0, 28.0, 28.0]).expand(4, 3, 4), atol=1e-5, rtol=0
    )
    head = BoxHead(
        in_features=8,
        image_size=(20, 40),
        num_boxes=2,
        init_scale=[0.5, 1.0],
        init_center=[[0.25, 0.5], [0.5, 0.5]],
    )
    boxes = head(torch.randn(3, 8))
    want = torch.tensor([[0.0, 5.0, 20.0, 15.0], [0.0, 0.0, 40.0, 20.0]]).expand(3, 2, 4)
    torch.testing.assert_close(boxes, want, atol=1e-5, rtol=0)


# -- box bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("anisotropic", [False, True])
def test_box_head_bounds_hold_for_extreme_inputs(anisotropic):
    torch.manual_seed(0)
    h, w, lo, hi = 20, 30, 0.25, 1.5
    head = BoxHead(
        in_features=6, image_size=(h, w), num_boxes=3, min_scale=lo, max_scale=hi, anisotropic=anisotropic
    )
    torch.nn.init.normal_(head.linear.weight, std=10.0)
    feats = torch.cat([torch.randn(64, 6) * 1e4, torch.zeros(1, 6), torch.full((1, 6), 1e30)])
    boxes = head(feats)
    assert boxes.shape == (66, 3, 4) and torch.isfinite(boxes).all()
    cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    sx, sy = (boxes[..., 2] - boxes[..., 0]) / w, (boxes[..., 3] - boxes[..., 1]) / h
    eps = 1e-4
    assert (cx >= -eps).all() and (cx <= w + eps).all() and (cy >= -eps).all() and (cy <= h + eps).all()
    for s in (sx, sy):
        assert (s >= lo - eps).all() and (s <= hi + eps).all()
    # the extremes are reached, so the bounds are the ones asked for
    assert sx.min() < lo + 1e-3 and sx.max() > hi - 1e-3
    if anisotropic:
        assert not torch.allclose(sx, sy)
    else:
        torch.testing.assert_close(sx, sy)


# -- gradients into the localization network ------------------------------------------------------


@pytest.mark.parametrize("cls", GLIMPSE_MODELS)
def test_classification_loss_trains_the_localizer(cls):
    torch.manual_seed(0)
    model = cls(**MNIST)
    x = images(b=8)
    y = torch.arange(8) % 10
    head = model.affine_head if cls is AffineSTN else model.box_head
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    F.cross_entropy(model(x)["logits"], y).backward()
    # step 0: the zero-initialized head weights get gradient (the rest of the localizer cannot yet)
    assert head.linear.weight.grad.abs().sum() > 0
    assert head.linear.bias.grad.abs().sum() > 0
    opt.step()
    opt.zero_grad()

    # once the head weights are nonzero, the gradient reaches every localizer layer
    F.cross_entropy(model(x)["logits"], y).backward()
    for name, p in model.localizer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# -- multi-glimpse --------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["concat", "mean"])
def test_multi_glimpse_retina(fusion):
    box_head = lambda **kw: BoxHead(init_scale=[1.0, 0.5, 0.8], **kw)  # noqa: E731
    model = MultiGlimpseModel(
        box_head=box_head,
        num_glimpses=3,
        retina_scales=[1, 2, 4],
        fusion=fusion,
        glimpse_size=(12, 12),
        in_channels=3,
        num_classes=7,
        image_size=(32, 32),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    assert model.classifier.trunk[0].in_channels == 9  # 3 levels x 3 channels
    assert model.head.in_features == model.classifier.feature_dim * (3 if fusion == "concat" else 1)
    out = model(images(b=2, c=3, h=32, w=32))
    assert out["logits"].shape == (2, 7)
    assert out["boxes"].shape == (2, 3, 4)
    assert out["glimpses"].shape == (2, 3, 3, 12, 12)
    assert out["retina"].shape == (2, 3, 3, 3, 12, 12)
    torch.testing.assert_close(out["retina"][:, :, 0], out["glimpses"])
    # a 4x level of a full-image box sees the image small in the middle of black padding
    outer = out["retina"][:, 0, 2]
    assert outer[..., :3, :].abs().max() < 1e-6 and outer[..., 4:8, 4:8].mean() > 0.2
    out["logits"].sum().backward()
    assert model.box_head.linear.weight.grad.abs().sum() > 0


def test_context_dropout_blanks_the_surround_of_some_training_images_only():
    torch.manual_seed(0)
    model = MultiGlimpseModel(
        num_glimpses=2,
        retina_scales=[1, 2],
        context_dropout=0.5,
        glimpse_size=(8, 8),
        classifier=lambda **kw: DigitNet(widths=(4, 8), **kw),
        **MNIST,
    )
    seen = []
    model.classifier.trunk.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    x = images(b=64)
    out = model(x)
    trunk_in = seen[-1].reshape(64, 2, 2, 8, 8)  # (B, G, levels, h, w), normalized
    expected = model.normalize(out["retina"].reshape(64 * 2, 2, 8, 8)).reshape(64, 2, 2, 8, 8)
    torch.testing.assert_close(trunk_in[:, :, 0], expected[:, :, 0])  # the box itself is never blanked
    blanked = trunk_in[:, :, 1].flatten(1).abs().amax(1) == 0  # per image: all its glimpses or none
    assert torch.equal(blanked, trunk_in[:, 0, 1].flatten(1).abs().amax(1) == 0)
    assert 16 <= int(blanked.sum()) <= 48
    torch.testing.assert_close(trunk_in[~blanked, :, 1], expected[~blanked, :, 1])
    out["logits"].sum().backward()  # the blanked levels still pass gradients through the rest
    assert model.box_head.linear.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(seen[-1].reshape(64, 2, 2, 8, 8), expected)


def test_multi_glimpse_mean_fusion_needs_distinct_starts():
    with pytest.raises(ValueError, match="never separate"):
        MultiGlimpseModel(num_glimpses=2, fusion="mean", **MNIST)
    MultiGlimpseModel(num_glimpses=1, fusion="mean", **MNIST)  # one glimpse is fine


# -- coarse to fine ------------------------------------------------------------------------------


def test_box_refiner_starts_as_the_identity_and_stays_within_its_bounds():
    refiner = BoxRefiner(max_shift=0.25, max_zoom=1.5, in_channels=2, glimpse_size=(12, 12))
    boxes = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 8.0, 16.0]])
    x = torch.randn(2, 2, 12, 12)
    torch.testing.assert_close(refiner(x, boxes), boxes)
    with torch.no_grad():  # saturate the tanh both ways
        refiner.linear.bias.copy_(torch.tensor([100.0, -100.0, 100.0, -100.0]))
    out = refiner(x, boxes)
    size, centre = boxes[:, 2:] - boxes[:, :2], (boxes[:, :2] + boxes[:, 2:]) / 2
    new_size, new_centre = out[:, 2:] - out[:, :2], (out[:, :2] + out[:, 2:]) / 2
    torch.testing.assert_close(new_centre - centre, size * torch.tensor([0.25, -0.25]))
    torch.testing.assert_close(new_size / size, torch.tensor([1.5, 1 / 1.5]).expand(2, 2))


def test_box_refiner_passes_gradients_to_the_box_and_the_glimpse():
    refiner = BoxRefiner(in_channels=1, glimpse_size=(8, 8))
    with torch.no_grad():
        refiner.linear.weight.normal_()
    boxes = torch.tensor([[4.0, 4.0, 20.0, 24.0]], requires_grad=True)
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    refiner(x, boxes).square().sum().backward()
    assert boxes.grad.abs().min() > 0 and x.grad.abs().sum() > 0


def test_box_refiner_never_shrinks_a_box_below_min_size():
    refiner = BoxRefiner(max_zoom=4.0, in_channels=1, glimpse_size=(8, 8), min_size=(6.0, 3.0))
    with torch.no_grad():
        refiner.linear.bias.copy_(torch.tensor([0.0, 0.0, -100.0, -100.0]))
    out = refiner(torch.randn(1, 1, 8, 8), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    torch.testing.assert_close(out, torch.tensor([[5.0, 6.0, 11.0, 10.0]]))  # 4 x 4 floored to 6 x 3


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"max_shift": 0}, "max_shift"),
        ({"max_zoom": 1.0}, "max_zoom"),
        ({"min_size": (1.0, -1.0)}, "min_size"),
    ],
)
def test_box_refiner_bad_bounds(kw, match):
    with pytest.raises(ValueError, match=match):
        BoxRefiner(**kw)


def test_multi_glimpse_refiner_reads_the_coarse_retina_then_the_classifier_reads_the_refined_one():
    model = MultiGlimpseModel(
        num_glimpses=2,
        retina_scales=[1, 2],
        glimpse_size=(10, 10),
        box_head=lambda **kw: BoxHead(init_scale=[0.5, 0.8], **kw),
        refiner=BoxRefiner,
        **{**MNIST, "image_size": (40, 40)},
    )
    assert model.refiner.localizer.convs[0].in_channels == 2  # both retina levels
    torch.testing.assert_close(model.refiner.min_half, torch.tensor([6.0, 6.0]))  # min_scale 0.3 of 40
    seen = []
    model.refiner.localizer.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    x = images(b=3, h=40, w=40)
    out = model(x)
    torch.testing.assert_close(out["boxes"], out["coarse_boxes"])  # the identity at the start
    with torch.no_grad():
        model.refiner.linear.bias.copy_(torch.tensor([1.0, 0.0, -1.0, -1.0]))
    out = model(x)
    coarse = model._look(x, out["coarse_boxes"])[1]
    torch.testing.assert_close(seen[-1], model.normalize(coarse).reshape(6, 2, 10, 10))
    assert not seen[-1].requires_grad  # the refiner's view is not differentiated w.r.t. the box
    size = lambda b: b[..., 2:] - b[..., :2]  # noqa: E731
    assert (size(out["boxes"]) < size(out["coarse_boxes"])).all()
    torch.testing.assert_close(out["retina"], model._look(x, out["boxes"])[1])
    out["logits"].sum().backward()
    assert model.box_head.linear.weight.grad.abs().sum() > 0
    assert model.refiner.linear.weight.grad.abs().sum() > 0
    assert {id(p) for p in model.refiner.parameters()} <= {id(p) for p in model.localization_parameters()}


# -- backbones ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls,size", [(DigitNet, (28, 28)), (DigitNet, (12, 20)), (CifarNet, (32, 32)), (CifarNet, (16, 24))]
)
def test_backbones_adapt_to_the_input_size(cls, size):
    net = cls(in_channels=2, num_classes=6, input_size=size)
    x = torch.randn(3, 2, *size)
    assert net(x).shape == (3, 6)
    assert net.features(x).shape == (3, net.feature_dim)
    trunk = cls(in_channels=2, num_classes=None, input_size=size)
    assert trunk.head is None and trunk(x).shape == (3, trunk.feature_dim)


def test_backbone_sizes():
    assert n_params(DigitNet()) < 150_000
    assert 1_500_000 < n_params(CifarNet()) < 2_500_000


# -- configs --------------------------------------------------------------------------------------


def compose_model(name):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(config_name=name)


@pytest.mark.parametrize(
    "name,cls",
    [
        ("attention", AttentionModel),
        ("affine_stn", AffineSTN),
        ("multi_glimpse", MultiGlimpseModel),
        ("cnn", CNNModel),
    ],
)
def test_real_configs_instantiate(name, cls):
    model = instantiate(compose_model(name), **MNIST)
    assert type(model) is cls
    out = model(images(b=2))
    assert out["logits"].shape == (2, 10)
    if cls is not CNNModel:
        full = torch.tensor([0.0, 0.0, 28.0, 28.0])
        torch.testing.assert_close(out["boxes"], full.expand_as(out["boxes"]), atol=1e-5, rtol=0)


def test_configs_mirror_the_class_defaults():
    """No sub-config given and the configs agree: the defaults inside the classes are the configs'."""
    for name, cls in [
        ("attention", AttentionModel),
        ("cnn", CNNModel),
        ("multi_glimpse", MultiGlimpseModel),
        ("affine_stn", AffineSTN),
    ]:
        assert n_params(instantiate(compose_model(name), **MNIST)) == n_params(cls(**MNIST)), name


def test_cnn_baseline_matches_attention_size():
    att = n_params(instantiate(compose_model("attention"), **MNIST))
    cnn = n_params(instantiate(compose_model("cnn"), **MNIST))
    assert abs(cnn - att) <= 0.25 * att, (cnn, att)


def test_config_overrides_anisotropic_and_retina():
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        att = compose("attention", overrides=["box_head.anisotropic=true", "antialias=true"])
        multi = compose("multi_glimpse", overrides=["retina_scales=[1,2,4]", "num_glimpses=3"])
    assert instantiate(att, **MNIST).box_head.anisotropic
    out = instantiate(multi, **MNIST)(images(b=2))
    assert out["retina"].shape == (2, 3, 3, 1, 28, 28)


# -- argument checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: BoxHead(min_scale=0.5, max_scale=0.5), "min_scale < max_scale"),
        (lambda: BoxHead(min_scale=0.3, max_scale=1.0), "max_scale > 1"),
        (lambda: BoxHead(init_scale=0.1), "strictly between"),
        (lambda: BoxHead(num_boxes=2, init_scale=[0.5, 0.6, 0.7]), "one per box"),
        (lambda: BoxHead(init_center=(1.0, 0.5)), "strictly inside"),
        (lambda: BoxHead(num_boxes=0), "num_boxes"),
        (lambda: Localizer(pool_size=(3, 3)), "at least"),
        (lambda: DigitNet(input_size=(2, 2)), "too small"),
        (lambda: CifarNet(widths="abc"), "widths"),
        (lambda: AttentionModel(glimpse_size=(0, 28), **MNIST), "glimpse_size"),
        (lambda: AttentionModel(padding_mode="constant", **MNIST), "padding_mode"),
        (lambda: AttentionModel(**{**MNIST, "mean": (0.1, 0.2)}), "mean"),
        (lambda: AttentionModel(**{**MNIST, "std": (0.0,)}), "std"),
        (lambda: AffineSTN(**{**MNIST, "image_size": "big"}), "image_size"),
        (lambda: MultiGlimpseModel(fusion="sum", **MNIST), "fusion"),
        (lambda: MultiGlimpseModel(retina_scales=[2, 4], **MNIST), "retina_scales"),
        (lambda: MultiGlimpseModel(num_glimpses=0, **MNIST), "num_glimpses"),
        (lambda: MultiGlimpseModel(retina_scales=[1, 2], context_dropout=1.0, **MNIST), "context_dropout"),
        (lambda: MultiGlimpseModel(context_dropout=0.5, **MNIST), "context_dropout"),
        (lambda: CNNModel(**{**MNIST, "num_classes": 0}), "num_classes"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_wrong_image_shape_is_reported():
    model = AttentionModel(**MNIST)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"got \(2, 1, 32, 32\)"):
        CNNModel(**MNIST)(torch.rand(2, 1, 32, 32))


def test_affine_head_is_identity_at_start():
    theta = AffineHead(in_features=5)(torch.randn(3, 5))
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(3, 2, 3))


@pytest.mark.parametrize("cls", GLIMPSE_MODELS)
def test_geometry_stays_float32_under_autocast(cls):
    model = cls(**MNIST)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(b=2))
    assert out["boxes"].dtype == torch.float32 and out["glimpses"].dtype == torch.float32
    torch.testing.assert_close(
        out["boxes"], torch.tensor([0.0, 0.0, 28.0, 28.0]).expand_as(out["boxes"]), atol=1e-5, rtol=0
    )
    out["logits"].float().sum().backward()
