"""Learning signals of the trainer that only a correct step has.

- FALCON's reward is the MLM-loss gain of *this* step on *this* batch: with a learning rate of
  0 the model never changes, so every reward is exactly 0 (before, update and after must share
  the same captions, hard negatives and MLM mask).
- The MLM pass sees no trace of a masked word: two captions that differ only in the masked word
  give the cross-modal head identical inputs at every position, and after a short run the MLM
  loss is lower with the true image than with a shuffled one (the target is read off the image).
- GRIT/FALCON's embedding store is filled from the training forward (no extra forward): after a
  step it holds exactly the normalised features the loss saw.
"""

from __future__ import annotations

import pytest
import torch

from hardneg.data import COLOURS
from hardneg.train.hooks import FalconReward
from hardneg.train.trainer import Trainer, resolve_config
from tests.helpers.trainer_values import trainer_values

pytestmark = pytest.mark.usefixtures("one_thread")


def test_falcon_reward_is_exactly_zero_when_the_model_does_not_change(tmp_path, tiny_text_model):
    # lr=0: AdamW changes nothing (decoupled decay is lr·wd·θ); the ViT tower has no BatchNorm
    values = trainer_values(
        tmp_path,
        tiny_text_model,
        steps=5,
        optim={"lr": 0.0},
        batch_sampler={"falcon_update_interval": 2, "search_space_size": 64},
    )
    history = Trainer(resolve_config("falcon", values)).fit()
    rewards = [h["falcon_reward"] for h in history]
    assert len(rewards) == 5
    assert max(abs(r) for r in rewards) <= 1e-6, rewards


def test_falcon_reward_reusing_the_training_loss_is_exactly_zero_when_nothing_changes(
    tmp_path, tiny_text_model
):
    # no dropout: "before" is the training forward's own MLM loss (one MLM forward saved)
    values = trainer_values(
        tmp_path,
        tiny_text_model,
        steps=4,
        optim={"lr": 0.0},
        model={"dropout": 0.0},
        batch_sampler={"search_space_size": 64},
    )
    trainer = Trainer(resolve_config("falcon", values))
    (reward,) = [h for h in trainer.hooks if isinstance(h, FalconReward)]
    assert reward.reuse
    history = trainer.fit()
    assert [h["falcon_reward"] for h in history] == [0.0] * 4


def test_falcon_reward_with_dropout_measures_both_losses_in_eval_mode(tmp_path, tiny_text_model):
    trainer = Trainer(resolve_config("falcon", trainer_values(tmp_path, tiny_text_model)))
    (reward,) = [h for h in trainer.hooks if isinstance(h, FalconReward)]
    assert not reward.reuse  # dropout 0.1: the training loss is not the eval-mode loss


def test_falcon_reward_is_nonzero_when_the_model_learns(tmp_path, tiny_text_model):
    values = trainer_values(
        tmp_path,
        tiny_text_model,
        steps=4,
        optim={"lr": 3e-3, "warmup_steps": 0},
        batch_sampler={"falcon_update_interval": 2, "search_space_size": 64},
    )
    history = Trainer(resolve_config("falcon", values)).fit()
    assert max(abs(h["falcon_reward"]) for h in history) > 1e-4


def _caption_pair(tower):
    """Two captions that differ in one word, and the token position of that word."""
    a, b = "a red 3 to the left of a blue 7", "a green 3 to the left of a blue 7"
    ids = tower.tokenize([a, b])["input_ids"]
    differ = (ids[0] != ids[1]).nonzero().flatten().tolist()
    assert len(differ) == 1, "the colour words must be single tokens at the same position"
    return [a, b], differ[0]


def test_masked_word_leaves_no_trace_in_the_crossmodal_inputs(tmp_path, tiny_text_model):
    trainer = Trainer(resolve_config("infonce", trainer_values(tmp_path, tiny_text_model)))
    texts, position = _caption_pair(trainer.tower)
    text = trainer.tower.encode_text(texts)
    chosen = torch.zeros_like(text.mask)
    chosen[:, position] = True
    states = trainer.model.crossmodal_text(text).tokens
    masked = trainer.model.crossmodal.apply_mask(states, chosen)
    assert masked.shape[:2] == text.mask.shape
    assert torch.equal(masked[0], masked[1])
    # without the mask the two captions do differ (the test is not vacuous)
    assert not torch.equal(states[0], states[1])


@pytest.mark.slow
def test_mlm_loss_reads_the_masked_word_off_the_image(tmp_path, tiny_text_model):
    # colour words are the targets only the image can tell (colours are drawn at random)
    values = trainer_values(
        tmp_path,
        tiny_text_model,
        steps=120,
        batch_size=64,
        model={
            "image_tower": "conv",
            "image_width": 64,
            "embed_dim": 64,
            "crossmodal_dim": 64,
            "dropout": 0.0,
        },
        optim={"lr": 3e-3, "warmup_steps": 20},
        crossmodal={"mlm_weight": 0.5},  # (infonce trains no MLM by default)
    )
    trainer = Trainer(resolve_config("infonce", values))
    trainer.fit()
    trainer.model.eval()
    split = trainer.splits["test"]
    idx = torch.arange(96)
    text = trainer.bank.take(split.caption_rows[idx, 0])
    colour_ids = torch.tensor([trainer.tower.tokenize([c])["input_ids"][0, 1] for c in COLOURS])
    chosen = torch.isin(text.input_ids, colour_ids) & text.mask
    assert int(chosen.sum()) >= 96
    cross = trainer.model.crossmodal
    with torch.no_grad():
        _, image = trainer.model.dual.encode_image(split.image_batch(idx, "cpu"))
        inputs = trainer.model.crossmodal_text(text)
        true = float(cross.mlm_loss(inputs, image.tokens, chosen=chosen))
        shuffled = torch.roll(image.tokens, shifts=1, dims=0)
        wrong = float(cross.mlm_loss(inputs, shuffled, chosen=chosen))
    assert true < wrong - 0.1, (true, wrong)


