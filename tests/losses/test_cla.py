"""BACL contrastive local attention (CLA) loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hardneg.losses.cla import ContrastiveLocalAttentionLoss, contrastive_local_attention_loss

EPS = 1e-6
# one caption (2 tokens × 3 patches), positive and hardest-negative attention maps
A_POS = [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]
A_NEG = [[0.2, 0.25, 0.55], [0.3, 0.5, 0.2]]
# ΔA = [[0.4, 0.05, 0.45], [0.2, 0.3, 0.5]]  → cells by ΔA: (1,2) 0.5, (0,2) 0.45, (0,0) 0.4, …


def maps(pos, neg, dtype=torch.float64):
    return (
        torch.tensor(pos, dtype=dtype).unsqueeze(0),
        torch.tensor(neg, dtype=dtype).unsqueeze(0).requires_grad_(True),
    )


def test_hand_computed_example_top_half_of_cells():
    pos, neg = maps(A_POS, A_NEG)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss = contrastive_local_attention_loss(
        pos, neg, mask, rho=0.5, beta=1.0, eps=EPS, reduction="mean"
    )
    # Ω = ⌈0.5·6⌉ = 3 cells: (1,2), (0,2), (0,0);  A_b = A⁻·(1 + ΔA)
    a_b = [0.2 * 1.5, 0.55 * 1.45, 0.2 * 1.4]  # 0.3, 0.7975, 0.28
    expected = sum(-math.log(v + EPS) for v in a_b) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert loss.item() == pytest.approx(0.9010679, abs=1e-6)  # 0.9010705 at ε = 0
    # the paper's sum over Ω (the default)
    summed = contrastive_local_attention_loss(pos, neg, mask, rho=0.5, beta=1.0, eps=EPS)
    assert summed.item() == pytest.approx(3 * expected, rel=1e-12)


def test_small_rho_keeps_at_least_one_cell():
    pos, neg = maps(A_POS, A_NEG)
    loss = contrastive_local_attention_loss(
        pos, neg, torch.ones(1, 2, dtype=torch.bool), rho=0.01, beta=2.0, eps=EPS
    )
    assert loss.item() == pytest.approx(-math.log(0.2 * (1 + 2 * 0.5) + EPS), rel=1e-12)


def test_batch_loss_is_the_mean_of_per_pair_means_and_padding_is_never_in_omega():
    pos1, neg1 = maps(A_POS, A_NEG)
    # second pair: token 1 is padding with a huge ΔA that must be ignored
    pos2, neg2 = maps([[0.1, 0.8, 0.1], [1.0, 0.0, 0.0]], [[0.5, 0.1, 0.4], [0.0, 0.0, 1.0]])
    pos = torch.cat([pos1, pos2])
    neg = torch.cat([neg1, neg2]).detach().requires_grad_(True)
    mask = torch.tensor([[True, True], [True, False]])
    loss = contrastive_local_attention_loss(
        pos, neg, mask, rho=0.5, beta=1.0, eps=EPS, reduction="mean"
    )
    pair1 = sum(-math.log(v + EPS) for v in (0.3, 0.7975, 0.28)) / 3
    # pair 2: 3 valid cells, ΔA row0 = [0.4, 0.7, 0.3] → Ω = ⌈1.5⌉ = 2 cells: (0,1), (0,0)
    pair2 = (-math.log(0.1 * 1.7 + EPS) - math.log(0.5 * 1.4 + EPS)) / 2
    assert loss.item() == pytest.approx((pair1 + pair2) / 2, rel=1e-12)
    loss.backward()
    assert torch.all(neg.grad[1, 1] == 0)  # padding cells get no gradient


def test_padding_values_do_not_change_the_loss():
    g = torch.Generator().manual_seed(0)
    pos = torch.softmax(torch.randn(3, 5, 7, generator=g), dim=-1)
    neg = torch.softmax(torch.randn(3, 5, 7, generator=g), dim=-1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    base = contrastive_local_attention_loss(pos, neg, mask, rho=0.2)
    pos2, neg2 = pos.clone(), neg.clone()
    pos2[~mask] = 1.0
    neg2[~mask] = 0.0  # maximal ΔA on padding
    assert contrastive_local_attention_loss(pos2, neg2, mask, rho=0.2).item() == pytest.approx(
        base.item(), rel=1e-6
    )


def test_detached_delta_gradient_reaches_negative_attention_only_with_the_formula_value():
    pos, neg = maps(A_POS, A_NEG)
    pos.requires_grad_(True)
    loss = contrastive_local_attention_loss(
        pos, neg, torch.ones(1, 2, dtype=torch.bool), rho=0.5, beta=1.0, eps=EPS,
        detach_delta=True, reduction="mean",
    )  # fmt: skip
    loss.backward()
    # ΔA is detached: ∂L/∂A⁻ = −(1+ΔA)/(A_b+ε)/|Ω| on Ω, 0 elsewhere; A⁺ gets no gradient
    expected = torch.zeros(2, 3, dtype=torch.float64)
    for (t, p), delta in (((1, 2), 0.5), ((0, 2), 0.45), ((0, 0), 0.4)):
        a_b = A_NEG[t][p] * (1 + delta)
        expected[t, p] = -(1 + delta) / (a_b + EPS) / 3
    torch.testing.assert_close(neg.grad[0], expected)
    assert pos.grad is None or torch.all(pos.grad == 0)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_differentiable_delta_gradients_equal_finite_differences_of_the_formula(reduction):
    # independent formula: Ω fixed by ΔA ranking, sum (or mean) over Ω of −log(A⁻(1+β|A⁺−A⁻|)+ε)
    g = torch.Generator().manual_seed(3)
    pos = torch.softmax(torch.randn(2, 3, 5, generator=g, dtype=torch.float64), dim=-1)
    neg = torch.softmax(torch.randn(2, 3, 5, generator=g, dtype=torch.float64), dim=-1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    rho, beta = 0.2, 1.5
    n_omega = math.ceil(rho * 15)
    omega = [
        sorted(range(15), key=lambda c: -abs(pos[b].flatten()[c] - neg[b].flatten()[c]).item())[
            :n_omega
        ]
        for b in range(2)
    ]

    def reference(p, n):
        total = 0.0
        for b in range(2):
            pf, nf = p[b].flatten(), n[b].flatten()
            cells = [-torch.log(nf[c] * (1 + beta * (pf[c] - nf[c]).abs()) + EPS) for c in omega[b]]
            total = total + sum(cells) / (n_omega if reduction == "mean" else 1)
        return total / 2

    p, n = pos.clone().requires_grad_(True), neg.clone().requires_grad_(True)
    contrastive_local_attention_loss(
        p, n, mask, rho, beta, EPS, detach_delta=False, reduction=reduction
    ).backward()
    for grad, which in ((p.grad, 0), (n.grad, 1)):
        numeric = torch.zeros_like(pos)
        for idx in np.ndindex(*pos.shape):
            bumped = [pos.clone(), neg.clone()]
            bumped[which][idx] += 1e-6
            up = reference(*bumped)
            bumped[which][idx] -= 2e-6
            numeric[idx] = (up - reference(*bumped)) / 2e-6
        torch.testing.assert_close(grad, numeric, atol=1e-5, rtol=1e-4)
    assert p.grad.abs().sum() > 0  # A⁺ is pushed away from A⁻ on Ω


def test_detached_and_differentiable_delta_give_the_same_value():
    g = torch.Generator().manual_seed(4)
    pos = torch.softmax(torch.randn(2, 3, 5, generator=g), dim=-1)
    neg = torch.softmax(torch.randn(2, 3, 5, generator=g), dim=-1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    a = contrastive_local_attention_loss(pos, neg, mask, detach_delta=True)
    b = ContrastiveLocalAttentionLoss(detach_delta=False)(pos, neg, mask)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_gradient_reaches_a_toy_cross_attention_module():
    torch.manual_seed(0)
    dim, tokens, patches = 8, 4, 6
    q_proj, k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
    text = torch.randn(2, tokens, dim)
    image_pos, image_neg = torch.randn(2, patches, dim), torch.randn(2, patches, dim)

    def attention(image):
        scores = q_proj(text) @ k_proj(image).transpose(1, 2) / math.sqrt(dim)
        return torch.softmax(scores, dim=-1)  # (B, T, P), caption tokens over patches

    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    loss = ContrastiveLocalAttentionLoss(rho=0.25)(attention(image_pos), attention(image_neg), mask)
    loss.backward()
    for module in (q_proj, k_proj):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_zero_attention_cells_give_finite_loss_and_gradient():
    pos = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    neg = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]], requires_grad=True)
    loss = contrastive_local_attention_loss(pos, neg, torch.ones(1, 2, dtype=torch.bool), rho=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(neg.grad).all()
    # the two cells with A⁻ = 0 and ΔA = 1 contribute −log(ε) each
    assert loss.item() > -math.log(1e-6) / 3


def test_module_wrapper_equals_function():
    g = torch.Generator().manual_seed(1)
    pos = torch.softmax(torch.randn(2, 3, 4, generator=g), dim=-1)
    neg = torch.softmax(torch.randn(2, 3, 4, generator=g), dim=-1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    module = ContrastiveLocalAttentionLoss(rho=0.3, beta=0.5, eps=1e-4)
    assert (
        module(pos, neg, mask).item()
        == contrastive_local_attention_loss(pos, neg, mask, 0.3, 0.5, 1e-4).item()
    )


def test_bad_inputs_raise_value_errors_naming_the_argument():
    pos, neg = torch.rand(2, 3, 4), torch.rand(2, 3, 4)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="attn_neg"):
        contrastive_local_attention_loss(pos, torch.rand(2, 3, 5), mask)
    with pytest.raises(ValueError, match="token_mask"):
        contrastive_local_attention_loss(pos, neg, mask.float())
    with pytest.raises(ValueError, match="no valid token"):
        contrastive_local_attention_loss(pos, neg, torch.tensor([[1, 1, 1], [0, 0, 0]]).bool())
    with pytest.raises(ValueError, match="rho"):
        contrastive_local_attention_loss(pos, neg, mask, rho=0.0)
    with pytest.raises(ValueError, match="attn_pos"):
        contrastive_local_attention_loss(pos - 1.0, neg, mask)
    with pytest.raises(ValueError, match="beta"):
        ContrastiveLocalAttentionLoss(beta=-1.0)
