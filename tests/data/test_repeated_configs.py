"""False negatives from repeated scene configurations (``data.false_negative_source=repeats``).

A few configurations (objects, colours, relation) are shown in many train scenes, each time
with new scans, layout and caption templates, like the near-duplicates of web data. The rate
is checked here from the caption texts (parsed back) against the other scenes' annotations,
not from the library's semantic ids.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from hardneg.data.digitscenes import DigitScenesConfig, generate_split
from hardneg.data.digitscenes.false_negatives import repeat_build
from hardneg.models.minilm import MiniLMTextTower
from hardneg.train.data import load_run_data
from hardneg.train.trainer import Trainer, resolve_config
from tests.helpers.captions import annotation, parse
from tests.helpers.trainer_values import trainer_values

pytestmark = pytest.mark.usefixtures("one_thread")

B = 32
BUILD = DigitScenesConfig(n_train=300, n_val=20, n_test=20, n_test_novel=20, seed=5)


def _pair_rate(split) -> float:
    """% of ordered train pairs (a, b), a ≠ b, with the same annotation (relation, objects)."""
    counts = Counter(annotation(split, i) for i in range(len(split)))
    n = len(split)
    return 100.0 * sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))


@pytest.mark.parametrize("percent", [2.0, 5.0])
def test_repeat_build_reaches_the_rate_with_new_renderings(percent):
    build = repeat_build(BUILD, percent, configurations=2)
    plain, split = generate_split(BUILD, "train"), generate_split(build, "train")
    k = build.repeats
    # the configured rate is a floor: k is the fewest scenes per configuration that reach it
    target = percent / 100 * 300 * 299
    assert 2 * k * (k - 1) >= target > 2 * (k - 1) * (k - 2)
    assert percent <= _pair_rate(split) < percent + 100.0 * 2 * 2 * k / (300 * 299) + 0.05
    groups = Counter(annotation(split, i) for i in range(len(split))).most_common(2)
    assert all(c >= k for _, c in groups)
    for config, _ in groups:
        members = [i for i in range(len(split)) if annotation(split, i) == config]
        # each member is a new rendering: its own scans and layout, never another's
        scans = {tuple(split.scan_indices[i].tolist()) for i in members}
        boxes = {split.boxes[i].tobytes() for i in members}
        assert len(scans) > 0.9 * len(members) and len(boxes) > 0.9 * len(members)
        assert len({c for i in members for c in split.captions[i]}) > 5  # many templates
        # every caption of a member describes the configuration
        assert all(parse(c) == config for i in members for c in split.captions[i])
        assert len({split.semantic_ids[i] for i in members}) == 1
    # the scenes outside the groups keep the images of the build without repeats
    outside = [i for i in range(len(split)) if annotation(split, i) not in dict(groups)]
    same = [np.array_equal(split.images[i], plain.images[i]) for i in outside]
    assert np.mean(same) > 0.99
    # test_novel has no repeats (the test split's are checked in test_test_split_repeats.py)
    images = generate_split(build, "test_novel").images
    assert np.array_equal(images, generate_split(BUILD, "test_novel").images)
    # repeated configurations hold only combinations train may show (none held out)
    novel = set(BUILD.novel_combos)
    assert not any(
        (d, c) in novel
        for i in range(len(split))
        for d, c in zip(split.digits[i], split.colours[i])
        if d >= 0
    )


def test_default_builds_keep_their_cache_key_and_repeats_change_it():
    assert replace(BUILD, repeated_configs=0, repeats=0).fingerprint() == BUILD.fingerprint()
    assert repeat_build(BUILD, 2.0, 2).fingerprint() != BUILD.fingerprint()
    assert repeat_build(BUILD, 0.0, 2) is BUILD


@pytest.fixture(scope="module")
def trainer_of(tmp_path_factory, tiny_text_model):
    tmp = tmp_path_factory.mktemp("repeats")
    cache: dict[str, object] = {}

    def make(percent: float, **over) -> Trainer:
        data = {"false_negative_percent": percent, "false_negative_source": "repeats",
                "repeated_configs": 2}  # fmt: skip
        values = trainer_values(tmp, tiny_text_model, batch_size=B, data=data, **over)
        cfg = resolve_config("infonce", values)
        if "tower" not in cache:
            cache["tower"] = MiniLMTextTower(tiny_text_model, max_length=cfg.data.max_text_len)
        key = f"data{percent}"
        if key not in cache:
            cache[key] = load_run_data(cfg.data, cache["tower"], progress=False)
        return Trainer(cfg, tower=cache["tower"], data=cache[key])

    return make


def _independent_fn_rate(trainer: Trainer, idx: torch.Tensor, rows: torch.Tensor) -> float:
    """% of ordered in-batch pairs whose drawn caption (parsed) describes the other scene."""
    scenes = trainer.train_split.scenes
    claims = [parse(trainer.bank.texts[int(r)]) for r in rows]
    truth = [annotation(scenes, int(i)) for i in idx]
    n = len(idx)
    hits = sum(claims[a] == truth[b] for a in range(n) for b in range(n) if a != b)
    return 100.0 * hits / (n * (n - 1))


def test_random_batches_hold_the_configured_share_and_captions_stay_full(trainer_of):
    trainer = trainer_of(5.0)
    split = trainer.train_split
    assert trainer.recipe.partial_prob == 0.0
    full_rows = set(split.caption_rows.flatten().tolist())
    batches, measured, logged = trainer._batches(), [], []
    for _ in range(150):
        idx = torch.tensor(next(batches))
        draw = trainer.recipe.draw(idx, trainer.step)
        assert set(draw.payload["rows"].tolist()) <= full_rows
        measured.append(_independent_fn_rate(trainer, idx, draw.payload["rows"]))
        logged.append(draw.fn_rate)
    np.testing.assert_allclose(logged, measured, rtol=0, atol=1e-9)
    # the configured 5 % (up to the rounding of k), within a loose bound: batches share scenes
    assert abs(float(np.mean(measured)) - _pair_rate(split.scenes)) < 1.5
    assert abs(_pair_rate(split.scenes) - 5.0) < 0.5


def test_grit_hardest_batches_gather_the_repeats(trainer_of):
    """Embeddings where scenes of one configuration are close (as a trained model's are):
    GRIT's hardest chain walks through a group, so its batches hold several times the false
    negatives of random batches — the failure FALCON's quantile schedule is meant to avoid."""
    trainer = trainer_of(2.0, batch_sampler={"mode": "grit", "search_space_size": 300})
    split = trainer.train_split
    n = len(split)
    _, inverse = torch.unique(split.semantic_ids, return_inverse=True)
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(int(inverse.max()) + 1, 32, generator=gen)
    emb = torch.nn.functional.normalize(centres[inverse] + 0.3 * torch.randn(n, 32, generator=gen))
    trainer.sampler.update_embeddings(torch.arange(n), emb, emb)
    grit = []
    for epoch in range(10):
        trainer.sampler.set_epoch(epoch)
        grit += [trainer.recipe.draw(torch.tensor(b), 0).fn_rate for b in trainer.sampler]
    plain = trainer_of(2.0)
    batches = plain._batches()
    random_rates = [plain.recipe.draw(torch.tensor(next(batches)), 0).fn_rate for _ in range(100)]
    assert float(np.mean(grit)) > 3.0 * float(np.mean(random_rates)), (grit, random_rates)


def test_bad_repeat_settings_raise_naming_the_option(trainer_of):
    unreachable = r"data\.false_negative_percent=60.*data\.repeated_configs"
    with pytest.raises(ValueError, match=unreachable):
        trainer_of(60.0)
    with pytest.raises(ValueError, match=r"data\.false_negative_source"):
        resolve_config("infonce", {"data": {"false_negative_source": "paraphrase"}})
    with pytest.raises(ValueError, match=r"data\.repeated_configs"):
        resolve_config("infonce", {"data": {"repeated_configs": 0}})
    # repeats are full captions: semantic positives (the oracle) can mark them
    resolve_config(
        "infonce",
        {"data": {"false_negative_percent": 1.0, "false_negative_source": "repeats",
                  "positives": "semantic"}},
    )  # fmt: skip
    for bad in ({"repeated_configs": 2}, {"repeats": -1}, {"repeated_configs": 50, "repeats": 10}):
        with pytest.raises(ValueError, match="repeat"):
            replace(BUILD, **bad)
