"""The fusion group's shared stage (``pretrain.fusion_steps``): ALBEF on random batches, once,
the same for every run seed, cached; arms then start from it."""

from __future__ import annotations

import pytest
import torch

from hardneg.train.trainer import Trainer, resolve_config
from tests.helpers.trainer_values import trainer_values

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(tmp_path, text_model, method: str, seed: int, fusion_steps: int = 3) -> Trainer:
    values = trainer_values(
        tmp_path, text_model, seed=seed, out_dir=str(tmp_path / f"{method}{seed}"),
        pretrain={"steps": 2, "batch_size": 16, "fusion_steps": fusion_steps},
    )  # fmt: skip
    return Trainer(resolve_config(method, values))


def test_the_stage_is_shared_by_seeds_and_arms_and_cached(tmp_path, tiny_text_model):
    first = _trainer(tmp_path, tiny_text_model, "albef", seed=0)
    files = list((tmp_path / "cache" / "fusion").glob("*.pt"))
    assert len(files) == 1
    state = first.model.trainable_state_dict()
    untrained = _trainer(tmp_path / "none", tiny_text_model, "albef", seed=0, fusion_steps=0)
    moved = [k for k, v in untrained.model.trainable_state_dict().items()
             if k.startswith("crossmodal.") and not torch.equal(v, state[k])]  # fmt: skip
    assert moved  # the stage trained the cross-modal transformer
    for method, seed in (("albef", 1), ("falcon", 2)):
        other = _trainer(tmp_path, tiny_text_model, method, seed)
        for key, value in other.model.trainable_state_dict().items():
            assert torch.equal(value, state[key]), (method, seed, key)
    assert len(list((tmp_path / "cache" / "fusion").glob("*.pt"))) == 1  # read, not retrained


def test_methods_without_fusion_skip_the_stage(tmp_path, tiny_text_model):
    _trainer(tmp_path, tiny_text_model, "infonce", seed=0)
    assert not (tmp_path / "cache" / "fusion").exists()


def test_the_fusion_stage_setting_leaves_the_infonce_stage_cache_key_alone():
    from types import SimpleNamespace

    from hardneg.train.config import PretrainConfig
    from hardneg.train.pretrain import pretrain_key

    split = SimpleNamespace(
        caption_rows=torch.zeros(2, 1, dtype=torch.long), images=torch.zeros(2, 1), scenes=None
    )
    bank = SimpleNamespace(texts=["a red 3"])
    dual = torch.nn.Linear(2, 2)
    negatives = torch.zeros(2, 1, dtype=torch.long)
    keys = {
        pretrain_key(dual, split, bank, PretrainConfig(steps=5, fusion_steps=n), negatives)
        for n in (0, 1800)
    }
    assert len(keys) == 1
