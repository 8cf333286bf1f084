"""BACL boundary-aware negative sampler: curriculum, Gumbel top-k, policy and selection."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from hardneg.losses import InfoNCELoss
from hardneg.miners import (
    CURRICULUM_PRESETS,
    BNSConfig,
    BoundaryAwareMiner,
    LogisticCurriculum,
    boundary_scores,
    gumbel_topk,
    hardest_negative,
)
from hardneg.miners.result import rank_percentile


def sigmoid_via_tanh(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(x / 2.0))


def unit_sims(n_anchor: int, n_cand: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n_anchor, dim, generator=g), dim=1)
    c = F.normalize(torch.randn(n_cand, dim, generator=g), dim=1)
    return a @ c.T


# ---------------------------------------------------------------------------- curriculum
def test_curriculum_values_at_start_middle_end_match_hand_computation():
    cur = LogisticCurriculum()  # (0.3, −0.5, 1.5), η₀ = total/2 = 5
    # start: σ(−1.5·(0−5)) = σ(7.5) = 0.999447221…  → −0.5 + 0.8·0.999447221 = 0.299557777
    assert cur(0.0, 10.0) == pytest.approx(0.2995577770, abs=1e-9)
    assert cur(0.0, 10.0) == pytest.approx(-0.5 + 0.8 * sigmoid_via_tanh(7.5), abs=1e-12)
    # middle: σ(0) = 1/2 → the mean of both ends
    assert cur(5.0, 10.0) == pytest.approx(-0.1, abs=1e-12)
    # end: σ(−7.5) = 0.000552779… → −0.499557777
    assert cur(10.0, 10.0) == pytest.approx(-0.4995577770, abs=1e-9)
    # one epoch past the midpoint: σ(−1.5) = 0.182425524 → −0.5 + 0.8·0.182425524
    assert cur(6.0, 10.0) == pytest.approx(-0.354059581, abs=1e-9)


def test_curriculum_explicit_midpoint_overrides_half_of_training():
    cur = LogisticCurriculum(alpha_early=1.0, alpha_late=-1.0, kappa=2.0, midpoint=1.0)
    assert cur(1.0, 100.0) == pytest.approx(0.0, abs=1e-12)
    assert cur(2.0, 100.0) == pytest.approx(-1.0 + 2.0 * sigmoid_via_tanh(-2.0), abs=1e-12)


def test_curriculum_is_monotone_from_early_to_late():
    cur = LogisticCurriculum()
    values = [cur(e / 10, 10.0) for e in range(0, 101)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[0] > 0 > values[-1]


def test_curriculum_presets_ordering():
    default, aggressive, shallow = (
        CURRICULUM_PRESETS[k] for k in ("default", "aggressive", "shallow")
    )
    assert tuple(default[:3]) == (0.3, -0.5, 1.5)
    # aggressive: more negative late α, steeper, earlier
    assert aggressive.alpha_late < default.alpha_late
    assert aggressive.kappa > default.kappa
    assert aggressive.midpoint_fraction < default.midpoint_fraction
    # shallow: late α closer to 0 (still ≤ 0) and flatter
    assert default.alpha_late < shallow.alpha_late <= 0.0
    assert shallow.kappa < default.kappa
    # late in training the α values order accordingly
    late = {k: LogisticCurriculum.from_preset(k)(9.0, 10.0) for k in CURRICULUM_PRESETS}
    assert late["aggressive"] < late["default"] < late["shallow"]


def test_curriculum_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kappa"):
        LogisticCurriculum(kappa=0.0)
    with pytest.raises(ValueError, match="total_epochs"):
        LogisticCurriculum()(1.0, 0.0)
    with pytest.raises(ValueError, match="preset"):
        LogisticCurriculum.from_preset("steep")


# ---------------------------------------------------------------------------- gumbel top-k
@pytest.mark.parametrize("seed", range(5))
def test_gumbel_topk_selects_exactly_k_distinct_allowed_candidates(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 10, generator=g) * 3
    mask = torch.rand(6, 10, generator=g) > 0.3
    mask[:, :4] = True  # at least 4 allowed per row
    hard, soft, idx = gumbel_topk(logits, 3, tau=0.5, mask=mask, generator=g)
    assert idx.shape == (6, 3)
    for row in range(6):
        picked = idx[row].tolist()
        assert len(set(picked)) == 3
        assert all(bool(mask[row, j]) for j in picked)
        expected = torch.zeros(10)
        expected[picked] = 1.0
        assert torch.equal(hard[row], expected)  # value exactly 0/1
    assert torch.all(soft[~mask] == 0)
    torch.testing.assert_close(soft.sum(dim=1), torch.full((6,), 3.0), atol=1e-5, rtol=0)


def test_gumbel_topk_never_picks_a_positive():
    logits = torch.zeros(4, 4)
    logits.fill_diagonal_(50.0)  # positives would win by far if allowed
    hard, _, idx = gumbel_topk(logits, 2, mask=~torch.eye(4, dtype=torch.bool))
    assert not bool(hard.diagonal().any())
    assert not bool((idx == torch.arange(4).unsqueeze(1)).any())


def test_gumbel_topk_k1_samples_from_softmax_of_logits():
    # Gumbel-max: P(pick j) = softmax(ℓ)_j ; compare empirical frequencies on 20000 rows
    row = torch.tensor([0.0, 1.0, -1.0, 0.5])
    logits = row.expand(20000, 4).contiguous()
    _, _, idx = gumbel_topk(logits, 1, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(idx[:, 0], minlength=4).float() / 20000
    expected = torch.exp(row) / torch.exp(row).sum()
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)


def test_gumbel_topk_soft_approaches_hard_at_low_temperature():
    logits = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    hard, soft, _ = gumbel_topk(logits, 3, tau=1e-3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(soft, hard.detach(), atol=1e-3, rtol=0)


def test_gumbel_topk_straight_through_gradient_equals_soft_gradient():
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(3), requires_grad=True)
    w = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    hard, _, _ = gumbel_topk(logits, 2, tau=0.7, generator=torch.Generator().manual_seed(5))
    (hard * w).sum().backward()
    grad_st = logits.grad.clone()
    logits.grad = None
    _, soft, _ = gumbel_topk(logits, 2, tau=0.7, generator=torch.Generator().manual_seed(5))
    (soft * w).sum().backward()
    torch.testing.assert_close(grad_st, logits.grad)
    assert grad_st.abs().sum() > 0


def test_gumbel_topk_k_larger_than_allowed_raises_naming_k_and_count():
    mask = torch.tensor([[True, True, False], [True, True, True]])
    with pytest.raises(ValueError, match=r"k=3.*only 2 allowed"):
        gumbel_topk(torch.zeros(2, 3), 3, mask=mask)


# ---------------------------------------------------------------------------- helpers
def test_boundary_scores_subtract_the_positive_similarity():
    sim = torch.tensor([[0.5, 0.25, -0.5], [0.75, 0.125, 0.0]])
    bs = boundary_scores(sim, torch.tensor([0, 2]))
    assert bs.tolist() == [[0.0, -0.25, -1.0], [0.75, 0.125, 0.0]]


def test_rank_percentile_matches_brute_force_rank_among_allowed():
    sim = unit_sims(5, 7, 4, seed=0)
    allowed = ~torch.eye(5, 7, dtype=torch.bool)
    allowed[0, 3] = False
    pct = rank_percentile(sim, allowed)
    for i in range(5):
        cols = [j for j in range(7) if allowed[i, j]]
        for j in cols:
            below = sum(1 for c in cols if sim[i, c] < sim[i, j])
            assert pct[i, j].item() == pytest.approx(below / (len(cols) - 1))
        for j in range(7):
            if not allowed[i, j]:
                assert pct[i, j].item() == 0.0


def test_hardest_negative_is_the_selected_candidate_with_largest_similarity():
    sampler = BoundaryAwareMiner(BNSConfig(k=3))
    sim = unit_sims(6, 6, 8, seed=1)
    pos = torch.eye(6, dtype=torch.bool)
    sel = sampler.pick(sim, pos, sim.diagonal(), 0.0, 4.0)
    hardest = hardest_negative(sel.indices, sim)
    for i in range(6):
        chosen = sel.indices[i].tolist()
        assert hardest[i].item() == max(chosen, key=lambda j: sim[i, j].item())


# ---------------------------------------------------------------------------- sampler
def test_sampler_never_selects_positives_with_extra_hard_negative_candidates():
    b, k_extra = 5, 2
    sim = unit_sims(b, b + k_extra * b, 8, seed=2)  # in-batch captions then 2 extra per anchor
    positive = torch.zeros(b, b + k_extra * b, dtype=torch.bool)
    positive[torch.arange(b), torch.arange(b)] = True
    sel = BoundaryAwareMiner(BNSConfig(k=4)).pick(sim, positive, sim.diagonal(), 1.0, 2.0)
    assert sel.indices.shape == (b, 4)
    assert not bool((sel.keep & positive).any())
    assert torch.equal(sel.keep.sum(dim=1), torch.full((b,), 4))


def test_sampler_k_larger_than_candidates_raises():
    sim = unit_sims(4, 4, 8, seed=3)
    sampler = BoundaryAwareMiner(BNSConfig(k=4))  # only 3 negatives per row
    with pytest.raises(ValueError, match=r"k=4.*only 3 allowed"):
        sampler.pick(sim, torch.eye(4, dtype=torch.bool), sim.diagonal(), 0.0, 1.0)


def test_policy_loss_gradient_reaches_every_policy_parameter_and_nothing_else():
    sampler = BoundaryAwareMiner(BNSConfig(k=2))
    sim = unit_sims(6, 6, 8, seed=4).requires_grad_(True)
    sel = sampler.pick(sim, torch.eye(6, dtype=torch.bool), sim.diagonal(), 1.0, 3.0)
    sel.policy_loss.backward()
    for name, p in sampler.policy.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert sim.grad is None  # similarities are detached: the policy loss does not train encoders
    assert not sel.keep.requires_grad and not sel.weights.requires_grad


def test_policy_loss_equals_reward_formula_without_entropy():
    sampler = BoundaryAwareMiner(BNSConfig(k=3, entropy_weight=0.0))
    sim = unit_sims(5, 5, 8, seed=5)
    sel = sampler.pick(sim, torch.eye(5, dtype=torch.bool), sim.diagonal(), 7.0, 10.0)
    bs = sim - sim.diagonal().unsqueeze(1)
    alpha = sampler.curriculum(7.0, 10.0)
    reward = -alpha * bs * (1 - torch.eye(5))
    expected = -(sel.weights * reward).sum(dim=1).mean()
    torch.testing.assert_close(sel.policy_loss.detach(), expected)
    assert alpha == pytest.approx(LogisticCurriculum()(7.0, 10.0))
    assert sampler.temperature(7.0, 10.0) == pytest.approx(1.0 * (0.1 / 1.0) ** 0.7)


def _mean_selected_bs(progress: float) -> tuple[float, float]:
    """Mean BS of picked negatives vs the uniform-selection mean (exact expectation)."""
    torch.manual_seed(0)
    sampler = BoundaryAwareMiner(BNSConfig(k=8, init_output_scale=0.0, seed=11))
    n = 128
    sim = unit_sims(n, n, 6, seed=6)
    positive = torch.eye(n, dtype=torch.bool)
    bs = sim - sim.diagonal().unsqueeze(1)
    sel = sampler.pick(sim, positive, sim.diagonal(), progress, 10.0)
    picked = bs.gather(1, sel.indices).mean().item()
    uniform = bs[~positive].mean().item()  # every row has n−1 negatives: the uniform mean
    return picked, uniform


def test_early_curriculum_selects_lower_boundary_scores_than_uniform():
    picked, uniform = _mean_selected_bs(progress=0.0)  # α ≈ +0.3: suppress hard negatives
    assert picked < uniform - 0.01


def test_late_curriculum_selects_higher_boundary_scores_than_uniform():
    picked, uniform = _mean_selected_bs(progress=10.0)  # α ≈ −0.5: favour hard negatives
    assert picked > uniform + 0.01


def test_policy_training_raises_the_curriculum_reward():
    # late (α<0): reward −α·BS favours large BS; a few policy steps should raise E_π[BS]
    sampler = BoundaryAwareMiner(BNSConfig(k=4, lr=1e-2, entropy_weight=0.0, seed=1))
    sim = unit_sims(32, 32, 6, seed=7)
    positive = torch.eye(32, dtype=torch.bool)
    bs = sim - sim.diagonal().unsqueeze(1)

    def expected_bs() -> float:
        with torch.no_grad():
            priority = sampler.priorities(sim, positive, sim.diagonal(), 10.0, 10.0)
            alpha = sampler.curriculum(10.0, 10.0)
            logits = priority - alpha * sampler.config.logit_scale * bs
            probs = torch.softmax(logits.masked_fill(positive, float("-inf")), dim=1)
        return float((probs * bs.masked_fill(positive, 0.0)).sum(dim=1).mean())

    before = expected_bs()
    for _ in range(30):
        sampler.pick(sim, positive, sim.diagonal(), 10.0, 10.0).policy_loss.backward()
        sampler.step_policy()
    assert expected_bs() > before + 0.01


def test_state_dict_roundtrip_reproduces_the_next_selection():
    sim = unit_sims(8, 8, 8, seed=8)
    positive = torch.eye(8, dtype=torch.bool)
    a = BoundaryAwareMiner(BNSConfig(k=3, seed=3))
    a.pick(sim, positive, sim.diagonal(), 0.5, 2.0).policy_loss.backward()
    a.step_policy()
    state = a.state_dict()
    b = BoundaryAwareMiner(BNSConfig(k=3, seed=99))
    b.load_state_dict(state)
    sel_a = a.pick(sim, positive, sim.diagonal(), 1.0, 2.0)
    sel_b = b.pick(sim, positive, sim.diagonal(), 1.0, 2.0)
    assert torch.equal(sel_a.indices, sel_b.indices)
    torch.testing.assert_close(sel_a.policy_loss, sel_b.policy_loss)
    assert b.optimizer.state_dict()["state"]  # Adam moments restored


def test_same_seed_gives_same_selection():
    sim = unit_sims(8, 8, 8, seed=9)
    positive = torch.eye(8, dtype=torch.bool)
    torch.manual_seed(0)
    s1 = BoundaryAwareMiner(BNSConfig(k=3, seed=5))
    torch.manual_seed(0)
    s2 = BoundaryAwareMiner(BNSConfig(k=3, seed=5))
    i1 = s1.pick(sim, positive, sim.diagonal(), 0.0, 1.0).indices
    i2 = s2.pick(sim, positive, sim.diagonal(), 0.0, 1.0).indices
    assert torch.equal(i1, i2)


def test_sampler_rejects_bad_inputs():
    sampler = BoundaryAwareMiner(BNSConfig(k=1))
    sim = unit_sims(3, 3, 4, seed=10)
    with pytest.raises(ValueError, match="positive_mask"):
        sampler.pick(sim, torch.eye(3), sim.diagonal(), 0.0, 1.0)
    with pytest.raises(ValueError, match="pos_sim"):
        sampler.pick(sim, torch.eye(3, dtype=torch.bool), sim[:2, 0], 0.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        sampler.pick(sim * float("nan"), torch.eye(3, dtype=torch.bool), sim.diagonal(), 0.0, 1.0)
    with pytest.raises(ValueError, match="curriculum"):
        BNSConfig(curriculum="fast")
    with pytest.raises(ValueError, match="logit_scale"):
        sampler.pick(sim, torch.eye(3, dtype=torch.bool), sim.diagonal(), 0.0, 1.0, logit_scale=0.0)
    with pytest.raises(ValueError, match="logit_scale"):
        BNSConfig(logit_scale=float("inf"))


# ---------------------------------------------------------------------------- curriculum strength
# The setting of the curriculum checks: B=128 anchors, k=16, negative cosines ~ N(0.1, 0.15),
# positive cosine 0.6, so BS = s_ij − 0.6 ~ N(−0.5, 0.15).
CUR_B, CUR_K, CUR_TOTAL = 128, 16, 10.0


def curriculum_sims(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    # offset: a generator seeded like the sampler's would draw noise correlated with the sims
    g = torch.Generator().manual_seed(10_000 + seed)
    sim = 0.1 + 0.15 * torch.randn(CUR_B, CUR_B, generator=g)
    sim.fill_diagonal_(0.6)
    return sim, torch.eye(CUR_B, dtype=torch.bool)


def pick_statistics(sampler, sim, positive, progress) -> dict[str, float]:
    """Mean BS of the picks and, per row, of the uniform / easiest-k / hardest-k choice."""
    bs = boundary_scores(sim, torch.arange(CUR_B))
    with torch.no_grad():
        sel = sampler.pick(sim, positive, sim.diagonal(), progress, CUR_TOTAL)
    neg = bs.masked_fill(positive, float("nan"))
    ordered = neg.sort(dim=1).values[:, : CUR_B - 1]  # NaN (the positive) sorts last
    return {
        "picked": bs.gather(1, sel.indices).mean().item(),
        "uniform": bs[~positive].mean().item(),
        "easiest": ordered[:, :CUR_K].mean().item(),
        "hardest": ordered[:, -CUR_K:].mean().item(),
    }


def test_fresh_sampler_at_the_start_picks_clearly_easier_than_uniform():
    sim, positive = curriculum_sims(0)
    stats = pick_statistics(BoundaryAwareMiner(BNSConfig(k=CUR_K)), sim, positive, 0.0)
    bound = stats["uniform"] - 0.25 * (stats["uniform"] - stats["easiest"])
    assert stats["picked"] <= bound, stats


def test_fresh_sampler_at_the_end_picks_clearly_harder_than_uniform():
    sim, positive = curriculum_sims(1)
    stats = pick_statistics(BoundaryAwareMiner(BNSConfig(k=CUR_K)), sim, positive, CUR_TOTAL)
    bound = stats["uniform"] + 0.25 * (stats["hardest"] - stats["uniform"])
    assert stats["picked"] >= bound, stats


def test_trained_policy_follows_the_sign_flip_of_the_curriculum():
    # train the policy through the schedule on fresh batches; just after α(η) turns negative
    # (η = 5.5 of 10: α ≈ −0.25) the picks must already be harder than uniform, and a policy
    # trained to the end must pick harder than the untrained (curriculum-only) sampler
    sampler = BoundaryAwareMiner(BNSConfig(k=CUR_K, seed=3))
    fresh = BoundaryAwareMiner(BNSConfig(k=CUR_K, seed=3))
    steps, check_step = 200, 110
    for step in range(steps + 1):
        eta = CUR_TOTAL * step / steps
        sim, positive = curriculum_sims(100 + step)
        if step == check_step:
            assert sampler.curriculum(eta, CUR_TOTAL) < 0
            stats = pick_statistics(sampler, *curriculum_sims(7), eta)
            assert stats["picked"] > stats["uniform"] + 0.01, stats
        sampler.pick(sim, positive, sim.diagonal(), eta, CUR_TOTAL).policy_loss.backward()
        sampler.step_policy()
    end = pick_statistics(sampler, *curriculum_sims(8), CUR_TOTAL)
    untrained = pick_statistics(fresh, *curriculum_sims(8), CUR_TOTAL)
    assert end["picked"] > untrained["picked"], (end, untrained)


@pytest.mark.parametrize("progress", [0.0, CUR_TOTAL])
def test_policy_update_moves_priorities_toward_the_reward(progress):
    # R = −α(η)·BS: at α > 0 the update must raise the priority of easy (low-BS) negatives,
    # at α < 0 that of hard ones. Δp over a few Adam steps must correlate with R.
    sampler = BoundaryAwareMiner(BNSConfig(k=CUR_K, entropy_weight=0.0, seed=4))
    sim, positive = curriculum_sims(5)
    alpha = sampler.curriculum(progress, CUR_TOTAL)
    reward = (-alpha * boundary_scores(sim, torch.arange(CUR_B)))[~positive]
    before = sampler.priorities(sim, positive, sim.diagonal(), progress, CUR_TOTAL)[~positive]
    for _ in range(5):
        sampler.pick(sim, positive, sim.diagonal(), progress, CUR_TOTAL).policy_loss.backward()
        sampler.step_policy()
    after = sampler.priorities(sim, positive, sim.diagonal(), progress, CUR_TOTAL)[~positive]
    delta = after - before
    corr = torch.corrcoef(torch.stack([delta, reward]))[0, 1].item()
    assert corr > 0.5, corr


# ---------------------------------------------------------------------------- denominator
def _selected_pairs(seed: int, b: int = 8, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, 6, generator=g).requires_grad_(True)
    txt = torch.randn(b, 6, generator=g).requires_grad_(True)
    loss_fn = InfoNCELoss(temperature=0.2, learn_temperature=False)
    pairs = loss_fn.prepare(img, txt)
    sampler = BoundaryAwareMiner(BNSConfig(k=k, seed=100 + seed))
    sim = (pairs.all_image @ pairs.all_text.T).detach()
    eye = torch.eye(b, dtype=torch.bool)
    sel_i2t = sampler.pick(sim, eye, sim.diagonal(), 1.0, 4.0, logit_scale=5.0)
    sel_t2i = sampler.pick(sim.T, eye, sim.diagonal(), 1.0, 4.0, logit_scale=5.0)
    return img, txt, loss_fn, pairs, sampler, sel_i2t, sel_t2i


def test_weighted_denominator_matches_the_weighted_cross_entropy_written_out():
    img, txt, loss_fn, pairs, _, sel_i2t, sel_t2i = _selected_pairs(0)
    got = loss_fn.loss(pairs.reweight(sel_i2t.weights, sel_t2i.weights))
    u, v = F.normalize(img, dim=1), F.normalize(txt, dim=1)
    z = (u @ v.T / 0.2).detach().double()

    def direction(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for i in range(z.shape[0]):
            denom = math.exp(z[i, i])
            denom += sum(float(w[i, j]) * math.exp(z[i, j]) for j in range(z.shape[1]) if j != i)
            total += -z[i, i].item() + math.log(denom)
        return torch.tensor(total / z.shape[0])

    expected = 0.5 * (direction(z, sel_i2t.weights) + direction(z.T, sel_t2i.weights))
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)


def test_weighted_denominator_with_the_hard_k_hot_equals_the_restricted_loss():
    _, _, loss_fn, pairs, _, sel_i2t, sel_t2i = _selected_pairs(1)
    weighted = loss_fn.loss(pairs.reweight(sel_i2t.keep.float(), sel_t2i.keep.float()))
    restricted = loss_fn.loss(pairs.restrict(sel_i2t.keep, sel_t2i.keep))
    torch.testing.assert_close(weighted, restricted)


@pytest.mark.parametrize("denominator", ["selected", "weighted"])
def test_policy_gets_the_gumbel_gradient_of_its_reward_in_both_denominators(denominator):
    img, txt, loss_fn, pairs, sampler, sel_i2t, sel_t2i = _selected_pairs(2)
    if denominator == "weighted":
        scored = pairs.reweight(sel_i2t.weights, sel_t2i.weights)
    else:
        scored = pairs.restrict(sel_i2t.keep, sel_t2i.keep)
    policy_loss = sel_i2t.policy_loss + sel_t2i.policy_loss
    (loss_fn.loss(scored) + policy_loss).backward(retain_graph=True)
    with_loss = [p.grad.clone() for p in sampler.policy_parameters()]
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0  # encoders trained
    assert all(bool(g.abs().sum() > 0) for g in with_loss)  # the policy is trained
    sampler.optimizer.zero_grad()
    policy_loss.backward()
    # the policy's gradient is exactly that of its reward: the contrastive loss does not
    # reach it (otherwise it would learn to pick the easy negatives that lower the loss)
    for a, b in zip(with_loss, (p.grad for p in sampler.policy_parameters()), strict=True):
        torch.testing.assert_close(a, b)


def test_reweight_rejects_negative_weights():
    _, _, _, pairs, _, sel_i2t, sel_t2i = _selected_pairs(3)
    with pytest.raises(ValueError, match="weights must be ≥ 0"):
        pairs.reweight(-sel_i2t.weights, sel_t2i.weights)
