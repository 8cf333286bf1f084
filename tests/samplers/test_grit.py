"""Hardness-quantile pick, GRIT chain and the hardness batch sampler (determinism, resume, DDP)."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

from hardneg.samplers import (
    HardnessBatchSampler,
    HardnessSamplerConfig,
    chain_batches,
    grit_chain,
    quantile_pick,
    shard,
)
from hardneg.samplers.quantile_rules import off_diagonal_rows


def fake_embeddings(indices: list[int], step: int, dim: int = 8):
    """Deterministic stand-in for the trainer's pooled embeddings of a batch at a step."""
    g = torch.Generator().manual_seed(1000 * step + sum(indices))
    image = torch.randn(len(indices), dim, generator=g)
    return (
        torch.as_tensor(indices),
        image,
        image + 0.5 * torch.randn(len(indices), dim, generator=g),
    )


def warm(sampler: HardnessBatchSampler, n: int, dim: int = 8, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, dim, generator=g)
    sampler.update_embeddings(
        torch.arange(n), image, image + 0.3 * torch.randn(n, dim, generator=g)
    )


def run_epoch(
    sampler: HardnessBatchSampler, epoch: int, start_step: int = 0, limit: int | None = None
) -> list[list[int]]:
    """Iterate one epoch as a trainer does, feeding embeddings back after every batch."""
    sampler.set_epoch(epoch)
    out = []
    for step, batch in enumerate(sampler, start=start_step):
        out.append(batch)
        sampler.update_embeddings(*fake_embeddings(batch, step))
        if limit is not None and len(out) == limit:
            break
    return out


# ---------------------------------------------------------------------------- quantile pick
@pytest.mark.parametrize("seed", range(4))
def test_quantile_pick_matches_a_direct_sort(seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=13)
    excluded = rng.random(13) < 0.3
    excluded[0] = False
    cands = [j for j in range(13) if not excluded[j]]
    ascending = sorted(cands, key=lambda j: scores[j])
    for q in (0.0, 0.2, 0.5, 0.77, 1.0):
        position = int(np.floor(q * (len(cands) - 1) + 0.5))
        assert quantile_pick(scores, q, excluded) == ascending[position]
        assert (
            quantile_pick(torch.as_tensor(scores), q, torch.as_tensor(excluded))
            == ascending[position]
        )
    assert quantile_pick(scores, 1.0, excluded) == max(cands, key=lambda j: scores[j])
    assert quantile_pick(scores, 0.0, excluded) == min(cands, key=lambda j: scores[j])


def test_quantile_pick_breaks_ties_like_a_stable_sort():
    scores = np.array([0.3, 0.5, 0.3, 0.5, 0.5, 0.1, 0.3])
    excluded = np.array([False, False, False, True, False, False, False])
    cands = [j for j in range(7) if not excluded[j]]
    ascending = sorted(cands, key=lambda j: (scores[j], j))
    for position in range(len(cands)):
        q = position / (len(cands) - 1)
        assert quantile_pick(scores, q, excluded) == ascending[position]


def test_off_diagonal_rows_drop_exactly_the_diagonal():
    sim = torch.randn(5, 5)
    rows = off_diagonal_rows(sim)
    for i in range(5):
        assert rows[i].tolist() == [sim[i, j].item() for j in range(5) if j != i]


def test_quantile_pick_rejects_bad_arguments():
    with pytest.raises(ValueError, match="excluded"):
        quantile_pick([0.1, 0.2], 0.5, [True, True])
    with pytest.raises(ValueError, match="q must be in"):
        quantile_pick([0.1, 0.2], 1.5, [False, False])
    with pytest.raises(ValueError, match="excluded must be a bool"):
        quantile_pick([0.1, 0.2], 0.5, [0, 1])


