"""ALBEF's ITM negatives (hardneg.train.itm): never a positive, drawn from the ITC softmax.

The reference distribution is written out here with numpy: for anchor i, p(j) ∝ exp(s·⟨a_i, c_j⟩)
over the candidates j that are neither the same item nor (with meanings) true of each other.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hardneg.losses import InfoNCELoss
from hardneg.train.itm import hardest_negative_images, itm_negatives

pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(n: int = 6, dim: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, dim, generator=g)
    text = image + 0.8 * torch.randn(n, dim, generator=g)
    ids = torch.tensor([0, 1, 1, 2, 3, 4])  # items 1 and 2 share an id (two captions, one item)
    return InfoNCELoss().prepare(image, text, ids)


def _reference(anchors: np.ndarray, cands: np.ndarray, allowed: np.ndarray, scale: float):
    logits = scale * anchors @ cands.T
    weights = np.where(allowed, np.exp(logits - logits.max(axis=1, keepdims=True)), 0.0)
    return weights / weights.sum(axis=1, keepdims=True)


def test_itm_negatives_follow_the_itc_softmax_and_never_pick_a_positive():
    pairs = _pairs()
    ids = pairs.ids.numpy()
    # relevance[i, j]: caption j is true of image i (item 4's caption is true of image 3)
    relevance = torch.eye(6, dtype=torch.bool)
    relevance[3, 4] = True
    not_same = ids[:, None] != ids[None, :]
    rel = relevance.numpy()
    allowed_t2i = not_same & ~rel.T  # caption i, image j: caption i true of image j
    allowed_i2t = not_same & ~rel  # image i, caption j: caption j true of image i
    scale = 5.0
    expected_t2i = _reference(pairs.text.numpy(), pairs.image.numpy(), allowed_t2i, scale)
    expected_i2t = _reference(pairs.image.numpy(), pairs.text.numpy(), allowed_i2t, scale)

    torch.manual_seed(0)
    draws = 6000
    counts_t2i, counts_i2t = np.zeros((6, 6)), np.zeros((6, 6))
    for _ in range(draws):
        neg_image, has_image, neg_text, has_text = itm_negatives(pairs, scale, relevance)
        assert has_image.all() and has_text.all()
        counts_t2i[np.arange(6), neg_image.numpy()] += 1
        counts_i2t[np.arange(6), neg_text.numpy()] += 1
    for counts, expected, allowed in (
        (counts_t2i, expected_t2i, allowed_t2i),
        (counts_i2t, expected_i2t, allowed_i2t),
    ):
        assert counts[~allowed].sum() == 0  # never a positive, never a caption true of it
        freq = counts / draws
        # binomial standard error ≤ 0.0065 at 6000 draws: 0.03 is > 4.5 σ
        assert np.abs(freq - expected).max() < 0.03, (freq, expected)
    # not vacuous: the softmax is far from uniform over the allowed candidates
    uniform = allowed_t2i / allowed_t2i.sum(axis=1, keepdims=True)
    assert np.abs(expected_t2i - uniform).max() > 0.1


def test_an_anchor_true_of_every_candidate_has_no_negative():
    pairs = _pairs()
    relevance = torch.ones(6, 6, dtype=torch.bool)  # every caption true of every image
    _, has_image, _, has_text = itm_negatives(pairs, 5.0, relevance)
    assert not has_image.any() and not has_text.any()


def test_hardest_negative_image_is_the_most_similar_non_positive():
    pairs = _pairs()
    sim = (pairs.text @ pairs.image.T).numpy()
    ids = pairs.ids.numpy()
    expected = [
        max((j for j in range(6) if ids[j] != ids[i]), key=lambda j: sim[i, j]) for i in range(6)
    ]
    assert hardest_negative_images(pairs).tolist() == expected
