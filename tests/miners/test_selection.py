"""The miner's selections: ``uniform`` (the control of BACL's Theorem 4.2), ``schedule`` (the
curriculum without the policy) and ``boundary`` (BNS)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hardneg.miners import BNSConfig, BoundaryAwareMiner


def _sims(n: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, 6, generator=g), dim=1)
    sim = x @ x.T
    return sim


@pytest.mark.parametrize("progress", [0.0, 10.0])  # α > 0 (easy) and α < 0 (hard)
def test_uniform_selection_picks_every_negative_equally_often(progress):
    n, k, rounds = 12, 3, 3000
    sim = _sims(n)
    positive = torch.eye(n, dtype=torch.bool)
    positive[0, 1] = True  # a second positive of anchor 0: never picked
    miner = BoundaryAwareMiner(BNSConfig(k=k, selection="uniform", seed=1))
    counts = torch.zeros(n, n)
    with torch.no_grad():
        for _ in range(rounds):
            picks = miner.pick(sim, positive, sim.diagonal(), progress, 10.0)
            counts.scatter_add_(1, picks.indices, torch.ones_like(picks.indices, dtype=torch.float))
    assert counts[positive].sum() == 0
    allowed = (~positive).sum(dim=1, keepdim=True).float()
    freq = counts / rounds
    expected = (k / allowed).expand_as(freq)
    # binomial std ≤ 0.009 at 3000 rounds: 0.04 is > 4 σ; the boundary selection misses it
    assert (freq - expected)[~positive].abs().max() < 0.04
    bns = BoundaryAwareMiner(BNSConfig(k=k, seed=1))
    tilted = torch.zeros(n, n)
    with torch.no_grad():
        for _ in range(rounds):
            picks = bns.pick(sim, positive, sim.diagonal(), progress, 10.0)
            tilted.scatter_add_(1, picks.indices, torch.ones_like(picks.indices, dtype=torch.float))
    assert ((tilted / rounds - expected)[~positive].abs().max()) > 0.08


def test_schedule_selection_ignores_the_policy():
    sim = _sims()
    positive = torch.eye(12, dtype=torch.bool)
    picks = []
    for scale in (0.0, 50.0):
        miner = BoundaryAwareMiner(BNSConfig(k=3, selection="schedule", seed=2))
        with torch.no_grad():
            for p in miner.policy.parameters():
                p.mul_(scale)
            picks.append(miner.pick(sim, positive, sim.diagonal(), 9.0, 10.0).indices)
    assert torch.equal(picks[0], picks[1])
    # the boundary selection does read the policy
    moved = []
    for scale in (0.0, 50.0):
        miner = BoundaryAwareMiner(BNSConfig(k=3, seed=2, init_output_scale=1.0))
        with torch.no_grad():
            for p in miner.policy.parameters():
                p.mul_(scale)
            moved.append(miner.pick(sim, positive, sim.diagonal(), 9.0, 10.0).indices)
    assert not torch.equal(moved[0], moved[1])


@pytest.mark.parametrize("selection", ["uniform", "schedule"])
def test_selections_without_a_policy_never_update_it(selection):
    from hardneg.losses import InfoNCELoss

    miner = BoundaryAwareMiner(BNSConfig(k=2, selection=selection))
    before = [p.detach().clone() for p in miner.policy.parameters()]
    x = torch.randn(6, 4)
    pairs = InfoNCELoss().prepare(x, x + 0.1 * torch.randn(6, 4))
    miner(pairs, 1.0, 2.0)
    miner.step_policy()
    assert all(torch.equal(a, b) for a, b in zip(before, miner.policy.parameters(), strict=True))


def test_a_bad_selection_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="boundary"):
        BNSConfig(selection="random")
