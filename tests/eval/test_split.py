"""evaluate_split on a hand-built split: exact relevance over full and partial captions.

The model is a stub whose image and caption embeddings are fixed vectors, so the expected
rankings are computed here by brute force, with the relevance written from the scenes' objects
directly (a partial caption "a red 3" is true of every scene holding a red 3).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hardneg.eval.runner import evaluate_split, evaluate_split_items
from tests.helpers.split_stub import (
    IMAGES,
    TEXTS,
    StubModel,
    stub_bank,
    stub_split,
    true_of,
)


def _brute_force(scores: torch.Tensor, relevant: list[list[bool]]) -> tuple[float, float]:
    """R@1 and mAP (percent) of each row's ranking, negatives first on ties."""
    hits, aps = [], []
    for row, rel in zip(scores.tolist(), relevant, strict=True):
        order = sorted(range(len(row)), key=lambda j: (-row[j], rel[j]))
        ranks = [r + 1 for r, j in enumerate(order) if rel[j]]
        hits.append(ranks[0] == 1)
        aps.append(sum((m + 1) / r for m, r in enumerate(ranks)) / len(ranks))
    return 100.0 * float(np.mean(hits)), 100.0 * float(np.mean(aps))


@pytest.fixture
def metrics() -> dict[str, float]:
    return evaluate_split(StubModel(), stub_bank(), stub_split(), tower=None, batch_size=2)


def test_partial_captions_are_queries_and_gallery_with_exact_relevance(metrics):
    relevant = [[true_of(s, r) for r in range(5)] for s in range(3)]
    texts = TEXTS / TEXTS.norm(dim=1, keepdim=True)  # the evaluation scores cosines
    i2t_r1, i2t_map = _brute_force(IMAGES @ texts.T, relevant)
    t2i_r1, t2i_map = _brute_force(texts @ IMAGES.T, [list(c) for c in zip(*relevant, strict=True)])
    # by hand: caption 1 ranks scene 0 (0.6) above its scene (0.5); the other four hit
    assert t2i_r1 == pytest.approx(80.0)
    assert metrics["t2i_R@1"] == pytest.approx(t2i_r1)
    assert metrics["t2i_mAP"] == pytest.approx(t2i_map)
    assert metrics["i2t_R@1"] == pytest.approx(i2t_r1)
    assert metrics["i2t_mAP"] == pytest.approx(i2t_map)


def test_per_item_means_are_the_metrics():
    from hardneg.eval.items import metric_items

    result = evaluate_split_items(StubModel(), stub_bank(), stub_split(), tower=None, batch_size=2)
    assert len(result.items["i2t_ap"]) == 3 and len(result.items["t2i_ap"]) == 5
    for metric in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@10", "i2t_mAP", "t2i_mAP"):
        values = metric_items(result.items, metric)
        assert 100.0 * values.mean() == pytest.approx(result.metrics[metric]), metric


# hard-negative probes, bank rows 5–7: (scene, kind, embedding)
PROBES = [
    (0, "swap_digits", [1.0, 0.0, 0.0]),  # equals image 0: beats its caption (cos 1 > 0.99)
    (1, "flip_relation", [0.0, 0.0, 1.0]),  # orthogonal to image 1: loses
    (2, "swap_digits", [0.0, 1.0, 0.0]),  # orthogonal to image 2: loses
]


class _CrossModal:
    """ITM logit = −(text · image): the reverse of the cosine order. Attention of token 2
    (the mismatch word) = the text's first feature, token 1 = 0.5: only probe 0 localises."""

    def __call__(self, text: torch.Tensor, image: torch.Tensor):
        attn = torch.zeros(len(text), 1, 4, 1)
        attn[:, 0, 1, 0], attn[:, 0, 2, 0] = 0.5, text[:, 0]
        return SimpleNamespace(itm_logit=-(text * image[:, 0]).sum(-1), cross_attentions=[attn])


def test_probe_items_are_per_trial_outcomes_with_their_kind():
    from hardneg.eval.items import metric_items

    model = StubModel(crossmodal=_CrossModal())
    pooled = torch.cat([TEXTS, torch.tensor([p[2] for p in PROBES])])
    bank = stub_bank(
        pooled,
        index={f"neg{i}": 5 + i for i in range(len(PROBES))},
        tokens=torch.zeros(len(pooled), 4, dtype=torch.long),
        mask=torch.ones(len(pooled), 4, dtype=torch.bool),
    )
    split = stub_split()
    split.scenes.hard_negatives = [[] for _ in range(3)]
    for i, (scene, kind, _) in enumerate(PROBES):
        neg = SimpleNamespace(caption=f"neg{i}", kind=kind, span=(1, 2), box=(0, 0, 2, 2))
        split.scenes.hard_negatives[scene].append(neg)
    tower = SimpleNamespace(word_ids=lambda texts: [[None, 0, 1, None] for _ in texts])
    result = evaluate_split_items(model, bank, split, tower, batch_size=2)
    items, metrics = result.items, result.metrics
    assert items["comp_kind"].tolist() == ["swap_digits", "flip_relation", "swap_digits"]
    assert items["comp_correct"].tolist() == [False, True, True]
    assert items["itm_comp_correct"].tolist() == [True, False, False]
    assert items["ael_hit"].tolist() == [1.0, 0.0, 0.0]
    assert metrics["comp_swap_digits"] == pytest.approx(50.0)
    assert metrics["comp_flip_relation"] == pytest.approx(100.0)
    assert metrics["itm_comp_overall"] == pytest.approx(100 / 3)
    assert metrics["ael"] == pytest.approx(100 / 3)
    for metric in ("comp_swap_digits", "comp_overall", "itm_comp_flip_relation", "ael"):
        assert 100.0 * metric_items(items, metric).mean() == pytest.approx(metrics[metric])
