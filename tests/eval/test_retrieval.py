"""Tests of hardneg.eval.topk and .retrieval: chunked exact top-k and multi-positive R@K, mAP.

References are independent: hand-computed rankings on score matrices with exactly
representable values, and brute-force dense rankings written here in plain Python.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hardneg.eval import chunked_topk, retrieval_metrics

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def embeddings_for_scores(scores: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image/text embeddings whose inner products are exactly ``scores`` (N images × M texts).

    Images are the one-hot rows of I_N and caption j is column j of the score matrix, so every
    score is computed exactly (products with 0 and 1) and ties stay ties.
    """
    s = torch.tensor(scores, dtype=torch.float32)
    return torch.eye(s.shape[0]), s.T.contiguous()


def dense_ranking_metrics(scores, query_ids, key_ids, ks):
    """Brute force: sort every key of every query, pessimistic ties (negatives first)."""
    recalls, aps = {k: 0 for k in ks}, []
    for i, row in enumerate(scores):
        is_pos = [key_ids[j] == query_ids[i] for j in range(len(row))]
        order = sorted(range(len(row)), key=lambda j: (-row[j], is_pos[j]))
        pos_ranks = [r + 1 for r, j in enumerate(order) if is_pos[j]]
        for k in ks:
            recalls[k] += pos_ranks[0] <= k
        aps.append(sum((m + 1) / r for m, r in enumerate(pos_ranks)) / len(pos_ranks))
    n = len(scores)
    return {k: 100.0 * v / n for k, v in recalls.items()}, 100.0 * sum(aps) / n


# --------------------------------------------------------------------------- chunked_topk


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("chunk", "key_chunk", "k"), [(7, None, 10), (3, 11, 10), (50, 4, 5), (16, 16, 43)]
)
def test_chunked_topk_equals_dense_sorted_with_lower_index_on_ties(device, chunk, key_chunk, k):
    gen = torch.Generator().manual_seed(0)
    # Entries in {-1, 0, 1}: integer scores, so exact ties are frequent and exactly computed.
    queries = torch.randint(-1, 2, (50, 4), generator=gen).float()
    keys = torch.randint(-1, 2, (43, 4), generator=gen).float()
    values, indices = chunked_topk(
        queries.to(device), keys.to(device), k, chunk_size=chunk, key_chunk_size=key_chunk
    )
    scores = (queries @ keys.T).tolist()
    for i, row in enumerate(scores):
        expected = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        assert indices[i].tolist() == expected
        assert values[i].tolist() == [row[j] for j in expected]


def test_chunked_topk_matches_dense_topk_on_random_unit_vectors():
    gen = torch.Generator().manual_seed(1)
    queries = torch.nn.functional.normalize(torch.randn(37, 16, generator=gen), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(61, 16, generator=gen), dim=1)
    values, indices = chunked_topk(queries.double(), keys.double(), 10, chunk_size=7)
    ref = queries.double() @ keys.double().T
    ref_values, ref_indices = ref.topk(10, dim=1)
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(values, ref_values)


def test_chunked_topk_hand_computed_ties_prefer_lower_index():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    # scores row 0: [0, 1, 1, 1, 0] -> keys 1, 2, 3 tie; row 1: [1, 0, 1, 0, 0]
    values, indices = chunked_topk(queries, keys, k=2, chunk_size=1, key_chunk_size=2)
    assert indices.tolist() == [[1, 2], [0, 2]]
    assert values.tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_chunked_topk_scores_half_precision_in_fp32():
    queries = torch.tensor([[1.0, 2.0]], dtype=torch.float16)
    keys = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float16)
    values, indices = chunked_topk(queries, keys, k=2)
    assert values.dtype == torch.float32
    assert values.tolist() == [[11.0, 1.0]] and indices.tolist() == [[0, 1]]


