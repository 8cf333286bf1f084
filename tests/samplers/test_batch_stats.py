"""Batch diagnostics: the q of anchors whose search space holds a duplicate vs the others."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hardneg.samplers import HardnessBatchSampler, HardnessSamplerConfig
from hardneg.samplers.batch_stats import batch_stats


def test_q_is_split_by_whether_the_anchor_has_a_duplicate():
    stats = batch_stats(
        [0, 1, 2, 3],
        qs=[0.2, 0.4, 0.9],
        pick_sims=[0.1, 0.2, 0.3],
        semantic_ids=None,
        anchor_has_duplicate=np.array([True, False, True]),
    )
    assert stats["q_dup_mean"] == pytest.approx(0.55)
    assert stats["q_nodup_mean"] == pytest.approx(0.4)
    none = batch_stats([0, 1], [0.3], [0.1], None, np.array([False]))
    assert none["q_dup_mean"] is None and none["q_nodup_mean"] == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("pairs", "key", "other"),
    [(True, "q_dup_mean", "q_nodup_mean"), (False, "q_nodup_mean", "q_dup_mean")],
)
def test_the_sampler_flags_anchors_by_their_search_space(pairs, key, other):
    n, b = 32, 4
    semantic = np.arange(n) // 2 if pairs else np.arange(n)  # pairs: every item has a twin
    config = HardnessSamplerConfig(b, mode="fixed", q=0.5, search_space_size=n)
    sampler = HardnessBatchSampler(n, config, semantic_ids=semantic)
    emb = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    sampler.update_embeddings(torch.arange(n), emb, emb)
    batches = iter(sampler)
    stats = []
    for _ in range(n // b):
        next(batches)
        stats.append(dict(sampler.last_batch_stats))
    assert not any(s["random"] for s in stats)
    assert all(s[key] == pytest.approx(0.5) and s[other] is None for s in stats)