# ---------------------------------------------------------------------------- chain
@pytest.mark.parametrize("q", [1.0, 0.0, 0.6])
def test_chain_picks_the_quantile_of_the_unused_candidates_and_never_repeats(q):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(23, 4))
    sim = emb @ emb.T
    result = chain_batches(sim, 5, lambda a, b: q, np.random.default_rng(1))
    assert len(result.batches) == 23 // 5
    flat = [i for b in result.batches for i in b]
    assert len(flat) == len(set(flat)) == 20
    used: set[int] = set()
    for batch in result.batches:  # replay with a brute-force sort
        assert len(batch) == 5
        used.add(batch[0])
        for anchor, pick in itertools.pairwise(batch):
            cands = sorted((j for j in range(23) if j not in used), key=lambda j: sim[anchor, j])
            assert pick == cands[int(np.floor(q * (len(cands) - 1) + 0.5))]
            used.add(pick)
    assert all(qs == [q] * 4 for qs in result.qs)


# ---------------------------------------------------------------------------- sampler
def test_random_mode_yields_disjoint_shuffled_batches_of_b_items():
    sampler = HardnessBatchSampler(50, HardnessSamplerConfig(batch_size=4, mode="random"))
    batches = run_epoch(sampler, 0)
    assert len(batches) == len(sampler) == 12
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 48 and all(0 <= i < 50 for i in flat)
    assert flat != sorted(flat)
    assert all(sampler.last_batch_stats[k] is None for k in ("q_mean", "fn_rate"))


def test_search_space_remainder_joins_the_last_space_and_leftovers_are_dropped():
    # N=50, |M|=16 → spaces of 16, 16, 18 → 4 + 4 + 4 batches of 4
    sampler = HardnessBatchSampler(50, HardnessSamplerConfig(4, search_space_size=16, mode="grit"))
    warm(sampler, 50)
    batches = run_epoch(sampler, 1)
    assert len(batches) == len(sampler) == 12
    assert len({i for b in batches for i in b}) == 48


def test_first_epoch_without_embeddings_is_random_then_grit_uses_q_one():
    sampler = HardnessBatchSampler(40, HardnessSamplerConfig(4, mode="grit"))
    first = run_epoch(sampler, 0)
    assert sampler.last_batch_stats["random"] is True
    assert len(first) == 10
    # epoch 0 fed embeddings of 40 items → complete store → epoch 1 uses the chain
    run_epoch(sampler, 1, limit=1)
    stats = sampler.last_batch_stats
    assert stats["random"] is False and stats["q_mean"] == 1.0 and stats["q_p90"] == 1.0


def test_fixed_q_zero_builds_easiest_batches_with_lower_similarity_than_grit():
    # pick_sim_mean is in different units (S vs one direction's cosine), so compare both modes
    # by the mean symmetric similarity S_ij of all in-batch pairs i ≠ j, from the store
    sims = {}
    for mode, q in (("grit", 1.0), ("fixed", 0.0)):
        sampler = HardnessBatchSampler(64, HardnessSamplerConfig(8, mode=mode, q=q, seed=3))
        warm(sampler, 64)
        sampler.set_epoch(1)
        values = []
        for batch in sampler:
            s = sampler.store.similarity(np.asarray(batch))
            values.append(float((s.sum() - s.diagonal().sum()) / (8 * 7)))
            assert sampler.last_batch_stats["q_mean"] == q
        sims[mode] = np.mean(values)
    assert sims["grit"] > sims["fixed"] + 0.1


def test_same_seed_same_batches_and_different_seed_differs():
    def batches(seed: int) -> list[list[int]]:
        sampler = HardnessBatchSampler(48, HardnessSamplerConfig(4, mode="fixed", q=0.7, seed=seed))
        warm(sampler, 48)
        return run_epoch(sampler, 0) + run_epoch(sampler, 1)

    assert batches(5) == batches(5)
    assert batches(5) != batches(6)