class _MaxNumel(TorchDispatchMode):
    """Record the largest tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_chunked_topk_and_metrics_never_materialise_n_by_m():
    gen = torch.Generator().manual_seed(2)
    img = torch.randn(60, 8, generator=gen)
    txt = torch.randn(90, 8, generator=gen)
    ids = torch.arange(90) % 60
    with _MaxNumel() as mode:
        chunked_topk(img, txt, k=5, chunk_size=8)
        retrieval_metrics(img, txt, torch.arange(60), ids, chunk_size=8)
    # Largest temporaries are chunk × chunk blocks (and the (M,) / (M, d) inputs).
    assert mode.max_numel <= 90 * 8
    assert mode.max_numel < 60 * 90 / 4


# --------------------------------------------------------------------------- metrics


def test_retrieval_metrics_hand_computed_multi_positive_case():
    # Image 0 (id 0) has captions 0, 1; image 1 (id 1) has captions 2, 3, 4.
    scores = [
        [0.5, 0.25, 0.75, 0.0, -0.5],  # i2t ranks of positives: 2, 3
        [0.875, -0.25, 0.5, -0.5, 0.25],  # positives 2, 4, 3 at ranks 2, 3, 5
    ]
    img, txt = embeddings_for_scores(scores)
    m = retrieval_metrics(img, txt, [0, 1], [0, 0, 1, 1, 1], ks=(1, 2, 5), chunk_size=2)
    ap_img0 = (1 / 2 + 2 / 3) / 2
    ap_img1 = (1 / 2 + 2 / 3 + 3 / 5) / 3
    assert m["i2t_R@1"] == 0.0
    assert m["i2t_R@2"] == 100.0 and m["i2t_R@5"] == 100.0
    assert m["i2t_mAP"] == pytest.approx(100 * (ap_img0 + ap_img1) / 2)
    # t2i, one positive image per caption: ranks 2, 1, 2, 2, 1.
    assert m["t2i_R@1"] == pytest.approx(40.0)
    assert m["t2i_R@2"] == 100.0 and m["t2i_R@5"] == 100.0
    assert m["t2i_mAP"] == pytest.approx(100 * (0.5 + 1 + 0.5 + 0.5 + 1) / 5)
    assert m["rsum"] == pytest.approx(0 + 100 + 100 + 40 + 100 + 100)
    assert set(m) == {
        "i2t_R@1", "i2t_R@2", "i2t_R@5", "t2i_R@1", "t2i_R@2", "t2i_R@5",
        "i2t_mAP", "t2i_mAP", "rsum",
    }  # fmt: skip


def test_retrieval_metrics_text_query_with_several_positive_images():
    # Images 0 and 1 share id 7; caption 0 (id 7) therefore has two positive images.
    scores = [
        [0.25, 0.0],
        [-0.5, -0.25],
        [0.5, 0.75],
    ]
    img, txt = embeddings_for_scores(scores)
    m = retrieval_metrics(img, txt, [7, 7, 3], [7, 3], ks=(1, 2), chunk_size=1)
    # caption 0 over images: [0.25 pos, -0.5 pos, 0.5 neg] -> positive ranks 2, 3
    # caption 1 over images: [0.0 neg, -0.25 neg, 0.75 pos] -> rank 1
    assert m["t2i_R@1"] == 50.0 and m["t2i_R@2"] == 100.0
    assert m["t2i_mAP"] == pytest.approx(100 * ((1 / 2 + 2 / 3) / 2 + 1) / 2)
    # image 0 over captions: [0.25 pos, 0.0 neg] rank 1; image 1: [-0.5 pos, -0.25 neg] rank 2;
    # image 2: [0.5 neg, 0.75 pos] rank 1
    assert m["i2t_R@1"] == pytest.approx(200 / 3) and m["i2t_R@2"] == 100.0
    assert m["i2t_mAP"] == pytest.approx(100 * (1 + 0.5 + 1) / 3)


def test_retrieval_metrics_ties_with_negatives_count_pessimistically():
    scores = [
        # id 0, positives 0, 2; negative 1 ties positive 2: order 0 (pos), 1 (neg), 2 (pos)
        [0.5, 0.25, 0.25, 0.0],
        # id 1, positive 3 ties negatives 0, 1 at the top: rank 3
        [0.5, 0.5, 0.0, 0.5],
        # id 5, positive 1 strictly first
        [0.0, 1.0, 0.0, 0.0],
    ]
    img, txt = embeddings_for_scores(scores)
    for chunk in (1, 3, 8):
        m = retrieval_metrics(img, txt, [0, 1, 5], [0, 5, 0, 1], ks=(1, 2, 3), chunk_size=chunk)
        assert m["i2t_R@1"] == pytest.approx(200 / 3) and m["i2t_R@2"] == pytest.approx(200 / 3)
        assert m["i2t_R@3"] == 100.0
        assert m["i2t_mAP"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1 / 3 + 1) / 3)


def test_retrieval_metrics_ties_between_positives_do_not_matter():
    # Two positives tie below one negative: ranks 2 and 3 whichever comes first.
    # Image 1 (id 1) ranks its caption first.
    img, txt = embeddings_for_scores([[0.25, 0.75, 0.25], [0.0, 1.0, 0.0]])
    m = retrieval_metrics(img, txt, [0, 1], [0, 1, 0], ks=(1, 2), chunk_size=2)
    assert m["i2t_R@1"] == 50.0 and m["i2t_R@2"] == 100.0
    assert m["i2t_mAP"] == pytest.approx(100 * ((1 / 2 + 2 / 3) / 2 + 1) / 2)


def test_retrieval_metrics_collapsed_embeddings_get_no_credit_from_data_order():
    img = torch.ones(2, 3)
    txt = torch.ones(4, 3)
    m = retrieval_metrics(img, txt, [0, 1], [0, 0, 1, 1], ks=(1, 2, 3))
    # every image: 2 negatives tie its 2 positives -> positive ranks 3, 4
    assert m["i2t_R@1"] == 0.0 and m["i2t_R@2"] == 0.0 and m["i2t_R@3"] == 100.0
    assert m["i2t_mAP"] == pytest.approx(100 * (1 / 3 + 2 / 4) / 2)
    # every caption: 1 tied negative image -> rank 2
    assert m["t2i_R@1"] == 0.0 and m["t2i_mAP"] == pytest.approx(50.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_retrieval_metrics_equal_dense_brute_force_with_many_ties(device, chunk):
    gen = torch.Generator().manual_seed(3)
    img = torch.randint(-1, 2, (50, 3), generator=gen).double()
    txt = torch.randint(-1, 2, (70, 3), generator=gen).double()
    image_ids = torch.randint(0, 30, (50,), generator=gen)
    text_ids = torch.cat([image_ids, image_ids[torch.randint(0, 50, (20,), generator=gen)]])
    text_ids = text_ids[torch.randperm(70, generator=gen)]
    ks = (1, 5, 10)
    m = retrieval_metrics(
        img.to(device), txt.to(device), image_ids, text_ids, ks=ks, chunk_size=chunk
    )
    scores = (img @ txt.T).tolist()
    i2t_r, i2t_ap = dense_ranking_metrics(scores, image_ids.tolist(), text_ids.tolist(), ks)
    t2i_r, t2i_ap = dense_ranking_metrics(
        [list(col) for col in zip(*scores)], text_ids.tolist(), image_ids.tolist(), ks
    )
    for k in ks:
        assert m[f"i2t_R@{k}"] == pytest.approx(i2t_r[k])
        assert m[f"t2i_R@{k}"] == pytest.approx(t2i_r[k])
    assert m["i2t_mAP"] == pytest.approx(i2t_ap)
    assert m["t2i_mAP"] == pytest.approx(t2i_ap)
    assert m["rsum"] == pytest.approx(sum(i2t_r.values()) + sum(t2i_r.values()))


def test_retrieval_metrics_random_unit_vectors_match_brute_force():
    gen = torch.Generator().manual_seed(4)
    img = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(200, 16, generator=gen), dim=1)
    image_ids = torch.arange(40)
    text_ids = torch.arange(200) // 5  # five captions per image
    m = retrieval_metrics(img.double(), txt.double(), image_ids, text_ids, chunk_size=7)
    scores = (img.double() @ txt.double().T).tolist()
    i2t_r, i2t_ap = dense_ranking_metrics(scores, image_ids.tolist(), text_ids.tolist(), (1, 5))
    assert m["i2t_R@1"] == pytest.approx(i2t_r[1]) and m["i2t_R@5"] == pytest.approx(i2t_r[5])
    assert m["i2t_mAP"] == pytest.approx(i2t_ap)
    assert all(math.isfinite(v) and 0 <= v <= 600 for v in m.values())


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(queries=torch.randn(3, 4), keys=torch.randn(5, 3), k=1), "columns"),
        (dict(queries=torch.randn(3, 4), keys=torch.randn(5, 4), k=6), "k must be"),
        (dict(queries=torch.randn(3, 4), keys=torch.randn(5, 4), k=0), "k must be"),
        (dict(queries=torch.randn(4), keys=torch.randn(5, 4), k=1), "2-D"),
        (dict(queries=torch.randn(3, 4), keys=torch.randn(5, 4), k=1, chunk_size=0), "chunk"),
        (dict(queries=torch.full((3, 4), math.nan), keys=torch.randn(5, 4), k=1), "NaN"),
        (dict(queries=torch.ones(3, 4, dtype=torch.long), keys=torch.randn(5, 4), k=1), "float"),
    ],
)
def test_chunked_topk_rejects_bad_input_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        chunked_topk(**kwargs)


@pytest.mark.parametrize(
    ("image_ids", "text_ids", "ks", "match"),
    [
        ([0, 1], [0, 1, 1], (1,), "image_ids must have shape"),
        ([0, 1, 2], [0, 1], (1,), "text_ids must have shape"),
        ([0, 1, 9], [0, 1, 1], (1,), "image_ids has 1 row"),
        ([0, 1, 1], [0, 1, 4], (1,), "text_ids has 1 row"),
        ([0.0, 1.0, 1.0], [0, 1, 1], (1,), "integer"),
        ([0, 1, 1], [0, 1, 1], (), "ks"),
        ([0, 1, 1], [0, 1, 1], (1, 1), "repeat"),
        ([0, 1, 1], [0, 1, 1], (0,), "ks"),
    ],
)
def test_retrieval_metrics_rejects_bad_ids_and_cutoffs(image_ids, text_ids, ks, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(torch.randn(3, 4), torch.randn(3, 4), image_ids, text_ids, ks=ks)


def test_retrieval_metrics_rejects_non_finite_embeddings():
    img = torch.randn(2, 4)
    img[1, 2] = math.inf
    with pytest.raises(ValueError, match="image_emb contains"):
        retrieval_metrics(img, torch.randn(2, 4), [0, 1], [0, 1])


def test_retrieval_items_with_a_relevance_relation_match_brute_force():
    """Relevance need not be an id equality (a caption true of several images, an image
    relevant to captions of other images): per-query hits and AP equal a dense ranking."""
    from hardneg.eval import retrieval_items

    gen = torch.Generator().manual_seed(5)
    img = torch.randn(13, 4, generator=gen).double()
    txt = torch.randn(29, 4, generator=gen).double()
    rel = torch.rand(13, 29, generator=gen) < 0.2
    rel[torch.arange(13), torch.arange(13)] = True  # every image and caption has a partner
    rel[torch.arange(29) % 13, torch.arange(29)] = True
    calls = []

    def relevance(i, j):
        calls.append((len(i), len(j)))
        return rel[i][:, j]

    items = retrieval_items(img, txt, relevance, ks=(1, 3), chunk_size=5)
    assert max(a * b for a, b in calls) <= 25  # asked one chunk × chunk block at a time
    for name, scores, r in (("i2t", img @ txt.T, rel), ("t2i", txt @ img.T, rel.T)):
        for q, (row, pos) in enumerate(zip(scores.tolist(), r.tolist(), strict=True)):
            order = sorted(range(len(row)), key=lambda j: (-row[j], pos[j]))
            ranks = [n + 1 for n, j in enumerate(order) if pos[j]]
            ap = sum((m + 1) / k for m, k in enumerate(ranks)) / len(ranks)
            assert bool(items[f"{name}_hit@1"][q]) == (ranks[0] <= 1)
            assert bool(items[f"{name}_hit@3"][q]) == (ranks[0] <= 3)
            assert float(items[f"{name}_ap"][q]) == pytest.approx(ap)


def test_retrieval_items_reject_a_query_without_relevant_key():
    from hardneg.eval import retrieval_items

    rel = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"1 image quer.* have no relevant caption"):
        retrieval_items(torch.eye(2), torch.eye(2), lambda i, j: rel[i][:, j])
