"""False negatives at a controlled rate: partial captions ("a red 3") are true of every scene
holding that object, and ``data.false_negative_percent`` sets how often training draws them.

The false negatives are counted here independently of the library's meanings and relevance:
each drawn caption is parsed back from its text and checked against the other scenes'
annotations.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
import torch

from hardneg.data.digitscenes import SceneSplit
from hardneg.data.digitscenes.false_negatives import false_negative_pair_rates
from hardneg.data.digitscenes.semantics import COLOURS, semantic_id
from hardneg.data.digitscenes.tensors import PARTIAL_MEANING_OFFSET, SplitTensors
from hardneg.models.minilm import MiniLMTextTower
from hardneg.train.data import load_run_data
from hardneg.train.trainer import Trainer, resolve_config
from tests.helpers.captions import NUMBER, annotation, parse
from tests.helpers.trainer_values import trainer_values

pytestmark = pytest.mark.usefixtures("one_thread")

B = 64
_PARTIAL = re.compile(
    r"(?:a|there is a|the scene shows a|somewhere there is a) (\w+) (\w+)(?: is in the picture)?"
)


def _hand_split(objects: list[list[tuple[int, int]]], relations: list[str]) -> SceneSplit:
    """A SceneSplit of blank images with the given (digit, colour) objects in reading order."""
    n = len(objects)
    digits = np.full((n, 3), -1, dtype=np.int64)
    colours = np.full((n, 3), -1, dtype=np.int64)
    for i, objs in enumerate(objects):
        for k, (d, c) in enumerate(objs):
            digits[i, k], colours[i, k] = d, c
    ids = [semantic_id(r, [d for d, _ in o], [c for _, c in o]) for r, o in zip(relations, objects)]
    return SceneSplit(
        name="train",
        images=np.zeros((n, 24, 24, 3), dtype=np.uint8),
        captions=[[f"scene {i}"] for i in range(n)],
        partial_captions=[[f"part {i} {k}" for k in range(len(o))] for i, o in enumerate(objects)],
        semantic_ids=np.asarray(ids, dtype=np.int64),
        digits=digits,
        colours=colours,
        boxes=np.zeros((n, 3, 4), dtype=np.int64),
        relations=relations,
        hard_negatives=[[] for _ in range(n)],
        scan_indices=np.zeros((n, 3), dtype=np.int64),
    )


def test_relevance_partial_caption_is_true_of_exactly_the_scenes_holding_its_object():
    red, green, blue = COLOURS.index("red"), COLOURS.index("green"), COLOURS.index("blue")
    scenes = _hand_split(
        [
            [(3, red), (7, blue)],  # 0: a red 3 left of a blue 7
            [(7, blue), (3, red)],  # 1: same objects, other order and relation
            [(3, green), (5, blue), (3, red)],  # 2: holds a red 3 (last), no blue 7
            [(7, red), (3, blue)],  # 3: digits and colours swapped: neither object
            [(3, red), (7, blue)],  # 4: the same description as scene 0
        ],
        ["left_of", "above", "left_of", "left_of", "left_of"],
    )
    n = len(scenes)
    partial = torch.tensor([[10, 11, -1], [12, 13, -1], [14, 15, 16], [17, 18, -1], [19, 20, -1]])
    split = SplitTensors(
        images=torch.zeros(n, 3, 24, 24, dtype=torch.uint8),
        caption_rows=torch.arange(n)[:, None],
        semantic_ids=torch.from_numpy(scenes.semantic_ids),
        hard_negative_rows=torch.full((n, 1), -1),
        scenes=scenes,
        partial_rows=partial,
    )
    meanings = split.caption_meanings()
    red3 = PARTIAL_MEANING_OFFSET + 3 * len(COLOURS) + red
    blue7 = PARTIAL_MEANING_OFFSET + 7 * len(COLOURS) + blue
    assert meanings[0].tolist() == [scenes.semantic_ids[0], red3, blue7, -1]
    assert meanings[2, 3] == red3 and meanings[1, 1:3].tolist() == [blue7, red3]
    everyone = torch.arange(n)
    rel = split.relevance(everyone, torch.tensor([red3, blue7, int(scenes.semantic_ids[0])]))
    assert rel[:, 0].tolist() == [True, True, True, False, True]  # "a red 3"
    assert rel[:, 1].tolist() == [True, True, False, False, True]  # "a blue 7"
    assert rel[:, 2].tolist() == [True, False, False, False, True]  # the full description
    # the partial-caption rows are the objects' own, in reading order
    assert split.partial_rows[2].tolist() == [14, 15, 16]


@functools.cache
def _claim(text: str) -> tuple[bool, object]:
    """What a caption says: (True, (digit, colour)) for a partial caption, else (False,
    (relation, objects)) parsed from the full caption."""
    if m := _PARTIAL.fullmatch(text):
        return True, (NUMBER[m[2]], COLOURS.index(m[1]))
    return False, parse(text)


def _caption_truth(text: str, scene_objects: set[tuple[int, int]], scene_annotation) -> bool:
    """Is caption ``text`` true of a scene (its object set and (relation, objects))?"""
    partial, claim = _claim(text)
    return claim in scene_objects if partial else claim == scene_annotation


def _independent_fn_rate(trainer: Trainer, idx: torch.Tensor, rows: torch.Tensor) -> float:
    """% of ordered pairs (a, b), a ≠ b, whose drawn caption a is true of scene b."""
    scenes = trainer.train_split.scenes
    ann = [annotation(scenes, int(i)) for i in idx]
    objs = [set(a[1]) for a in ann]
    texts = [trainer.bank.texts[int(r)] for r in rows]
    hits = sum(
        _caption_truth(texts[a], objs[b], ann[b])
        for a in range(len(idx))
        for b in range(len(idx))
        if a != b
    )
    return 100.0 * hits / (len(idx) * (len(idx) - 1))


@pytest.fixture(scope="module")
def run_data(tmp_path_factory, tiny_text_model):
    tmp = tmp_path_factory.mktemp("fn_knob")
    values = trainer_values(tmp, tiny_text_model, batch_size=B)
    cfg = resolve_config("infonce", values)
    tower = MiniLMTextTower(tiny_text_model, max_length=cfg.data.max_text_len)
    return tmp, tower, load_run_data(cfg.data, tower, progress=False)


def _trainer(run_data, tiny_text_model, percent: float, **over) -> Trainer:
    tmp, tower, data = run_data
    values = trainer_values(
        tmp, tiny_text_model, batch_size=B, data={"false_negative_percent": percent}, **over
    )
    return Trainer(resolve_config("infonce", values), tower=tower, data=data)


@pytest.mark.parametrize("percent", [0.0, 1.0, 2.0])
def test_random_batches_hold_the_configured_share_of_false_negatives(
    run_data, tiny_text_model, percent
):
    trainer = _trainer(run_data, tiny_text_model, percent)
    split = trainer.train_split
    assert split.partial_rows.shape == (len(split), 3)
    full_rate, _ = false_negative_pair_rates(split)
    batches = trainer._batches()
    n_batches, measured, logged, partial_drawn = 300, [], [], 0
    full_rows = set(split.caption_rows.flatten().tolist())
    for _ in range(n_batches):
        idx = torch.tensor(next(batches))
        draw = trainer.recipe.draw(idx, trainer.step)
        measured.append(_independent_fn_rate(trainer, idx, draw.payload["rows"]))
        logged.append(draw.fn_rate)
        partial_drawn += sum(int(r) not in full_rows for r in draw.payload["rows"])
    # the figure the trainer logs is the count of false negatives, exactly
    np.testing.assert_allclose(logged, measured, rtol=0, atol=1e-9)
    mean = float(np.mean(measured))
    # a caption's share of false negatives among its B − 1 pairs lies in [0, 1], so its variance
    # is at most p(1 − p): a binomial bound over the n_batches·B drawn captions, ±4 sd
    p = percent / 100.0 if percent else full_rate
    tol = 100.0 * 4.0 * math.sqrt(p * (1.0 - p) / (n_batches * B))
    assert abs(mean - 100.0 * p) <= tol, (mean, percent, tol)
    if percent == 0:
        assert partial_drawn == 0, "target 0 must draw full captions only"


def test_zero_target_draws_exactly_what_the_trainer_drew_before(run_data, tiny_text_model):
    trainer = _trainer(run_data, tiny_text_model, 0.0)
    split = trainer.train_split
    reference = torch.Generator().manual_seed(trainer.cfg.seed + 1)
    for _ in range(5):
        idx = torch.tensor(next(trainer._batches()))
        draw = trainer.recipe.draw(idx, trainer.step)
        n_caps = split.caption_rows.shape[1]
        choice = torch.randint(0, n_caps, (len(idx),), generator=reference)
        assert torch.equal(draw.payload["rows"], split.caption_rows[idx, choice])
        # only NegCLIP's kinds are drawn (each row's kind looked up by its caption text); the
        # random numbers are those of every kind
        all_rows = split.hard_negative_rows[idx]
        hard = all_rows.clone()
        for r, i in enumerate(idx.tolist()):
            kind_of = {h.caption: h.kind for h in split.scenes.hard_negatives[i]}
            for c, row in enumerate(all_rows[r].tolist()):
                text = trainer.bank.texts[row] if row >= 0 else None
                if kind_of.get(text) not in trainer.cfg.data.hard_negative_kinds:
                    hard[r, c] = -1
        pick = torch.rand(hard.shape, generator=reference).masked_fill(hard < 0, -1.0)
        assert torch.equal(
            draw.payload["hard_rows"], hard.gather(1, pick.argmax(1, keepdim=True))[:, 0]
        )
        # the FN rate is the old one: ordered pairs of scenes with the same semantic id
        ids = split.semantic_ids[idx]
        same = int((ids[:, None] == ids[None, :]).sum()) - len(idx)
        assert draw.fn_rate == pytest.approx(100.0 * same / (len(idx) * (len(idx) - 1)))


def test_grit_hardest_batches_hold_more_false_negatives_than_random_ones(run_data, tiny_text_model):
    """Constructed embeddings where scenes sharing objects are close (as a trained model's
    are): GRIT's hardest batches gather them, so partial captions meet their matches. (The
    gain is bounded: the step's caption is drawn afresh, so GRIT's stored caption embeddings
    do not know which scenes carry a partial caption; about 1.5× here.)"""
    over = {"batch_sampler": {"mode": "grit", "search_space_size": 300}}
    trainer = _trainer(run_data, tiny_text_model, 1.0, **over)
    split = trainer.train_split
    n = len(split)
    bag = torch.zeros(n, 60)  # bag of the scene's (digit, colour) objects, plus noise
    for k in range(3):
        present = split.object_codes[:, k] >= 0
        bag[present, split.object_codes[present, k]] += 1.0
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(bag + 0.1 * torch.randn(n, 60, generator=gen), dim=1)
    trainer.sampler.update_embeddings(torch.arange(n), emb, emb)
    grit_rates = []
    for epoch in range(20):
        trainer.sampler.set_epoch(epoch)
        for batch in trainer.sampler:
            assert not trainer.sampler.last_batch_stats["random"]
            grit_rates.append(trainer.recipe.draw(torch.tensor(batch), 0).fn_rate)
    plain = _trainer(run_data, tiny_text_model, 1.0)  # random batches, same target
    batches = plain._batches()
    random_rates = [plain.recipe.draw(torch.tensor(next(batches)), 0).fn_rate for _ in range(80)]
    grit, random_rate = float(np.mean(grit_rates)), float(np.mean(random_rates))
    assert len(grit_rates) >= 40
    assert abs(random_rate - 1.0) < 0.4, random_rate
    assert grit > 1.2 * random_rate, (grit, random_rate)


def test_unreachable_target_raises_naming_the_option_and_the_maximum(run_data, tiny_text_model):
    _, maximum = false_negative_pair_rates(_trainer(run_data, tiny_text_model, 0.0).train_split)
    with pytest.raises(ValueError, match=r"data\.false_negative_percent.*at most \d"):
        _trainer(run_data, tiny_text_model, 100.0 * maximum + 1.0)
    for bad in (-1.0, 100.0, float("nan")):
        with pytest.raises(ValueError, match=r"data\.false_negative_percent"):
            resolve_config("infonce", {"data": {"false_negative_percent": bad}})
    with pytest.raises(ValueError, match=r"data\.positives='semantic'"):
        resolve_config(
            "infonce", {"data": {"false_negative_percent": 1.0, "positives": "semantic"}}
        )
