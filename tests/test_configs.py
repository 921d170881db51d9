"""Configs mirror the classes they build: every key is a constructor argument of its ``_target_``,
and the group configs list every argument that train.py or the parent object does not supply.

Checked recursively: a sub-config with a ``_target_`` (``model.localizer``, ``module.optimizer``)
is checked against the class or function it builds. Experiments only override, so their keys must
exist; the group configs (``configs/model/*.yaml``, ...) must be complete.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Arguments that are not in a config because the code that builds the object passes them:
# stn.tasks.build for the group configs, the parent model or the LightningModule for sub-configs.
SUPPLIED = {
    "model": {"in_channels", "num_classes", "image_size", "mean", "std"},
    "module": {"model", "num_classes"},
    "data": set(),
    "stn.models.Localizer": {"in_channels", "image_size"},
    "stn.models.ScoreMap": {"in_channels", "image_size"},
    "stn.models.BoxHead": {"in_features", "image_size", "num_boxes"},
    "stn.models.AffineHead": {"in_features"},
    "stn.models.DigitNet": {"in_channels", "num_classes", "input_size"},
    "stn.models.CifarNet": {"in_channels", "num_classes", "input_size"},
    # div_factor and final_div_factor keep their defaults out of the config, so that another
    # scheduler (module.scheduler._target_=...) needs only ~module.scheduler.pct_start
    "stn.lit.one_cycle": {"optimizer", "total_steps", "div_factor", "final_div_factor"},
}


def arguments(target) -> tuple[set, bool]:
    """Named arguments of a class or function, following ``**kwargs`` up a class's bases."""
    names: set = set()
    chain = target.__mro__ if inspect.isclass(target) else (target,)
    for owner in chain:
        if owner is object:
            break
        params = inspect.signature(owner.__init__ if inspect.isclass(owner) else owner).parameters
        names |= {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return names - {"self"}, False
    return names - {"self"}, True


def problems_of(node: dict, where: str, supplied: set, complete: bool) -> list[str]:
    target_name = node["_target_"]
    names, open_ended = arguments(get_object(target_name))
    keys = {k for k in node if k not in ("_target_", "_partial_")}
    found = []
    if keys - names and not open_ended:
        found.append(f"{where}: {sorted(keys - names)} are not arguments of {target_name}")
    missing = names - keys - supplied
    if complete and target_name.startswith("stn.") and missing:
        found.append(f"{where}: arguments of {target_name} missing from the config: {sorted(missing)}")
    for key in sorted(keys):
        value = node[key]
        if isinstance(value, dict) and "_target_" in value:
            sub = SUPPLIED.get(value["_target_"], set())
            found += problems_of(value, f"{where}.{key}", sub, complete)
    return found


def composed(overrides: list[str]) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=False)


GROUP_CONFIGS = [(g, p.stem) for g in SUPPLIED if "." not in g for p in sorted((CONFIGS / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,name", GROUP_CONFIGS, ids=[f"{g}={n}" for g, n in GROUP_CONFIGS])
def test_group_config_mirrors_its_class(group, name):
    cfg = composed([f"{group}={name}"])[group]
    assert not problems_of(cfg, f"{group}={name}", SUPPLIED[group], complete=True)


EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_keys_are_arguments(name):
    cfg = composed([f"experiment={name}"])
    for group in ("model", "module", "data"):
        assert not problems_of(cfg[group], f"experiment={name}: {group}", SUPPLIED[group], complete=False)


def test_the_check_finds_a_wrong_and_a_missing_key():
    cfg = composed([])
    model = cfg["model"]
    model["box_head"]["min_scal"] = model["box_head"].pop("min_scale")
    found = problems_of(model, "model", SUPPLIED["model"], complete=True)
    assert found == [
        "model.box_head: ['min_scal'] are not arguments of stn.models.BoxHead",
        "model.box_head: arguments of stn.models.BoxHead missing from the config: ['min_scale']",
    ]
