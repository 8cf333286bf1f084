"""The miner's one handshake: prepared pairs + progress → MinedNegatives, scored by the loss."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace

import pytest
import torch

from hardneg.losses import InfoNCELoss
from hardneg.miners import BNSConfig, BoundaryAwareMiner, MinedLoss, gumbel_topk


def _pairs(b: int = 8, d: int = 16, seed: int = 0, ids=None):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, d, generator=g, requires_grad=True)
    txt = torch.randn(b, d, generator=g, requires_grad=True)
    loss = InfoNCELoss()
    return loss, loss.prepare(img, txt, ids), img, txt


def _shard(pairs, start: int, stop: int):
    """The view rank ``start // (stop - start)`` of a 2-rank run has of the same global batch."""
    ids = None if pairs.ids is None else pairs.ids[start:stop]
    return replace(
        pairs, image=pairs.image[start:stop], text=pairs.text[start:stop], ids=ids,
        offset=start, world=2,
    )  # fmt: skip


def test_gumbel_noise_rows_give_the_rows_of_the_whole_draw():
    logits = torch.randn(6, 9)
    full = gumbel_topk(logits, 3, 0.5, generator=torch.Generator().manual_seed(4))[2]
    part = gumbel_topk(
        logits[2:5], 3, 0.5, generator=torch.Generator().manual_seed(4), noise_rows=(2, 6)
    )[2]
    assert torch.equal(part, full[2:5])


def test_a_ddp_shard_mines_exactly_what_a_single_process_mines_for_its_rows():
    _, pairs, _, _ = _pairs(b=8, seed=1)
    single = BoundaryAwareMiner(BNSConfig(k=3, seed=7)).eval()
    rank1 = copy.deepcopy(single)
    whole = single(pairs, progress=1.0, total=4.0)
    part = rank1(_shard(pairs, 4, 8), progress=1.0, total=4.0)
    assert torch.equal(part.i2t_keep, whole.i2t_keep[4:8])
    assert torch.equal(part.t2i_keep, whole.t2i_keep[4:8])
    assert torch.equal(part.i2t.indices, whole.i2t.indices[4:8])


def test_restricted_loss_equals_cross_entropy_over_positive_and_picks_written_out():
    loss, pairs, img, txt = _pairs(b=6, seed=2)
    mined = BoundaryAwareMiner(BNSConfig(k=2, seed=3)).eval()(pairs, 0.0, 1.0)
    value = loss.loss(mined.restrict(pairs))
    scale = float(loss.scale().detach())
    u = torch.nn.functional.normalize(img.detach(), dim=1)
    v = torch.nn.functional.normalize(txt.detach(), dim=1)
    z = scale * u @ v.T
    total = 0.0
    for logits, keep in ((z, mined.i2t_keep), (z.T, mined.t2i_keep)):
        for i in range(6):
            cols = [i] + [j for j in range(6) if keep[i, j]]
            assert len(cols) == 3 and i not in cols[1:]
            total += float(torch.logsumexp(logits[i, cols], 0) - logits[i, i])
    assert float(value) == pytest.approx(total / 12, rel=1e-5)


def test_zero_curriculum_and_untrained_policy_pick_uniformly():
    """α ≡ 0 makes every selection logit 0: each of the C − 1 allowed candidates of a row is
    among the k picks with probability k / (C − 1) (3000 independent rows, one call)."""
    draws = 3000
    sim = torch.tensor([[0.9, 0.8, 0.1, -0.3, 0.5, 0.2]]).expand(draws, 6).contiguous()
    positive = torch.zeros(draws, 6, dtype=torch.bool)
    positive[:, 0] = True
    miner = BoundaryAwareMiner(BNSConfig(k=2, seed=0))
    miner.curriculum = lambda progress, total: 0.0
    freq = miner.pick(sim, positive, sim[:, 0], 0.5, 1.0).keep.float().mean(dim=0)
    assert float(freq[0]) == 0.0  # never the positive
    expected, sd = 2 / 5, (0.4 * 0.6 / draws) ** 0.5
    assert float((freq[1:] - expected).abs().max()) < 5 * sd
    # the control: the default curriculum at the start avoids the hardest candidate (0.8)
    tilted = BoundaryAwareMiner(BNSConfig(k=2, seed=0)).pick(sim, positive, sim[:, 0], 0.0, 1.0)
    assert float(tilted.keep.float().mean(dim=0)[1]) < expected - 5 * sd


def test_training_calls_step_the_policy_inside_the_miner_and_only_its_parameters():
    loss, pairs, img, _ = _pairs(seed=6)
    miner = BoundaryAwareMiner(BNSConfig(k=3, lr=1e-2))
    before = [p.detach().clone() for p in miner.policy_parameters()]
    mined = miner(pairs, 3.0, 4.0, loss.scale())
    moved = [not torch.equal(a, p) for a, p in zip(before, miner.policy_parameters())]
    assert all(moved)  # stepped at once (defer_policy_step is False)
    assert all(p.grad is None for p in miner.policy_parameters())
    assert img.grad is None  # the miner never back-propagates into the features
    loss.loss(mined.restrict(pairs)).backward()
    assert img.grad is not None


def test_deferred_calls_wait_for_step_policy():
    _, pairs, _, _ = _pairs(seed=7)
    miner = BoundaryAwareMiner(BNSConfig(k=3))
    miner.defer_policy_step = True
    before = [p.detach().clone() for p in miner.policy_parameters()]
    miner(pairs, 3.0, 4.0)
    miner(pairs, 3.0, 4.0)
    assert all(torch.equal(a, p) for a, p in zip(before, miner.policy_parameters()))
    miner.step_policy()
    assert [s["step"].item() for s in miner.optimizer.state.values()] == [1.0] * 4


def test_evaluation_mode_or_no_grad_never_trains_the_policy():
    _, pairs, _, _ = _pairs(seed=8)
    miner = BoundaryAwareMiner(BNSConfig(k=3))
    before = [p.detach().clone() for p in miner.policy_parameters()]
    miner.eval()(pairs, 1.0, 2.0)
    with torch.no_grad():
        miner.train()(pairs, 1.0, 2.0)
    assert all(torch.equal(a, p) for a, p in zip(before, miner.policy_parameters()))


def test_a_short_batch_clips_k_with_one_warning(caplog):
    _, pairs, _, _ = _pairs(b=3, seed=9)
    miner = BoundaryAwareMiner(BNSConfig(k=4)).eval()
    with caplog.at_level(logging.WARNING, logger="hardneg.miners.bns"):
        first = miner(pairs, 0.0, 1.0)
        miner(pairs, 0.0, 1.0)
    assert first.i2t.indices.shape == (3, 2)
    assert sum("picking k=2 instead of k=4" in r.getMessage() for r in caplog.records) == 1


def test_mined_loss_scores_every_negative_in_evaluation():
    loss = InfoNCELoss()
    crit = MinedLoss(loss, BoundaryAwareMiner(BNSConfig(k=2)))
    img, txt = torch.randn(6, 8), torch.randn(6, 8)
    with torch.no_grad():
        assert float(crit(img, txt)) == pytest.approx(float(loss(img, txt)))


def test_result_from_other_features_is_refused_with_the_fix():
    _, pairs, _, _ = _pairs(b=6, seed=10)
    _, other, _, _ = _pairs(b=4, seed=10)
    mined = BoundaryAwareMiner(BNSConfig(k=2)).eval()(pairs, 0.0, 1.0)
    with pytest.raises(ValueError, match="mine them from the same features"):
        mined.restrict(other)
