"""FALCON hardness scheduler (Beta policy, REINFORCE) and the sampler's falcon modes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy import stats

from hardneg.samplers import (
    FalconConfig,
    FalconPolicy,
    HardnessBatchSampler,
    HardnessSamplerConfig,
)

SMALL = {"m": 8, "hidden": 16}


def make_scheduler(seed: int = 0, **overrides) -> FalconPolicy:
    torch.manual_seed(seed)
    return FalconPolicy(FalconConfig(**{**SMALL, **overrides}))


def rows(n: int = 6, length: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, length, generator=torch.Generator().manual_seed(seed))


def test_summary_is_m_times_softmax_of_uniform_quantiles_of_the_row():
    sched = make_scheduler()
    r = rows()
    feats = sched.summarize(r)
    levels = np.linspace(0.0, 1.0, 8)
    for i in range(r.shape[0]):
        quant = np.quantile(r[i].double().numpy(), levels)  # numpy's linear interpolation
        expected = 8 * np.exp(quant) / np.exp(quant).sum()
        np.testing.assert_allclose(feats[i].numpy(), expected, rtol=1e-5)


def test_row_sorting_makes_the_beta_parameters_permutation_invariant():
    sched = make_scheduler()
    r = rows()
    perm = torch.randperm(r.shape[1], generator=torch.Generator().manual_seed(1))
    a1, b1 = sched(sched.summarize(r))
    a2, b2 = sched(sched.summarize(r[:, perm]))
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    torch.testing.assert_close(b1, b2, rtol=0, atol=0)


def test_initial_policy_is_centred_on_half():
    sched = make_scheduler()
    a, b = sched(sched.summarize(rows(n=20)))
    torch.testing.assert_close(a, torch.full_like(a, 2.0), atol=0.1, rtol=0)
    torch.testing.assert_close(a, b, atol=0.1, rtol=0)
    q, _ = sched.sample(rows(n=400, seed=3), np.random.default_rng(0))
    assert abs(q.mean().item() - 0.5) < 0.03


def test_beta_log_prob_equals_scipy_logpdf():
    sched = make_scheduler()
    r = rows(n=10)
    q, log_prob = sched.sample(r, np.random.default_rng(0))
    a, b = sched(sched.summarize(r))
    expected = stats.beta.logpdf(
        q.double().numpy(), a.detach().double().numpy(), b.detach().double().numpy()
    )
    np.testing.assert_allclose(log_prob.detach().double().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_sampling_is_seeded_by_the_numpy_generator():
    sched = make_scheduler()
    q1, _ = sched.sample(rows(), np.random.default_rng(7))
    q2, _ = sched.sample(rows(), np.random.default_rng(7))
    assert torch.equal(q1, q2)


@pytest.mark.parametrize("reward, direction", [(1.0, 1.0), (-1.0, -1.0)])
def test_reinforce_update_moves_log_prob_of_the_sampled_q_with_the_advantage(reward, direction):
    sched = make_scheduler(update_interval=1, entropy_weight=0.0, lr=1e-2)
    feats = sched.summarize(rows(n=4))
    q, log_prob_before = sched.sample_features(feats, np.random.default_rng(0))
    sched.record(feats, q)
    info = sched.reinforce(reward)  # baseline starts at 0 → advantage = reward
    assert info is not None and info["advantage_mean"] == pytest.approx(reward)
    with torch.no_grad():
        after = sched.distribution(feats).log_prob(q)
    assert direction * (after - log_prob_before.detach()).mean().item() > 0


def test_scheduler_updates_every_interval_with_moving_average_baseline():
    sched = make_scheduler(update_interval=3, baseline_momentum=0.5)
    feats = sched.summarize(rows(n=2))
    for _ in range(3):
        sched.record(feats, torch.full((2,), 0.5))
    before = [p.detach().clone() for p in sched.parameters()]
    assert sched.reinforce(2.0) is None  # advantage 2 − 0, baseline → 1
    assert sched.reinforce(4.0) is None  # advantage 4 − 1 = 3, baseline → 2.5
    assert all(torch.equal(p, q) for p, q in zip(before, sched.parameters()))
    info = sched.reinforce(0.0)  # advantage 0 − 2.5 = −2.5; update on all 6 decisions
    assert info["advantage_mean"] == pytest.approx((2.0 + 3.0 - 2.5) / 3)
    assert sched.baseline == pytest.approx(1.25)
    assert any(not torch.equal(p, q) for p, q in zip(before, sched.parameters()))


def test_rewards_go_to_recorded_batches_in_order():
    sched = make_scheduler(update_interval=1)
    feats = sched.summarize(rows(n=1))
    for value in (0.1, 0.7):
        sched.record(feats, torch.tensor([value]))
    assert sched.reinforce(1.0)["q_mean"] == pytest.approx(0.1)
    assert sched.reinforce(1.0)["q_mean"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="no recorded batch"):
        sched.reinforce(1.0)


def test_batch_level_scheduler_pools_the_row_summaries():
    instance = make_scheduler(seed=0)
    pooled = make_scheduler(seed=0, instance_level=False)
    r = rows()
    torch.testing.assert_close(pooled.summarize(r), instance.summarize(r).mean(0, keepdim=True))
    q, _ = pooled.sample(r, np.random.default_rng(0))
    assert q.shape == (1,)


def test_scheduler_state_dict_restores_optimizer_baseline_and_queue():
    sched = make_scheduler(update_interval=1)
    feats = sched.summarize(rows(n=3))
    for _ in range(2):
        sched.record(feats, torch.full((3,), 0.4))
    sched.reinforce(0.5)
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    other = make_scheduler(seed=9, update_interval=1)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.baseline == sched.baseline and other.pending_batches == 1
    assert sched.reinforce(1.0) == other.reinforce(1.0)
    for p, q in zip(sched.parameters(), other.parameters()):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------------- in the sampler
def warm(sampler: HardnessBatchSampler, n: int, dim: int = 8) -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(n, dim, generator=g)
    sampler.update_embeddings(
        torch.arange(n), image, image + 0.3 * torch.randn(n, dim, generator=g)
    )


def train_epoch(sampler, epoch, limit=None):
    """Trainer stand-in: reward each batch (a deterministic fake Δ), feed embeddings back."""
    sampler.set_epoch(epoch)
    out = []
    for batch in sampler:
        out.append(batch)
        g = torch.Generator().manual_seed(sum(batch))
        emb = torch.randn(len(batch), 8, generator=g)
        sampler.update_embeddings(torch.as_tensor(batch), emb, emb)
        sampler.policy.reinforce(float(np.sin(sum(batch))))
        if limit is not None and len(out) == limit:
            break
    return out


def falcon_sampler(
    mode: str = "falcon", n: int = 48, seed: int = 0, init_seed: int = 0
) -> HardnessBatchSampler:
    sched = make_scheduler(seed=init_seed, update_interval=2, instance_level=mode == "falcon")
    config = HardnessSamplerConfig(4, search_space_size=16, mode=mode, seed=seed)
    return HardnessBatchSampler(n, config, policy=sched)


def test_falcon_mode_builds_valid_batches_with_one_decision_per_anchor():
    sampler = falcon_sampler()
    warm(sampler, 48)
    sampler.set_epoch(1)
    iterator = iter(sampler)
    batch = next(iterator)
    assert len(set(batch)) == 4
    # the first search space (16 items → 4 batches) was built: 4 batches queued, 3 q each
    assert sampler.policy.pending_batches == 4
    assert all(q.shape == (3,) for _, q in sampler.policy._pending)
    stats = sampler.last_batch_stats
    assert 0.0 < stats["q_p10"] <= stats["q_p50"] <= stats["q_p90"] < 1.0
    rest = list(iterator)
    assert len({i for b in [batch, *rest] for i in b}) == 48


def test_batch_level_mode_uses_one_q_per_batch():
    sampler = falcon_sampler("batch_level")
    warm(sampler, 48)
    sampler.set_epoch(1)
    for _ in sampler:
        s = sampler.last_batch_stats
        assert s["q_p10"] == s["q_p90"] == s["q_mean"]
    assert all(q.shape == (1,) for _, q in sampler.policy._pending)


def test_mode_and_scheduler_granularity_must_agree():
    sched = make_scheduler(instance_level=False)
    with pytest.raises(ValueError, match="instance_level"):
        HardnessBatchSampler(20, HardnessSamplerConfig(4, mode="falcon"), policy=sched)


def test_falcon_sampler_is_deterministic_and_resumes_mid_epoch():
    def fresh():
        s = falcon_sampler(seed=3)
        warm(s, 48)
        return s

    full = fresh()
    expected = [train_epoch(full, e) for e in (1, 2)]
    again = fresh()
    assert [train_epoch(again, e) for e in (1, 2)] == expected

    part = fresh()
    head = train_epoch(part, 1, limit=6)  # inside the second search space
    buffer = io.BytesIO()
    torch.save(part.state_dict(), buffer)
    buffer.seek(0)
    resumed = falcon_sampler(seed=3, init_seed=11)  # other init: the state must restore it
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert head + train_epoch(resumed, 1) == expected[0]
    assert train_epoch(resumed, 2) == expected[1]
