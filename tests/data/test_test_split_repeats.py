"""Repeated configurations in the test split (``data.false_negative_source=repeats``).

The test split repeats train's configurations at the same pair rate, and retrieval counts a
caption relevant to every scene it is true of, so a model that pushed duplicates apart pays
for it in mAP. Checked from the scenes' annotations (and parsed captions), not from the
library's semantic ids.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from hardneg.data.digitscenes import PRESETS, DigitScenesConfig, generate_split
from hardneg.data.digitscenes.false_negatives import repeat_build
from hardneg.data.digitscenes.tensors import SplitTensors
from hardneg.eval.retrieval import metrics_from_items, retrieval_items
from tests.helpers.captions import annotation, parse

pytestmark = pytest.mark.usefixtures("one_thread")

BUILD = DigitScenesConfig(n_train=300, n_val=20, n_test=60, n_test_novel=20, seed=5)
PERCENT, GROUPS = 5.0, 2


@pytest.fixture(scope="module")
def build() -> DigitScenesConfig:
    return repeat_build(BUILD, PERCENT, GROUPS)


@pytest.fixture(scope="module")
def test_split(build):
    return generate_split(build, "test")


def _pair_rate(split) -> float:
    counts = Counter(annotation(split, i) for i in range(len(split)))
    n = len(split)
    return 100.0 * sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))


def test_test_split_repeats_train_configurations_at_the_train_rate(build, test_split):
    k = build.test_repeats
    # the fewest test scenes per configuration that reach the rate on the test split's size
    target = PERCENT / 100 * 60 * 59
    assert GROUPS * k * (k - 1) >= target > GROUPS * (k - 1) * (k - 2)
    assert PERCENT <= _pair_rate(test_split) < PERCENT + 100.0 * 2 * GROUPS * k / (60 * 59)
    train = generate_split(build, "train")
    repeated = [c for c, _ in Counter(annotation(train, i) for i in range(300)).most_common(2)]
    counts = Counter(annotation(test_split, i) for i in range(len(test_split)))
    assert [counts[c] for c in repeated] == [k, k]  # train's configurations, k scenes each
    for config in repeated:
        members = [i for i in range(len(test_split)) if annotation(test_split, i) == config]
        assert all(parse(c) == config for i in members for c in test_split.captions[i])
        assert len({tuple(test_split.scan_indices[i].tolist()) for i in members}) == k
    # the other test scenes keep their scans; val and test_novel repeat nothing and are the
    # splits of the build without repeats (test_novel's scenes must each hold a held-out
    # combination, which train's configurations never do)
    plain = generate_split(BUILD, "test")
    outside = [i for i in range(60) if annotation(test_split, i) not in repeated]
    assert np.mean([np.array_equal(test_split.images[i], plain.images[i]) for i in outside]) > 0.9
    for name in ("val", "test_novel"):
        images = generate_split(build, name).images
        assert np.array_equal(images, generate_split(BUILD, name).images)
    novel = set(BUILD.novel_combos)
    pairs = zip(test_split.digits.flat, test_split.colours.flat)
    assert not any((int(d), int(c)) in novel for d, c in pairs)


def _tensors(scenes) -> SplitTensors:
    """The split with one caption per scene, whose meaning is its scene's semantic id."""
    n = len(scenes)
    return SplitTensors(
        images=torch.zeros(n, 3, 24, 24, dtype=torch.uint8),
        caption_rows=torch.arange(n)[:, None],
        semantic_ids=torch.from_numpy(scenes.semantic_ids),
        hard_negative_rows=torch.full((n, 1), -1),
        scenes=scenes,
    )


def test_relevance_marks_duplicates_relevant_both_ways(test_split):
    split = _tensors(test_split)
    n = len(split)
    rel = split.relevance(torch.arange(n), split.caption_meanings()[:, 0])
    same = torch.tensor(
        [[annotation(test_split, a) == annotation(test_split, b) for b in range(n)]
         for a in range(n)]
    )  # fmt: skip
    assert torch.equal(rel, same) and torch.equal(rel, rel.T)
    assert int(same.sum()) - n >= GROUPS * 4 * 3  # the duplicates' ordered pairs, at least


def test_a_model_that_separates_duplicates_loses_map(test_split):
    """Two synthetic embeddings with the same own-pair fit: one maps a configuration's scenes
    and captions together, the other gives every scene a direction of its own (duplicates
    pushed apart). Retrieval counts every duplicate's caption relevant, so the second loses
    mAP in both directions and gains no recall."""
    split = _tensors(test_split)
    n, gen = len(split), torch.Generator().manual_seed(0)
    _, group = torch.unique(split.semantic_ids, return_inverse=True)

    def embed(centres: torch.Tensor) -> dict[str, float]:
        u = centres + 0.1 * torch.randn(n, 32, generator=gen)
        v = centres + 0.1 * torch.randn(n, 32, generator=gen)
        norm = torch.nn.functional.normalize
        meanings = split.caption_meanings()[:, 0]
        items = retrieval_items(norm(u), norm(v), lambda i, t: split.relevance(i, meanings[t]))
        return metrics_from_items(items)

    together = embed(torch.randn(int(group.max()) + 1, 32, generator=gen)[group])
    apart = embed(torch.randn(n, 32, generator=gen))
    for d in ("i2t", "t2i"):
        assert apart[f"{d}_mAP"] < together[f"{d}_mAP"] - 5.0, (apart, together)
        assert apart[f"{d}_R@5"] <= together[f"{d}_R@5"]


def _content(split) -> str:
    text = json.dumps([split.captions, split.semantic_ids.tolist(), split.scan_indices.tolist()])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_builds_without_test_repeats_keep_their_cache_key_and_content(build):
    # keys and content of builds without repeats, as before test repeats existed
    plain = replace(BUILD, n_test=20)
    assert plain.fingerprint() == "7f03ad2899f4"
    assert {p: c.fingerprint() for p, c in PRESETS.items()} == {
        "tiny": "8ba2215b4735", "small": "313ee435a8b3",
        "quick": "829b9802f284", "full": "f59bf66bc27e",
    }  # fmt: skip
    expected = {"train": "e5a930ba2a3c", "test": "79b5721e0057", "test_novel": "d437a757cc60"}
    assert {s: _content(generate_split(plain, s)) for s in expected} == expected
    assert repeat_build(plain, 0.0, GROUPS) is plain
    # a train-only repeats build keeps its old key; test repeats give the build a new one and
    # change the test split only
    train_only = replace(repeat_build(plain, 2.0, GROUPS), test_repeats=0)
    assert train_only.fingerprint() == "6e204c8a52e8"
    assert repeat_build(plain, 2.0, GROUPS).fingerprint() != train_only.fingerprint()
    assert build.test_repeats
    assert build.fingerprint() != replace(build, test_repeats=0).fingerprint()
    assert np.array_equal(
        generate_split(build, "train").images,
        generate_split(replace(build, test_repeats=0), "train").images,
    )


def test_bad_test_repeats_raise_naming_the_option():
    for bad in ({"test_repeats": 3}, {"repeated_configs": 2, "repeats": 3, "test_repeats": 31},
                {"repeated_configs": 2, "repeats": 3, "test_repeats": -1}):  # fmt: skip
        with pytest.raises(ValueError, match="test_repeats"):
            replace(BUILD, **bad)
    # a rate the test split cannot hold names the split and the options
    small_test = replace(BUILD, n_test=6)
    with pytest.raises(ValueError, match=r"false_negative_percent=20.*6 test scenes"):
        repeat_build(small_test, 20.0, 4)
