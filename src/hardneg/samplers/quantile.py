"""Hardness-quantile pick: the candidate at similarity quantile q of an anchor's row.

Reference: FALCON (arXiv:2505.11192), §3 "mini-batch construction": ``q = 1`` is GRIT-VLP's
hardest (most similar) candidate, ``q = 0`` the easiest.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike


def quantile_position(q: float, n: int) -> int:
    """Position ``round(q·(n−1))`` (halves rounded up) in an ascending list of n candidates."""
    return math.floor(q * (n - 1) + 0.5)


def quantile_pick(row_scores: ArrayLike | torch.Tensor, q: float, excluded: ArrayLike) -> int:
    """Index of the candidate at hardness quantile q among the non-excluded ones.

    The non-excluded candidates are sorted by similarity ascending (stable: ties keep index
    order) and the one at position ``round(q·(n−1))`` (halves up) is returned, so ``q = 1``
    picks the most similar (hardest) candidate and ``q = 0`` the least similar (easiest).

    Args:
        row_scores: (C,) similarities of one anchor with every candidate (tensor or array).
        q: hardness quantile in [0, 1].
        excluded: (C,) bool, True for candidates that may not be picked (the anchor itself,
            items already placed in a batch).

    Returns:
        Column index (into ``row_scores``) of the picked candidate.

    Example:
        >>> quantile_pick([0.1, 0.9, 0.5, 0.7], q=1.0, excluded=[False, True, False, False])
        3
        >>> quantile_pick([0.1, 0.9, 0.5, 0.7], q=0.0, excluded=[False, True, False, False])
        0
    """
    if isinstance(row_scores, torch.Tensor):
        row_scores = row_scores.detach().cpu().numpy()
    if isinstance(excluded, torch.Tensor):
        excluded = excluded.detach().cpu().numpy()
    scores = np.asarray(row_scores)
    mask = np.asarray(excluded)
    if scores.ndim != 1:
        raise ValueError(f"row_scores must be 1-D (C,), got shape {scores.shape}")
    if mask.shape != scores.shape or mask.dtype != np.bool_:
        raise ValueError(
            f"excluded must be a bool mask of shape {scores.shape}, got {mask.dtype} {mask.shape}"
        )
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1] (0 = easiest, 1 = hardest), got {q}")
    candidates = np.flatnonzero(~mask)
    if candidates.size == 0:
        raise ValueError("every candidate is excluded; the search space is exhausted")
    values = scores[candidates]
    if not np.isfinite(values).all():
        raise ValueError("row_scores contains NaN or inf among the candidates")
    # O(n) selection equal to the stable sort: the value at `position`, then among the tied
    # candidates (in index order) the one the stable sort would place there
    position = quantile_position(q, candidates.size)
    value = np.partition(values, position)[position]
    below = np.count_nonzero(values < value)
    return int(candidates[values == value][position - below])
