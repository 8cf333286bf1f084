"""GradCache in the training engine (``optim.gradcache_chunk``): a step by chunks updates the
model exactly as the plain full-batch step (contrastive losses, BNS, NegCLIP extras; DDP),
and with one chunk the cross-modal terms too, dropout included."""

from __future__ import annotations

import pytest
import torch

from hardneg.train.config import config_from_dict
from hardneg.train.trainer import Trainer
from hardneg.train.validate import resolve_config
from tests.helpers.ddp import run_distributed
from tests.helpers.trainer_values import trainer_values

pytestmark = pytest.mark.usefixtures("one_thread")

NO_AUX = {"itm_weight": 0.0, "mlm_weight": 0.0, "cla_weight": 0.0}


def _step(tmp_path, text_model, method, chunk, **over):
    """Parameters after one SGD step on scenes 0..15 (and the logged loss)."""
    values = trainer_values(tmp_path, text_model, **over)
    values["optim"] = {**values["optim"], "name": "sgd", "lr": 0.5, "gradcache_chunk": chunk}
    trainer = Trainer(resolve_config(method, values))
    before = {k: v.clone() for k, v in trainer.model.trainable_state_dict().items()}
    logs = trainer.train_step(list(range(16)))
    after = trainer.model.trainable_state_dict()
    moved = sum(int(not torch.equal(after[k], before[k])) for k in after)
    temperature = float(trainer.loss_fn.scale().detach())
    return logs, after, moved, temperature


def _assert_same_step(plain, cached, atol=1e-5):
    (logs_p, params_p, moved, scale_p), (logs_c, params_c, _, scale_c) = plain, cached
    assert moved > 5  # the step really changed the model
    assert logs_c["contrastive"] == pytest.approx(logs_p["contrastive"], abs=1e-5)
    assert scale_c == pytest.approx(scale_p, abs=1e-6)  # the temperature's gradient too
    for key, value in params_p.items():
        assert torch.allclose(params_c[key], value, atol=atol), key


@pytest.mark.parametrize("method", ["infonce", "siglip", "ega", "bns_dual", "negclip"])
def test_gradcache_step_equals_the_plain_step(tmp_path, tiny_text_model, method):
    over = {"crossmodal": NO_AUX, "model": {"dropout": 0.0}}
    plain = _step(tmp_path / "p", tiny_text_model, method, 0, **over)
    cached = _step(tmp_path / "c", tiny_text_model, method, 4, **over)
    _assert_same_step(plain, cached)


@pytest.mark.parametrize(
    ("method", "negatives"),
    [("bacl_dual", "hardest"), ("bacl_dual", "sampled"), ("albef", "sampled")],
)
def test_one_chunk_equals_the_plain_step_with_crossmodal_terms_and_dropout(
    tmp_path, tiny_text_model, method, negatives
):
    terms = {"itm_weight": 1.0, "mlm_weight": 0.5, "itm_negatives": negatives}
    over = {"model": {"dropout": 0.1}, "crossmodal": terms}
    plain = _step(tmp_path / "p", tiny_text_model, method, 0, **over)
    cached = _step(tmp_path / "c", tiny_text_model, method, 16, **over)
    _assert_same_step(plain, cached)
    for key in ("itm", "mlm") + (("cla",) if method == "bacl_dual" else ()):
        assert cached[0][key] == pytest.approx(plain[0][key], abs=1e-5), key


def test_chunked_mlm_is_the_micro_batch_token_mean(tmp_path, tiny_text_model):
    """MLM's normaliser is the micro-batch's target count: the chunks' MLM terms add up to
    the plain step's (dropout off, so only the chunking differs)."""
    over = {"model": {"dropout": 0.0}, "crossmodal": {"mlm_weight": 0.5}}
    plain = _step(tmp_path / "p", tiny_text_model, "infonce", 0, **over)
    cached = _step(tmp_path / "c", tiny_text_model, "infonce", 4, **over)
    assert cached[0]["mlm"] == pytest.approx(plain[0]["mlm"], abs=1e-5)
    _assert_same_step(plain, cached)


def _ddp_worker(rank, world, config):
    trainer = Trainer(config_from_dict(config))
    trainer.train_step(list(range(16)))
    return trainer.model.trainable_state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["infonce", "bns_dual"])
def test_gradcache_under_two_ranks_equals_one_process(tmp_path, tiny_text_model, method):
    values = trainer_values(tmp_path, tiny_text_model, crossmodal=NO_AUX, model={"dropout": 0.0})
    values["optim"] = {**values["optim"], "name": "sgd", "lr": 0.5, "gradcache_chunk": 2}
    single = Trainer(resolve_config(method, values))
    single.train_step(list(range(16)))
    expected = single.model.trainable_state_dict()
    for params in run_distributed(_ddp_worker, 2, single.cfg.to_dict()):
        for key, value in expected.items():
            assert torch.allclose(params[key], value, atol=1e-5), key


def test_gradcache_with_a_batchnorm_tower_is_refused_naming_the_fix(tmp_path, tiny_text_model):
    """Chunks would normalise with their own batch statistics and update the running ones
    once per chunk: not the plain step. Refused before any step, naming BatchNorm and the fix."""
    values = trainer_values(tmp_path, tiny_text_model)
    values["model"] = {**values["model"], "image_tower": "conv"}
    values["optim"] = {**values["optim"], "gradcache_chunk": 4}
    with pytest.raises(ValueError, match=r"BatchNorm.*model.image_tower=vit"):
        Trainer(resolve_config("infonce", values)).train_step(list(range(16)))
