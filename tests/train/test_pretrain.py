"""The pre-training stage's object-grounded auxiliary loss (``pretrain.object_loss_weight``).

- Off by default, and then the stage is today's: its cache key is the one a config without the
  field had (existing caches stay valid); with a weight the key changes.
- Box → patches: an object's pooled token is the mean of exactly the patches its box overlaps
  (hand-computed on a 6×6 grid of a 48-px image), so the gradient reaches only those tokens; the
  boxes follow the ink through the stage's affine jitter.
- Learning signal: a few stage steps lower the auxiliary CE from its chance level, and the CE's
  gradient reaches the image tower's first layer.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from hardneg.train.config import PretrainConfig
from hardneg.train.grounding import ObjectHeads, object_loss, object_patch_masks, warp_boxes
from hardneg.train.pretrain import pretrain_dual_encoder, pretrain_key
from hardneg.train.stage import jitter_theta, object_negative_rows, warp
from hardneg.train.trainer import Trainer, resolve_config
from tests.helpers.trainer_values import trainer_values

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclasses.dataclass
class _ConfigBeforeTheObjectLoss:
    """PretrainConfig's fields before ``object_loss_weight`` existed (the cached stages' keys)."""

    steps: int = 0
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    negative_kinds: list[str] = dataclasses.field(default_factory=list)
    augment: bool = False


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_text_model):
    """The tiny preset's dual encoder (untrained), training split and text bank."""
    tmp = tmp_path_factory.mktemp("ground")
    values = trainer_values(tmp, tiny_text_model, steps=1)
    values["data"] = {**values["data"], "encode_all": True}  # the hard negatives are in the bank
    values["model"] = {**values["model"], "image_tower": "conv"}  # the compositional preset's
    trainer = Trainer(resolve_config("infonce", values))
    return trainer.model.dual, trainer.train_split, trainer.bank


def test_default_stage_keeps_the_cache_key_it_had_before_the_object_loss(tiny):
    dual, split, bank = tiny
    assert PretrainConfig().object_loss_weight == 0.0
    settings = {"steps": 4, "batch_size": 16, "negative_kinds": ["replace_digit"], "augment": True}
    negatives = object_negative_rows(split, bank, ("replace_digit",))
    today = pretrain_key(dual, split, bank, _ConfigBeforeTheObjectLoss(**settings), negatives)
    assert pretrain_key(dual, split, bank, PretrainConfig(**settings), negatives) == today
    grounded = PretrainConfig(**settings, object_loss_weight=1.0)
    assert pretrain_key(dual, split, bank, grounded, negatives) != today


@pytest.mark.parametrize(
    "field, value", [("weight_decay", 0.1), ("max_grad_norm", 1.0), ("warmup_fraction", 0.1)]
)
def test_the_stage_optimiser_values_are_keyed_only_away_from_their_defaults(tiny, field, value):
    """The optimiser values once hard-coded in the stage (AdamW decay 0.05, clip 5.0, 5 %
    warm-up) are config fields now: at those values the key is the one it was."""
    dual, split, bank = tiny
    negatives = object_negative_rows(split, bank, ())
    before = pretrain_key(dual, split, bank, _ConfigBeforeTheObjectLoss(steps=4), negatives)
    assert pretrain_key(dual, split, bank, PretrainConfig(steps=4), negatives) == before
    changed = PretrainConfig(steps=4, **{field: value})
    assert pretrain_key(dual, split, bank, changed, negatives) != before


def test_negative_weight_is_refused_before_the_stage_runs(tiny):
    dual, split, bank = tiny
    with pytest.raises(ValueError, match=r"pretrain\.object_loss_weight must be >= 0"):
        pretrain_dual_encoder(
            dual, split, bank, PretrainConfig(steps=1, object_loss_weight=-1.0), None
        )


