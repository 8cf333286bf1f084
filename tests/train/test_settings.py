"""Each config setting is declared once (``hardneg.train.settings.setting``): its default, range,
choices and description; errors, derived model configurations and ``docs/config.md`` all come
from that declaration."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hardneg.models.crossmodal import CrossModalConfig
from hardneg.models.image import ImageTowerConfig
from hardneg.samplers import HardnessSamplerConfig
from hardneg.train.builders import image_tower_config
from hardneg.train.config import ModelConfig, TrainConfig
from hardneg.train.config_reference import render
from hardneg.train.methods import METHODS
from hardneg.train.settings import check_settings, declared, derived_kwargs, setting
from hardneg.train.validate import resolve_config, validate_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def _sections(config=None):
    """``(dotted prefix, section)`` of every config dataclass in a TrainConfig."""
    config = config or TrainConfig()
    yield "", config
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            yield f"{field.name}.", value


def test_a_range_violation_names_the_key_the_range_and_a_fix():
    with pytest.raises(ValueError) as err:
        resolve_config("infonce", {"model": {"dropout": 1.5}})
    assert (
        str(err.value) == "model.dropout must be in [0, 1), got 1.5; e.g. --set model.dropout=0.1"
    )
    with pytest.raises(ValueError, match=r"^crossmodal\.cla_rho must be in \(0, 1\], got 0\.0"):
        resolve_config("infonce", {"crossmodal": {"cla_rho": 0}})
    with pytest.raises(ValueError, match=r"^optim\.max_grad_norm must be > 0, got -1\.0"):
        resolve_config("infonce", {"optim": {"max_grad_norm": -1}})


def test_a_config_built_directly_is_checked_against_the_same_declarations():
    with pytest.raises(ValueError, match=r"^steps must be ≥ 1, got 0; e\.g\. --set steps=300$"):
        validate_config(TrainConfig(steps=0))
    sampler = dataclasses.replace(TrainConfig().batch_sampler, mode="hardest")
    bad = TrainConfig(batch_sampler=sampler)
    with pytest.raises(ValueError, match=r"sampler\.mode='hardest' is unknown; choose one of"):
        validate_config(bad)


def test_a_choice_error_lists_the_choices_of_the_literal():
    with pytest.raises(ValueError) as err:
        resolve_config("infonce", {"optim": {"name": "adam"}})
    assert str(err.value) == "optim.name='adam' is unknown; choose one of ['adamw', 'sgd']"
    with pytest.raises(ValueError, match=r"pretrain\.negative_kinds\[0\]='nope'.*'swap_colours'"):
        resolve_config("infonce", {"pretrain": {"negative_kinds": ["nope"]}})
    with pytest.raises(ValueError, match=r"miner\.curriculum='steep'.*'aggressive'"):
        resolve_config("bacl_dual", {"miner": {"curriculum": "steep"}})


def test_an_unknown_key_gets_the_closest_valid_one():
    with pytest.raises(
        ValueError, match=r"unknown key\(s\) \['optim\.lrr'\].*did you mean optim\.lr\?"
    ):
        resolve_config("infonce", {"optim": {"lrr": 0.1}})
    with pytest.raises(ValueError, match=r"did you mean data\.preset\?"):
        resolve_config("infonce", {"data": {"presets": "tiny"}})


def test_every_key_is_declared_with_a_description_and_every_default_satisfies_it():
    for prefix, section in _sections():
        for field in dataclasses.fields(section):
            if dataclasses.is_dataclass(getattr(section, field.name)):
                continue
            spec = declared(field)
            assert spec is not None and spec.doc, f"{prefix}{field.name} has no declaration"
    check_settings(TrainConfig())
    for method in METHODS:  # (BACL's frozen dual encoder needs the pre-training stage)
        resolve_config(method, {"pretrain": {"steps": 10}})


def test_a_setting_passed_on_to_a_model_config_takes_that_config_s_default():
    for _, section in _sections():
        for field in dataclasses.fields(section):
            spec = declared(field)
            if spec is not None and spec.sets is not None:
                target, name = spec.sets
                own = next(f for f in dataclasses.fields(target) if f.name == name)
                assert field.default == own.default, (field.name, target.__name__)
    assert ModelConfig().image_width == ImageTowerConfig().width
    assert ModelConfig().crossmodal_dim == CrossModalConfig().d_model
    with pytest.raises(TypeError, match="takes its default"):
        setting(64, sets=(ImageTowerConfig, "width"), doc="a second copy of the default")


def test_model_settings_reach_the_built_model_configs():
    model = ModelConfig(image_tower="vit", image_width=96, crossmodal_heads=8, dropout=0.2)
    tower = image_tower_config(model, image_size=48)
    assert (tower.arch, tower.width, tower.image_size) == ("vit", 96, 48)
    assert tower.num_heads == ImageTowerConfig().num_heads  # not a ModelConfig setting
    cross = CrossModalConfig(**derived_kwargs(model, CrossModalConfig))
    assert (cross.d_model, cross.num_layers, cross.num_heads, cross.dropout) == (128, 4, 8, 0.2)
    mode = derived_kwargs(TrainConfig().batch_sampler, HardnessSamplerConfig)
    assert mode == {"mode": "random"}


def test_a_bad_combination_for_a_model_config_names_the_settings():
    with pytest.raises(ValueError, match=r"model\.image_width=130 .*ImageTowerConfig: width 130"):
        resolve_config("infonce", {"model": {"image_width": 130}})
    with pytest.raises(ValueError, match=r"model\.crossmodal_heads=3, .*not divisible"):
        resolve_config("infonce", {"model": {"crossmodal_heads": 3}})


def test_the_committed_reference_is_the_rendered_one():
    """``docs/config.md`` cannot drift: regenerate it with
    ``python -m hardneg.train.config_reference docs/config.md``."""
    assert DOC.read_text(encoding="utf-8") == render()
    text = render()
    assert "| `optim.lr` | float | `0.001` | ≥ 0 | peak learning rate (0: a dry run) |" in text
    assert "one of `adamw`, `sgd`" in text
    for prefix, section in _sections():
        for field in dataclasses.fields(section):
            if not dataclasses.is_dataclass(getattr(section, field.name)):
                assert f"| `{prefix}{field.name}` |" in text


def test_the_miner_section_takes_bnsconfig_defaults_and_its_checks():
    from hardneg.miners import BNSConfig

    assert TrainConfig().miner.k == BNSConfig().k and TrainConfig().miner.lr == BNSConfig().lr
    with pytest.raises(ValueError, match=r"miner\.tau_end=2\.0 must be ≤ miner\.tau_start"):
        resolve_config("bacl_dual", {"miner": {"tau_end": 2.0}})
    with pytest.raises(ValueError, match=r"miner\.k must be a positive int"):
        resolve_config("bacl_dual", {"miner": {"k": 0}})
