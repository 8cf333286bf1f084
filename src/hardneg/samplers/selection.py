"""The output of BACL's boundary-aware sampler and the boundary-score helpers it uses.

Reference: "Aligning by Misaligning: Boundary-aware Curriculum Learning for Multimodal
Alignment" (BACL, NeurIPS 2025, arXiv:2511.08399), §3: boundary score
``BS = sim(z^I, z^T') − sim(z^I, z^T)``; CLA contrasts attention with the hardest selected
negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Selection:
    """Negatives chosen by :class:`BoundaryAwareSampler` for one set of anchors.

    Attributes:
        indices: (B, k) candidate columns picked per anchor.
        hard: (B, C) 0/1 k-hot of the picks (detached: a data choice for the contrastive loss).
        soft: (B, C) relaxed selection weights in [0, 1], each row summing to k (detached; the
            weights of the optional full-batch denominator, ``ContrastivePairs.reweight``).
        alpha: curriculum α(η) used.
        tau: Gumbel-Softmax temperature used.
        policy_loss: scalar to ADD to the training loss; its gradient reaches only the policy.
        entropy: mean entropy of ``softmax(ℓ_i)`` over the allowed candidates (detached, for
            logging).
    """

    indices: Tensor
    hard: Tensor
    soft: Tensor
    alpha: float
    tau: float
    policy_loss: Tensor
    entropy: Tensor


def boundary_scores(sim: Tensor, positive_index: Tensor) -> Tensor:
    """Boundary scores ``BS_ij = s_ij − s_{i,pos(i)}`` (BACL §3).

    Args:
        sim: (B, C) cosine similarities of anchors (rows) vs candidates (columns).
        positive_index: (B,) column of each anchor's positive (``arange(B)`` in-batch).

    Returns:
        (B, C) boundary scores; 0 at the positive, > 0 for negatives scored above it.

    Example:
        >>> sim = torch.tensor([[1.0, 0.5], [0.25, 0.75]])
        >>> boundary_scores(sim, torch.arange(2)).tolist()
        [[0.0, -0.5], [-0.5, 0.0]]
    """
    if sim.dim() != 2:
        raise ValueError(f"sim must be (B, C), got shape {tuple(sim.shape)}")
    index = torch.as_tensor(positive_index, device=sim.device)
    if index.shape != (sim.shape[0],) or index.is_floating_point():
        raise ValueError(
            f"positive_index must be ({sim.shape[0]},) integer columns, got "
            f"{index.dtype} {tuple(index.shape)}"
        )
    if bool(((index < 0) | (index >= sim.shape[1])).any()):
        raise ValueError(f"positive_index must lie in [0, {sim.shape[1]}) (columns of sim)")
    return sim - sim.gather(1, index.long().unsqueeze(1))


def hardest_negative(selection: Selection, sim: Tensor) -> Tensor:
    """(B,) column of the selected candidate with the largest similarity, per anchor.

    CLA contrasts a caption's attention on its positive image with that on this negative.

    Example:
        >>> sim = torch.tensor([[1.0, 0.7, 0.2, 0.9]])
        >>> sel = Selection(torch.tensor([[1, 2]]), torch.zeros(1, 4), torch.zeros(1, 4),
        ...                 0.0, 1.0, torch.zeros(()), torch.zeros(()))
        >>> hardest_negative(sel, sim).tolist()
        [1]
    """
    if sim.dim() != 2 or sim.shape[0] != selection.indices.shape[0]:
        raise ValueError(
            f"sim must be (B, C) with B={selection.indices.shape[0]} rows like the selection, "
            f"got shape {tuple(sim.shape)}"
        )
    picked = sim.detach().gather(1, selection.indices)
    return selection.indices.gather(1, picked.argmax(dim=1, keepdim=True)).squeeze(1)


def rank_percentile(sim: Tensor, allowed: Tensor) -> Tensor:
    """Rank of ``s_ij`` among the allowed candidates of row i, scaled to [0, 1] (1 = highest).

    Disallowed entries get 0; a row with a single allowed candidate gives it 1.
    """
    neg_inf = torch.tensor(float("-inf"), dtype=sim.dtype, device=sim.device)
    ranks = torch.where(allowed, sim, neg_inf).argsort(dim=1).argsort(dim=1)
    n_allowed = allowed.sum(dim=1, keepdim=True)
    # disallowed (−∞) occupy the lowest ranks; shift so the lowest allowed has rank 0
    ranks = ranks - (allowed.shape[1] - n_allowed)
    pct = ranks.to(sim.dtype) / (n_allowed - 1).clamp(min=1).to(sim.dtype)
    pct = torch.where(n_allowed == 1, torch.ones_like(pct), pct)
    return torch.where(allowed, pct, torch.zeros_like(pct))