def test_epochs_differ():
    sampler = HardnessBatchSampler(48, HardnessSamplerConfig(4, mode="random"))
    assert run_epoch(sampler, 0) != run_epoch(sampler, 1)


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("mode", ["fixed", "progressive_hardening", "random"])
def test_resume_mid_epoch_continues_with_the_same_batches(mode):
    config = HardnessSamplerConfig(4, search_space_size=12, mode=mode, total_epochs=3, seed=1)
    full = HardnessBatchSampler(60, config)
    warm(full, 60)
    run_epoch(full, 0)
    expected = run_epoch(full, 1, start_step=100)

    part = HardnessBatchSampler(60, config)
    warm(part, 60)
    run_epoch(part, 0)
    head = run_epoch(part, 1, start_step=100, limit=5)  # stop inside the second search space
    state = _roundtrip(part.state_dict())

    resumed = HardnessBatchSampler(60, config)
    resumed.load_state_dict(state)
    tail = run_epoch(resumed, 1, start_step=105)
    assert head + tail == expected
    # the following epoch is identical too
    assert run_epoch(resumed, 2, start_step=200) == run_epoch(full, 2, start_step=200)


def test_resume_with_prefetched_batches_replays_the_unconsumed_ones():
    config = HardnessSamplerConfig(4, search_space_size=8, mode="grit", seed=2)
    full = HardnessBatchSampler(40, config)
    warm(full, 40)
    full.set_epoch(1)
    expected = list(full)

    part = HardnessBatchSampler(40, config)
    warm(part, 40)
    part.set_epoch(1)
    iterator = iter(part)
    prefetched = [next(iterator) for _ in range(5)]  # a DataLoader ran 2 batches ahead
    state = _roundtrip(part.state_dict(consumed=3))
    resumed = HardnessBatchSampler(40, config)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the trainer calls it again on resume: must not restart the epoch
    assert prefetched[:3] + list(resumed) == expected
    with pytest.raises(ValueError, match="consumed"):
        part.state_dict(consumed=9)
    other = HardnessBatchSampler(
        40, HardnessSamplerConfig(4, search_space_size=8, mode="grit", seed=3)
    )
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