def test_store_holds_the_features_of_the_training_forward(tmp_path, tiny_text_model):
    values = trainer_values(
        tmp_path, tiny_text_model, steps=1, batch_sampler={"search_space_size": 64}
    )
    trainer = Trainer(resolve_config("grit", values))
    seen = {}
    prepare = trainer.loss_fn.prepare

    def spy(*args, **kwargs):
        pairs = prepare(*args, **kwargs)
        seen["image"], seen["text"] = pairs.all_image.detach(), pairs.all_text.detach()
        return pairs

    trainer.loss_fn.prepare = spy
    batch = list(range(16))
    trainer.train_step(batch)
    store = trainer.sampler.store
    assert torch.allclose(store.image[batch], seen["image"], atol=1e-6)
    assert torch.allclose(store.text[batch], seen["text"], atol=1e-6)
    assert int(store.filled.sum()) == 16


def test_non_finite_loss_names_the_non_finite_input(tmp_path, tiny_text_model):
    trainer = Trainer(resolve_config("infonce", trainer_values(tmp_path, tiny_text_model)))
    trainer.bank.pooled[trainer.train_split.caption_rows[:16]] = float("nan")
    with pytest.raises(FloatingPointError, match=r"text_pooled has \d+ non-finite value"):
        trainer.train_step(list(range(16)))


def test_gradients_that_overflow_at_every_step_stop_the_run(tmp_path, tiny_text_model):
    trainer = Trainer(resolve_config("infonce", trainer_values(tmp_path, tiny_text_model)))
    scale = trainer.loss_fn.logit_scale

    def poison(grad):
        return torch.full_like(grad, float("inf"))

    scale.register_hook(poison)
    before = {k: v.clone() for k, v in trainer.model.trainable_state_dict().items()}
    with pytest.raises(FloatingPointError, match="gradient norm"):
        trainer.train_step(list(range(16)))
    # no scaler on CPU: the step is refused before the optimizer applies inf
    after = trainer.model.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_max_grad_norm_must_be_positive():
    with pytest.raises(ValueError, match=r"optim\.max_grad_norm"):
        resolve_config("infonce", {"optim": {"max_grad_norm": 0.0}})


def test_pretraining_stage_is_cached_and_identical_whichever_run_computed_it(
    tmp_path, tiny_text_model
):
    over = {
        "steps": 2,
        "model": {"head": "attention", "freeze_image_tower": True, "dropout": 0.0},
        "pretrain": {"steps": 4, "batch_size": 16, "negative_kinds": ["replace_digit"]},
    }
    first = Trainer(resolve_config("infonce", trainer_values(tmp_path, tiny_text_model, **over)))
    assert len(list((tmp_path / "cache" / "pretrain").glob("*.pt"))) == 1
    over_seed = {**over, "seed": 5, "out_dir": str(tmp_path / "other")}
    second = Trainer(
        resolve_config("negclip", trainer_values(tmp_path, tiny_text_model, **over_seed))
    )
    # one starting point: another method and run seed read the same pre-trained dual encoder
    a, b = first.model.dual.state_dict(), second.model.dual.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the frozen tower's features replace the images, and it gets no gradient
    assert first.train_split.image_features is not None
    assert not any(p.requires_grad for p in first.model.dual.image_tower.parameters())
    before = {k: v.clone() for k, v in first.model.dual.image_tower.state_dict().items()}
    first.fit()
    after = first.model.dual.image_tower.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the stage moved the dual encoder away from its initial weights
    fresh = Trainer(
        resolve_config(
            "infonce",
            trainer_values(tmp_path, tiny_text_model, steps=1, out_dir=str(tmp_path / "fresh")),
        )
    )
    assert fresh.pretrain_loss is None


def test_frozen_tower_without_pretraining_is_refused():
    with pytest.raises(ValueError, match=r"freeze_image_tower needs pretrain\.steps"):
        resolve_config("infonce", {"model": {"freeze_image_tower": True}})
    with pytest.raises(ValueError, match=r"pretrain\.negative_kinds\[0\]='nope' is unknown"):
        resolve_config("infonce", {"pretrain": {"steps": 5, "negative_kinds": ["nope"]}})


def test_pretraining_jitter_keeps_every_spatial_relation():
    from hardneg.train.stage import jitter

    # two blobs in the left and right thirds of a 48-px canvas, 200 random jitters
    images = torch.zeros(200, 3, 48, 48)
    images[:, 0, 20:28, 4:12] = 1.0  # red, left
    images[:, 2, 20:28, 36:44] = 1.0  # blue, right
    out = jitter(images, torch.Generator().manual_seed(0))
    cols = torch.arange(48.0)

    def centre(channel):
        mass = out[:, channel].sum(dim=1)  # (n, W)
        return (mass * cols).sum(1) / mass.sum(1)

    red, blue = centre(0), centre(2)
    assert bool((red < blue - 20).all())  # left stays left, by a wide margin
    moved = (red - 7.5).abs()
    assert float(moved.max()) < 6.0 and float(moved.mean()) > 0.3  # it moves, a little
    assert out.shape == images.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
