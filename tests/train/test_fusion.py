"""ALBEF's fusion (``model.crossmodal_input: heads``): ITC, ITM and MLM train shared parameters,
and the masked word still leaves no trace in the MLM inputs."""

from __future__ import annotations

import pytest
import torch

from hardneg.models.inputs import Texts
from hardneg.train.trainer import Trainer, resolve_config
from tests.helpers.trainer_values import trainer_values

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a red 3 to the left of a blue 7", "a green 3 to the left of a blue 7"]


@pytest.fixture(scope="module")
def albef(tmp_path_factory, tiny_text_model):
    tmp = tmp_path_factory.mktemp("albef")
    trainer = Trainer(resolve_config("albef", trainer_values(tmp, tiny_text_model)))
    trainer.model.eval()
    return trainer


def _two_captions(trainer):
    text = trainer.tower.encode_text(CAPTIONS)
    differ = (text.input_ids[0] != text.input_ids[1]).nonzero().flatten().tolist()
    assert len(differ) == 1, "the colour words must be single tokens at the same position"
    chosen = torch.zeros_like(text.mask)
    chosen[:, differ[0]] = True
    return text, chosen


def _images(trainer, n: int):
    split = trainer.recipe.train_split
    return trainer.model.encode_images(split.images_of(torch.arange(n), "cpu"))[1]


def test_captions_that_differ_only_in_the_masked_word_give_identical_mlm_inputs(albef):
    text, chosen = _two_captions(albef)
    seen = []
    hook = albef.model.crossmodal.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    image = _images(albef, 1).select(torch.zeros(2, dtype=torch.long))  # one image for both
    try:
        with torch.no_grad():
            albef.model.mlm_loss(text, image, chosen)
    finally:
        hook.remove()
    inputs = seen[0]
    assert torch.equal(inputs[0], inputs[1])
    # not vacuous: unmasked, the head's states of the two captions differ (contextual states)
    unmasked = albef.model.crossmodal_text(text).tokens
    assert not torch.allclose(unmasked[0], unmasked[1])


def test_cached_masked_variants_equal_the_tower_on_masked_ids(albef):
    variants = albef.recipe.masked
    assert variants is not None and variants.variants == albef.cfg.model.mlm_variants
    bank = albef.recipe.bank
    rows = albef.recipe.train_split.caption_rows[:3, 0]
    chosen, masked_rows = variants.draw(rows, torch.Generator().manual_seed(0))
    cached = variants.bank.take(masked_rows)
    original = bank.take(rows)
    length = original.mask.shape[1]
    mask_id = albef.tower.mask_token_id
    expected_ids = original.input_ids.masked_fill(chosen[:, :length], mask_id)
    assert torch.equal(cached.input_ids, expected_ids)
    assert chosen.any(dim=1).all()  # every caption has a target
    special = torch.tensor(albef.tower.special_token_ids)
    assert not torch.isin(original.input_ids[chosen[:, :length]], special).any()
    live = albef.tower(expected_ids, original.mask.long()).tokens
    torch.testing.assert_close(cached.tokens, live, atol=2e-3, rtol=2e-3)  # fp16 cache


def _mlm_loss(trainer) -> float:
    text, chosen = _two_captions(trainer)
    with torch.no_grad():
        return float(trainer.model.mlm_loss(text, _images(trainer, 2), chosen))


@pytest.mark.parametrize("head", ["text_head", "image_head"])
def test_mlm_loss_changes_when_only_an_itc_trained_head_changes(albef, head):
    before = _mlm_loss(albef)
    params = list(getattr(albef.model.dual, head).input.parameters())
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                p.add_(0.05 * torch.randn_like(p))
        assert abs(_mlm_loss(albef) - before) > 1e-4
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    assert _mlm_loss(albef) == before


def test_without_fusion_the_mlm_loss_ignores_the_heads(tmp_path, tiny_text_model):
    # the control: over the towers' tokens, no ITC-trained parameter enters MLM
    values = trainer_values(tmp_path, tiny_text_model, model={"head": "attention"})
    trainer = Trainer(resolve_config("infonce", values))
    trainer.model.eval()
    before = _mlm_loss(trainer)
    with torch.no_grad():
        for p in trainer.model.dual.text_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert _mlm_loss(trainer) == before


def test_itm_gradient_reaches_both_heads(albef):
    text, _ = _two_captions(albef)
    image = _images(albef, 2)
    albef.model.zero_grad()
    albef.model.match(text, image).itm_logit.sum().backward()
    for head in (albef.model.dual.text_head, albef.model.dual.image_head):
        grad = head.input[0].weight.grad
        assert grad is not None and grad.abs().sum() > 0
    albef.model.zero_grad()


def test_mlm_without_cached_variants_encodes_the_masked_ids(albef):
    text, chosen = _two_captions(albef)
    image = _images(albef, 2)
    masked = Texts(text.input_ids.masked_fill(chosen, albef.tower.mask_token_id), text.mask)
    with torch.no_grad():
        live = albef.model.mlm_loss(text, image, chosen)
        given = albef.model.mlm_loss(text, image, chosen, masked=masked)
    assert torch.equal(live, given)


def test_fusion_needs_attention_heads(tmp_path, tiny_text_model):
    values = trainer_values(tmp_path, tiny_text_model, model={"head": "linear"})
    values["model"]["crossmodal_input"] = "heads"
    with pytest.raises(ValueError, match=r"model\.head=attention"):
        resolve_config("infonce", values)
