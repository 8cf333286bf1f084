"""hardneg.mining.mine_hard_negatives against a brute-force double loop over the full score
matrix: positives, rank window, margins, score bounds and every sampling mode."""

from __future__ import annotations

import math

import pytest
import torch

from hardneg.mining import MiningOptions, mine_hard_negatives


def embeddings(n_images: int = 9, seed: int = 0, d: int = 6):
    """Random unit vectors in fp64; item i has i % 3 + 1 captions near its image."""
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(n_images, d, generator=g, dtype=torch.float64))
    items = torch.tensor([i for i in range(n_images) for _ in range(i % 3 + 1)])
    noise = torch.randn(len(items), d, generator=g, dtype=torch.float64)
    v = torch.nn.functional.normalize(u[items] + 0.8 * noise)
    return u, v, items


def reference(u, v, items, meaning, opts: MiningOptions, direction: str) -> list[list[int]]:
    """The candidates of every query by a plain double loop (see hardneg.mining.core)."""
    scores = (u @ v.T).tolist()  # (images, captions)
    items = items.tolist()
    group = list(range(len(u))) if meaning is None else meaning.tolist()
    out = []
    n_queries = len(items) if direction == "caption_to_image" else len(u)
    for q in range(n_queries):
        if direction == "caption_to_image":
            keys = range(len(u))
            s = {i: scores[i][q] for i in keys}
            p = scores[items[q]][q]
            positive = {i for i in keys if group[i] == group[items[q]]}
        else:
            keys = range(len(items))
            s = {c: scores[q][c] for c in keys}
            p = min(scores[q][c] for c in keys if items[c] == q)
            positive = {c for c in keys if group[items[c]] == group[q]}
        ranked = sorted((k for k in keys if k not in positive), key=lambda k: (-s[k], k))
        candidates = []
        for k in ranked[opts.range_min : opts.window_end()]:
            if opts.max_score is not None and s[k] > opts.max_score:
                continue
            if opts.min_score is not None and s[k] < opts.min_score:
                continue
            if opts.absolute_margin is not None and s[k] > p - opts.absolute_margin:
                continue
            if opts.relative_margin is not None and s[k] > p - abs(p) * opts.relative_margin:
                continue
            candidates.append(k)
        out.append(candidates)
    return out


def picks(candidates: list[int], opts: MiningOptions) -> list[int]:
    n = opts.num_negatives
    if opts.sampling == "quantile":
        start = math.floor(opts.quantile * max(len(candidates) - n, 0))
        return candidates[start : start + n]
    return candidates[:n]


def as_lists(indices: torch.Tensor) -> list[list[int]]:
    return [[i for i in row if i >= 0] for row in indices.tolist()]


CASES = [
    {},
    {"num_negatives": 2, "range_min": 2, "range_max": 6},
    {"relative_margin": 0.05},
    {"absolute_margin": 0.1, "num_negatives": 4},
    {"max_score": 0.3, "min_score": -0.4},
    {"max_score": 0.2, "relative_margin": 0.2, "range_max": 8},
    {"sampling": "quantile", "quantile": 0.5, "range_max": 7, "num_negatives": 2},
    {"sampling": "quantile", "quantile": 1.0, "relative_margin": 0.1},
    {"sampling": "quantile", "quantile": 0.3, "range_min": 1, "max_score": 0.5},
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("meaning", [None, torch.tensor([0, 1, 0, 2, 3, 2, 4, 5, 6])])
def test_top_and_quantile_equal_the_brute_force_reference(case, meaning):
    u, v, items = embeddings()
    mined = mine_hard_negatives(u, v, items, meaning, with_scores=True, chunk_size=4, **case)
    opts = MiningOptions(**case)
    for direction in ("caption_to_image", "image_to_caption"):
        got = getattr(mined, direction)
        want = [picks(c, opts) for c in reference(u, v, items, meaning, opts, direction)]
        assert as_lists(got.indices) == want, direction
        assert got.short == sum(len(w) < opts.num_negatives for w in want)
        scores = u @ v.T
        for q, row in enumerate(want):
            for j, k in enumerate(row):
                pair = scores[k, q] if direction == "caption_to_image" else scores[q, k]
                assert got.scores[q, j].item() == pytest.approx(pair.item(), abs=1e-12)
            assert torch.isnan(got.scores[q, len(row) :]).all()


def test_no_positive_among_the_negatives_with_several_captions_and_meanings():
    u, v, items = embeddings(n_images=12, seed=3)
    meaning = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 8])
    for m in (None, meaning):
        mined = mine_hard_negatives(u, v, items, m, num_negatives=5, range_max=20)
        group = torch.arange(12) if m is None else m
        for c, row in enumerate(as_lists(mined.caption_to_image.indices)):
            assert len(row) == 5
            assert all(group[i] != group[items[c]] for i in row)
        for i, row in enumerate(as_lists(mined.image_to_caption.indices)):
            assert len(row) == 5
            assert all(group[items[c]] != group[i] for c in row)


