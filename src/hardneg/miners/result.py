"""What BACL's boundary-aware miner returns, and the boundary-score helpers it uses.

Reference: "Aligning by Misaligning: Boundary-aware Curriculum Learning for Multimodal
Alignment" (BACL, NeurIPS 2025, arXiv:2511.08399), §3: boundary score
``BS = sim(z^I, z^T') − sim(z^I, z^T)``; CLA contrasts attention with the hardest selected
negative.

:class:`MinedNegatives` is the miner's one result: the picks of both directions
(:class:`Picks` each) for this rank's anchors, which a contrastive loss scores through
:meth:`MinedNegatives.restrict` (the positive and the k picks) or
:meth:`MinedNegatives.reweight` (every negative weighted by its relaxed selection weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hardneg.losses.pairs import ContrastivePairs


@dataclass(frozen=True)
class Picks:
    """One direction's picks: ``k`` candidates per anchor row.

    Attributes:
        indices: (B, k) candidate columns picked per anchor, most likely pick first.
        keep: (B, C) bool, True at the picks.
        weights: (B, C) relaxed selection weights in [0, 1], each row summing to k (detached;
            the weights of the ``reweight`` denominator).
        boundary: (B, C) boundary scores ``BS_ij = s_ij − s⁺_i`` the picks were made on
            (detached).
        policy_loss: the direction's policy loss (with gradient to the policy only).
        entropy: mean entropy of ``softmax(ℓ_i)`` over the allowed candidates (detached).
    """

    indices: Tensor
    keep: Tensor
    weights: Tensor
    boundary: Tensor
    policy_loss: Tensor
    entropy: Tensor


@dataclass(frozen=True)
class MinedNegatives:
    """Negatives mined for one contrastive step, in both directions (this rank's anchors).

    Columns follow :class:`~hardneg.losses.pairs.ContrastivePairs`: for image anchors the
    captions of all ranks (``G``) then the extra hard-negative captions (``M``); for caption
    anchors the images of all ranks.

    Attributes:
        i2t: :class:`Picks` of the image anchors among the (G+M) captions.
        t2i: :class:`Picks` of the caption anchors among the G images.
        alpha: curriculum α(η) used (> 0 avoids hard negatives, < 0 favours them).
        tau: Gumbel-Softmax temperature used.
        policy_loss: detached policy loss of the step, both directions summed (for logging;
            the miner back-propagates it itself).
    """

    i2t: Picks
    t2i: Picks
    alpha: float
    tau: float
    policy_loss: Tensor

    @property
    def i2t_keep(self) -> Tensor:
        """(R, G+M) bool, True at the captions picked for each image anchor."""
        return self.i2t.keep

    @property
    def t2i_keep(self) -> Tensor:
        """(R, G) bool, True at the images picked for each caption anchor."""
        return self.t2i.keep

    def _check(self, pairs: ContrastivePairs) -> None:
        expected = (
            (pairs.image.shape[0], pairs.text_candidates.shape[0]),
            (pairs.text.shape[0], pairs.all_image.shape[0]),
        )
        got = (tuple(self.i2t.keep.shape), tuple(self.t2i.keep.shape))
        if got != expected:
            raise ValueError(
                f"negatives were mined for candidate masks {got[0]} and {got[1]} but this batch "
                f"has {expected[0]} and {expected[1]}; mine them from the same features (and "
                "the same extra_text_features) that are passed to the loss"
            )

    def restrict(self, pairs: ContrastivePairs) -> ContrastivePairs:
        """``pairs`` scored on their positives and the picked negatives only (BACL §3)."""
        self._check(pairs)
        return pairs.restrict(self.i2t.keep, self.t2i.keep)

    def reweight(self, pairs: ContrastivePairs) -> ContrastivePairs:
        """``pairs`` scored on every negative, each weighted by its relaxed selection weight."""
        self._check(pairs)
        return pairs.reweight(self.i2t.weights, self.t2i.weights)

    def hard_negative_texts(self, text_candidates: Tensor) -> Tensor:
        """(R, k, d) rows of ``text_candidates`` picked for each image anchor.

        Args:
            text_candidates: (G+M, d) the captions the negatives were mined from, in the same
                order (all ranks' captions, then the extra ones); in a single process without
                extra captions, simply the batch's text features.
        """
        cols = self.i2t.keep.shape[1]
        if text_candidates.dim() != 2 or text_candidates.shape[0] != cols:
            raise ValueError(
                f"text_candidates must be the ({cols}, d) captions the negatives were mined "
                f"from, got shape {tuple(text_candidates.shape)}"
            )
        return text_candidates[self.i2t.indices]


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


def hardest_negative(indices: Tensor, sim: Tensor) -> Tensor:
    """(B,) column of the picked candidate with the largest similarity, per anchor.

    CLA contrasts a caption's attention on its positive image with that on this negative.

    Args:
        indices: (B, k) picked columns (:attr:`Picks.indices`).
        sim: (B, C) similarities of the anchors with every candidate.

    Example:
        >>> sim = torch.tensor([[1.0, 0.7, 0.2, 0.9]])
        >>> hardest_negative(torch.tensor([[1, 2]]), sim).tolist()
        [1]
    """
    if sim.dim() != 2 or sim.shape[0] != indices.shape[0]:
        raise ValueError(
            f"sim must be (B, C) with B={indices.shape[0]} rows like the picks, "
            f"got shape {tuple(sim.shape)}"
        )
    picked = sim.detach().gather(1, indices)
    return indices.gather(1, picked.argmax(dim=1, keepdim=True)).squeeze(1)


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