def test_an_object_pools_exactly_the_patches_its_box_overlaps():
    # 48-px image, 6×6 grid: patch (r, c) covers x ∈ [8c, 8c+8), y ∈ [8r, 8r+8)
    boxes = torch.tensor([[[0, 0, 16, 8], [41, 40, 47, 48], [-1, -1, -1, -1]]])
    present = torch.tensor([[True, True, False]])
    masks = object_patch_masks(boxes, present, (48, 48), (6, 6))
    assert masks[0, 0].nonzero().flatten().tolist() == [0, 1]
    assert masks[0, 1].nonzero().flatten().tolist() == [35]
    assert not masks[0, 2].any()
    tokens = torch.randn(1, 36, 8, requires_grad=True)
    heads = ObjectHeads(8)
    loss = object_loss(heads, tokens, masks, torch.tensor([[3, 7, -1]]), torch.tensor([[0, 5, -1]]))
    loss.backward()
    touched = (tokens.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert touched == [0, 1, 35]
    # object 0's pooled token is the mean of patches 0 and 1: same loss as feeding it directly
    pooled = torch.stack([tokens[0, :2].mean(0), tokens[0, 35]])
    digit, colour = heads(pooled)
    expected = torch.nn.functional.cross_entropy(digit, torch.tensor([3, 7]))
    expected = expected + torch.nn.functional.cross_entropy(colour, torch.tensor([0, 5]))
    assert torch.allclose(loss, expected)


def test_boxes_follow_the_ink_through_the_jitter():
    images = torch.zeros(200, 3, 48, 48)
    images[:, :, 8:24, 4:14] = 1.0  # ink box x ∈ [4, 14), y ∈ [8, 24)
    theta = jitter_theta(200, torch.Generator().manual_seed(0))
    ink = warp(images, theta)[:, 0] > 0.5
    rows, cols = ink.any(2), ink.any(1)  # (n, H), (n, W)
    idx = torch.arange(48)
    x0 = torch.where(cols, idx, 48).amin(1)
    x1 = torch.where(cols, idx + 1, 0).amax(1)
    y0 = torch.where(rows, idx, 48).amin(1)
    y1 = torch.where(rows, idx + 1, 0).amax(1)
    moved = warp_boxes(torch.tensor([[[4, 8, 14, 24]]]).expand(200, 1, 4), theta, (48, 48))[:, 0]
    # the moved box bounds the moved ink (within a pixel of resampling), rotation at most
    # widens it by sin 8° · side ≈ 2.2 px
    assert bool((moved[:, 0] <= x0 + 1).all() and (moved[:, 2] >= x1 - 1).all())
    assert bool((moved[:, 1] <= y0 + 1).all() and (moved[:, 3] >= y1 - 1).all())
    assert float((moved[:, 0] - x0.float()).abs().max()) < 4.0
    assert float((moved[:, 0] - 4).abs().mean()) > 0.3  # it did move


def test_object_loss_gradient_reaches_the_image_tower(tiny):
    dual, split, _ = tiny
    tower = dual.image_tower
    out = tower(split.image_batch(torch.arange(8), "cpu"))
    present = torch.as_tensor(split.scenes.digits[:8]) >= 0
    size = (split.images.shape[-1], split.images.shape[-2])
    masks = object_patch_masks(torch.as_tensor(split.scenes.boxes[:8]), present, size, out.grid)
    digits, colours = (torch.as_tensor(a[:8]) for a in (split.scenes.digits, split.scenes.colours))
    tower.zero_grad(set_to_none=True)
    object_loss(ObjectHeads(tower.token_dim), out.tokens, masks, digits, colours).backward()
    first = next(p for p in tower.stem.parameters())
    assert first.grad is not None and float(first.grad.abs().sum()) > 0


@pytest.mark.slow
def test_a_few_grounded_stage_steps_lower_the_object_loss(tiny):
    dual, split, bank = tiny
    before = {k: v.clone() for k, v in dual.state_dict().items()}
    config = PretrainConfig(steps=60, batch_size=32, lr=3e-3, augment=True, object_loss_weight=1.0)
    with torch.random.fork_rng(devices=[]):
        result = pretrain_dual_encoder(dual, split, bank, config, None, progress=False)
    losses = result["object_losses"]
    assert len(losses) == 60 and not result["cached"]
    chance = math.log(10) + math.log(6)  # digit CE + colour CE of a uniform guess
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert first > 0.7 * chance, losses[:3]
    assert last < first - 1.0, (first, last)  # ≈ 4.2 → 2.5 in 60 steps
    after = dual.state_dict()
    tower_keys = [k for k in before if k.startswith("image_tower.")]
    assert any(not torch.equal(before[k], after[k]) for k in tower_keys)
    dual.load_state_dict(before)  # the module-scoped fixture stays untrained


def test_batched_patch_masks_equal_the_per_box_masks_of_the_localisation_metric():
    """Warped boxes are fractional, touch the borders or are clipped to nothing: every mask
    equals :func:`box_to_patch_mask` of its box (the AEL metric's own cells)."""
    from hardneg.eval.localisation import box_to_patch_mask

    g = torch.Generator().manual_seed(0)
    lo = torch.rand(64, 3, 2, generator=g) * 48
    hi = (lo + torch.rand(64, 3, 2, generator=g) * 30).clamp(max=48)
    boxes = torch.cat([lo, hi], -1)[..., [0, 1, 2, 3]]
    boxes[0, 0] = torch.tensor([10.0, 10.0, 10.0, 20.0])  # clipped to nothing
    boxes[1, 1] = torch.tensor([0.0, 0.0, 48.0, 48.0])
    boxes[2, 2] = torch.tensor([8.0, 8.0, 16.0, 16.0])  # exactly one cell, edges touching
    present = torch.rand(64, 3, generator=g) > 0.2
    for size, grid in (((48, 48), (6, 6)), ((48, 40), (4, 5))):
        b = boxes.clone()
        b[..., 1::2] = b[..., 1::2].clamp(max=size[1])
        masks = object_patch_masks(b, present, size, grid)
        for i in range(64):
            for k in range(3):
                x0, y0, x1, y1 = b[i, k].tolist()
                if present[i, k] and x1 > x0 and y1 > y0:
                    expected = box_to_patch_mask((x0, y0, x1, y1), size, grid)
                else:
                    expected = torch.zeros(grid[0] * grid[1], dtype=torch.bool)
                assert torch.equal(masks[i, k], expected), (i, k, b[i, k])
