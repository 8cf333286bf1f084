"""NegCLIP's extra negative on DigitScenes is a rewrite of the caption the scene trains with.

NegCLIP (Yuksekgonul et al. 2023, §5) perturbs the training caption itself, so the positive and
its negative differ only in word order. Checked from the caption texts, independently of the
draw code: a swap keeps the positive's multiset of words (a different template or digit style
would not), a relation flip changes only relation words; the kinds are the configured ones;
other methods' draws (random numbers included) are unaffected.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from hardneg.train.trainer import Trainer, resolve_config
from tests.helpers.trainer_values import trainer_values

pytestmark = pytest.mark.usefixtures("one_thread")
RELATION_WORDS = {"left", "right", "above", "below", "top", "bottom"}


@pytest.fixture(scope="module")
def negclip(tmp_path_factory, tiny_text_model):
    tmp = tmp_path_factory.mktemp("negclip_pairs")
    return Trainer(resolve_config("negclip", trainer_values(tmp, tiny_text_model)))


def _kind_of(split, scene: int, text: str) -> tuple[str, int]:
    """(kind, source column) of the scene's hard negative whose caption is ``text``."""
    (hit,) = [h for h in split.scenes.hard_negatives[scene] if h.caption == text]
    return hit.kind, hit.source


def _draws(trainer: Trainer, n: int = 6):
    for step in range(n):
        idx = torch.tensor(next(trainer._batches()))
        yield idx, trainer.recipe.draw(idx, step).payload


def test_negative_rewrites_the_drawn_caption_itself(negclip):
    split, texts = negclip.train_split, negclip.bank.texts
    seen = Counter()
    for idx, p in _draws(negclip):
        for i, row, neg in zip(idx.tolist(), p["rows"].tolist(), p["hard_rows"].tolist()):
            if neg < 0:
                continue
            pos, bad = texts[row], texts[neg]
            kind, source = _kind_of(split, i, bad)
            seen[kind] += 1
            assert kind in {"swap_colours", "swap_digits", "flip_relation"}
            assert pos == split.scenes.captions[i][source]
            a, b = re.findall(r"\w+", pos.lower()), re.findall(r"\w+", bad.lower())
            assert len(a) == len(b) and pos != bad
            if kind == "flip_relation":  # only relation words change
                assert {w for w, v in zip(a, b) if w != v} <= RELATION_WORDS, (pos, bad)
            else:  # a swap: the same words in another order
                assert Counter(a) == Counter(b), (pos, bad)
    assert set(seen) == {"swap_colours", "swap_digits", "flip_relation"}, seen


def _trainer(negclip, tmp_path, text_model, method="negclip", **data) -> Trainer:
    values = trainer_values(tmp_path, text_model, data=data)
    values["data"]["cache_dir"] = negclip.cfg.data.cache_dir
    return Trainer(resolve_config(method, values))


def _outside(split, texts, idx, row) -> bool:
    """Whether bank row ``row`` is a full caption of a scene whose meaning is not in ``idx``."""
    owners = [i for i, caps in enumerate(split.scenes.captions) if texts[row] in caps]
    batch_ids = set(split.semantic_ids[idx].tolist())
    return bool(owners) and all(int(split.semantic_ids[o]) not in batch_ids for o in owners)


@pytest.mark.parametrize("kind", ["replace_digit", "swap_colours"])
def test_only_the_configured_kind_is_drawn(tmp_path, tiny_text_model, negclip, kind):
    """A kind ablation holds that kind only: a scene without it gets a caption of a scene
    outside the batch, never another kind."""
    trainer = _trainer(negclip, tmp_path, tiny_text_model, hard_negative_kinds=[kind])
    split, texts = trainer.train_split, trainer.bank.texts
    drawn = outside = 0
    for idx, p in _draws(trainer, 4):
        for i, neg in zip(idx.tolist(), p["hard_rows"].tolist()):
            negs = {h.caption: h.kind for h in split.scenes.hard_negatives[i]}
            if texts[neg] in negs:
                assert negs[texts[neg]] == kind
                drawn += 1
            else:
                assert kind not in negs.values() and _outside(split, texts, idx, neg)
                outside += 1
    assert drawn > 0


def test_a_partial_caption_keeps_its_row(tmp_path, tiny_text_model, negclip):
    """With the false-negative knob, a scene whose drawn caption is partial keeps it (there is
    no rewrite of it to pair with); its negative still rewrites one of its full captions."""
    trainer = _trainer(negclip, tmp_path, tiny_text_model, false_negative_percent=3.0)
    split, texts = trainer.train_split, trainer.bank.texts
    partial = 0
    for idx, p in _draws(trainer):
        for i, row, neg in zip(idx.tolist(), p["rows"].tolist(), p["hard_rows"].tolist()):
            if texts[row] in split.scenes.partial_captions[i]:
                partial += 1
                assert _kind_of(split, i, texts[neg])[0] in negclip.cfg.data.hard_negative_kinds
    assert partial > 0


def test_other_methods_draw_the_same_captions_and_random_numbers(
    tmp_path, tiny_text_model, negclip
):
    """InfoNCE's caption rows do not depend on the kinds (no pairing without NegCLIP), while
    its (unused) negatives do; the generator ends in the same state: no random stream moved."""
    runs = []
    for kinds in (["swap_colours"], ["replace_digit", "change_colour", "flip_relation"]):
        trainer = _trainer(
            negclip, tmp_path, tiny_text_model, "infonce", hard_negative_kinds=kinds,
            encode_all=True,
        )  # fmt: skip
        draws = [p for _, p in _draws(trainer, 3)]
        runs.append((draws, trainer.recipe.caption_gen.get_state()))
    (a, state_a), (b, state_b) = runs
    assert all(torch.equal(x["rows"], y["rows"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["hard_rows"], y["hard_rows"]) for x, y in zip(a, b))
    assert torch.equal(state_a, state_b)


def test_empty_or_unknown_kinds_are_refused_before_any_data(tmp_path, tiny_text_model):
    for kinds, match in (([], " is empty"), (["swap_nouns"], r"\[0\]='swap_nouns' is unknown")):
        values = trainer_values(tmp_path, tiny_text_model, data={"hard_negative_kinds": kinds})
        with pytest.raises(ValueError, match=rf"data\.hard_negative_kinds{match}"):
            resolve_config("negclip", values)


def test_a_scene_without_hard_negatives_gets_a_caption_of_a_scene_outside_the_batch(
    tmp_path, tiny_text_model, negclip
):
    trainer = _trainer(negclip, tmp_path, tiny_text_model)
    split, texts = trainer.train_split, trainer.bank.texts
    split.hard_negative_rows[::2] = -1  # every other scene has none
    checked = 0
    for idx, p in _draws(trainer, 3):
        for i, neg in zip(idx.tolist(), p["hard_rows"].tolist()):
            if i % 2 == 0:
                assert _outside(split, texts, idx, neg)  # true of no scene in the batch
                checked += 1
    assert checked > 0