def test_faiss_path_equals_the_exact_search():
    pytest.importorskip("faiss")
    u, v, items = embeddings(n_images=30, seed=5)
    u, v = u.float(), v.float()
    options = {"num_negatives": 3, "relative_margin": 0.05, "sampling": "quantile"}
    exact = mine_hard_negatives(u, v, items, **options)
    fast = mine_hard_negatives(u, v, items, use_faiss=True, **options)
    for direction in ("caption_to_image", "image_to_caption"):
        a, b = getattr(exact, direction).indices, getattr(fast, direction).indices
        assert torch.equal(a, b)


def test_random_picks_lie_in_the_window_and_are_deterministic_per_seed():
    u, v, items = embeddings()
    case = {"sampling": "random", "num_negatives": 2, "range_max": 6, "relative_margin": 0.02}
    opts = MiningOptions(**case)
    a = mine_hard_negatives(u, v, items, seed=1, **case)
    b = mine_hard_negatives(u, v, items, seed=1, **case)
    c = mine_hard_negatives(u, v, items, seed=2, **case)
    assert torch.equal(a.caption_to_image.indices, b.caption_to_image.indices)
    assert torch.equal(a.image_to_caption.indices, b.image_to_caption.indices)
    assert not torch.equal(a.caption_to_image.indices, c.caption_to_image.indices)
    for direction in ("caption_to_image", "image_to_caption"):
        candidates = reference(u, v, items, None, opts, direction)
        for row, cand in zip(as_lists(getattr(a, direction).indices), candidates, strict=True):
            assert len(row) == min(2, len(cand)) and len(set(row)) == len(row)
            assert row == [k for k in cand if k in row]  # a subset, hardest first


def test_random_is_uniform_within_the_window():
    # 4000 identical captions of image 0 (one more per other image): each draws 2 of the 6
    # windowed images
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(10, 4, generator=g, dtype=torch.float64))
    v = torch.cat([u[:1].repeat(4000, 1), u[1:]])
    items = torch.cat([torch.zeros(4000, dtype=torch.long), torch.arange(1, 10)])
    mined = mine_hard_negatives(
        u, v, items, sampling="random", num_negatives=2, range_min=1, range_max=7, seed=0
    )
    window_opts = MiningOptions(range_min=1, range_max=7)
    window = reference(u, v, items, None, window_opts, "caption_to_image")[0]
    counts = torch.bincount(mined.caption_to_image.indices[:4000].flatten(), minlength=10)
    assert set(counts.nonzero().flatten().tolist()) == set(window)
    expected = 4000 * 2 / 6  # each of the 6 ranks with probability 1/3
    # binomial sd ≈ sqrt(4000 · 1/3 · 2/3) ≈ 30: 5 sd
    assert all(abs(counts[k].item() - expected) < 150 for k in window)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ({"num_negatives": 5, "range_max": 4}, "num_negatives=5 is larger than the 4"),
        ({"num_negatives": 9}, "num_negatives=9 is larger than the 8 images left"),
        ({"sampling": "hardest"}, "sampling='hardest' is unknown"),
        ({"quantile": 1.5}, "quantile must be in"),
        ({"relative_margin": -0.1}, "relative_margin must be"),
        ({"min_score": 0.5, "max_score": 0.1}, "min_score=0.5 is above"),
    ],
)
def test_bad_options_name_the_option(case, match):
    u, v, items = embeddings()
    with pytest.raises(ValueError, match=match):
        mine_hard_negatives(u, v, items, **case)