def test_shards_cover_the_global_batch_exactly():
    batch = list(range(100, 112))
    for world in (1, 2, 3, 4, 6):
        parts = [shard(batch, rank, world) for rank in range(world)]
        assert [i for p in parts for i in p] == batch
        assert all(len(p) == len(batch) // world for p in parts)
    with pytest.raises(ValueError, match="multiple of the world size"):
        shard(batch, 0, 5)


def test_every_rank_iterates_the_same_global_batches():
    config = HardnessSamplerConfig(6, mode="fixed", q=0.8, seed=4)
    ranks = [HardnessBatchSampler(36, config) for _ in range(2)]
    for sampler in ranks:
        warm(sampler, 36)
    global0, global1 = (run_epoch(s, 1) for s in ranks)
    assert global0 == global1
    for batch in global0:
        assert shard(batch, 0, 2) + shard(batch, 1, 2) == batch


def test_fn_rate_matches_brute_force_count_of_same_semantic_pairs():
    ids = np.arange(40) % 7
    sampler = HardnessBatchSampler(40, HardnessSamplerConfig(5, mode="grit"), semantic_ids=ids)
    warm(sampler, 40)
    sampler.set_epoch(1)
    for batch in sampler:
        same = sum(1 for a in batch for b in batch if a != b and ids[a] == ids[b])
        assert sampler.last_batch_stats["fn_rate"] == pytest.approx(100.0 * same / (5 * 4))


def test_progressive_hardening_q_rises_from_q_start_to_q_end():
    config = HardnessSamplerConfig(
        4,
        search_space_size=16,
        mode="progressive_hardening",
        q_start=0.2,
        q_end=0.8,
        total_epochs=2,
    )
    sampler = HardnessBatchSampler(32, config)
    warm(sampler, 32)
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for _ in sampler:
            seen.append(sampler.last_batch_stats["q_mean"])
    # 2 spaces per epoch: progress (epoch + space/2)/2 ∈ {0, 0.25, 0.5, 0.75}
    assert sorted(set(np.round(seen, 9))) == [0.2, 0.35, 0.5, 0.65]
    assert seen == sorted(seen)


def test_config_and_constructor_validation():
    with pytest.raises(ValueError, match="mode"):
        HardnessSamplerConfig(4, mode="hardest")
    with pytest.raises(ValueError, match="q_end"):
        HardnessSamplerConfig(4, mode="progressive_softening", q_start=0.2, q_end=0.9)
    with pytest.raises(ValueError, match="search_space_size"):
        HardnessSamplerConfig(8, search_space_size=4)
    with pytest.raises(ValueError, match="FalconPolicy"):
        HardnessBatchSampler(20, HardnessSamplerConfig(4, mode="falcon"))
    with pytest.raises(ValueError, match="semantic_ids"):
        HardnessBatchSampler(20, HardnessSamplerConfig(4), semantic_ids=[1, 2])
    sampler = HardnessBatchSampler(20, HardnessSamplerConfig(4))
    with pytest.raises(ValueError, match="text_emb"):
        sampler.update_embeddings(torch.arange(2), torch.randn(2, 4), torch.randn(3, 4))


# ---------------------------------------------------------------------------- GRIT-VLP chain
def reference_grit_order(image: np.ndarray, text: np.ndarray, start: int) -> list[int]:
    """GRIT-VLP's grouping written out step by step: from item ``start``, alternately the
    hardest unused caption of the current image and the hardest unused image of the current
    caption, through the whole search space."""
    u = image / np.linalg.norm(image, axis=1, keepdims=True)
    v = text / np.linalg.norm(text, axis=1, keepdims=True)
    order = [start]
    unused = set(range(len(u))) - {start}
    from_image = True
    while unused:
        current = order[-1]
        best, best_score = -1, -np.inf
        for j in sorted(unused):
            # image of `current` vs caption j, or caption of `current` vs image j
            score = float(u[current] @ v[j]) if from_image else float(v[current] @ u[j])
            if score > best_score:
                best, best_score = j, score
        order.append(best)
        unused.remove(best)
        from_image = not from_image
    return order


def _reference_cut(order: list[int], b: int) -> list[list[int]]:
    return [order[i * b : (i + 1) * b] for i in range(len(order) // b)]


def test_grit_chain_matches_the_step_by_step_reference_from_its_start():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(26, 6))
    text = image + 0.8 * rng.normal(size=(26, 6))
    u = image / np.linalg.norm(image, axis=1, keepdims=True)
    v = text / np.linalg.norm(text, axis=1, keepdims=True)
    result = grit_chain(u @ v.T, 4, np.random.default_rng(3))
    order = [i for batch in result.batches for i in batch]
    expected = reference_grit_order(image, text, order[0])
    assert order == expected[:24]  # 6 batches of 4, the 2 leftover items dropped
    assert result.batches == _reference_cut(expected, 4)
    assert all(qs == [1.0] * 3 for qs in result.qs)


@pytest.mark.parametrize("seed", range(3))
def test_grit_mode_batches_are_gritvlp_alternating_chain_cut_into_batches(seed):
    n, b = 32, 4
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 8, generator=g)
    text = image + 0.8 * torch.randn(n, 8, generator=g)
    config = HardnessSamplerConfig(b, search_space_size=16, mode="grit", seed=seed)
    sampler = HardnessBatchSampler(n, config)
    sampler.update_embeddings(torch.arange(n), image, text)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert len(batches) == 8
    for half in (batches[:4], batches[4:]):  # one search space of 16 items each
        items = sorted(i for batch in half for i in batch)
        local = {item: pos for pos, item in enumerate(items)}
        got = sorted(tuple(local[i] for i in batch) for batch in half)
        # some start of the reference chain gives exactly these batches (order shuffled)
        candidates = []
        for start in range(16):
            order = reference_grit_order(image[items].numpy(), text[items].numpy(), start)
            candidates.append(sorted(tuple(x) for x in _reference_cut(order, b)))
        assert got in candidates
