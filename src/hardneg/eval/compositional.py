r"""Compositional accuracy: does the image prefer its true caption to each hard negative?

ARO / SugarCrepe protocol (Yuksekgonul et al. 2023, "When and why vision-language models
behave like bags-of-words", §3; Hsieh et al. 2023, "SugarCrepe", §3): for an image ``x``, its
true caption ``t⁺`` and a hard-negative caption ``t⁻`` made by one perturbation (replace a
digit, change a colour, swap attributes, flip the relation, …), the trial succeeds iff
``s(x, t⁺) > s(x, t⁻)``. DigitScenes reports the success rate per perturbation kind
(README, "Results"). :func:`compositional_trials` gives the outcome of every trial, whose
mean per kind is :func:`compositional_accuracy`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from hardneg.eval.checks import as_tensor, check_finite

__all__ = ["compositional_accuracy", "compositional_trials"]


def compositional_accuracy(
    pos_scores: Tensor | Sequence[float],
    neg_scores: Tensor | Sequence[float] | Sequence[Sequence[float]],
    kinds: Sequence[str] | Sequence[Sequence[str]],
) -> dict[str, float]:
    r"""Percentage of (image, hard negative) trials where the true caption scores strictly higher.

    .. math::
        \mathrm{acc}(\kappa) = \frac{100}{|T_\kappa|}\sum_{(i,j)\in T_\kappa}
        \mathbb 1\big[s^+_i > s^-_{ij}\big]

    over the trials ``T_κ`` of perturbation kind ``κ``. Ties count as failures: a model that
    cannot tell the captions apart (equal scores) gets no credit. ``"overall"`` pools every
    trial (micro-average, so kinds with more trials weigh more).

    Input form: one row per image. ``neg_scores`` is (N,) — one hard negative per row — or
    (N, K) — K hard negatives per row, each compared with the same ``pos_scores[i]``;
    ``kinds`` has the same shape as ``neg_scores`` and names the perturbation of each
    negative. For a varying number of negatives per image, use the flat (N,) form and repeat
    the positive score once per negative.

    Args:
        pos_scores: (N,) score of each image with its true caption (any model score: cosine,
            ITM logit, …; only the comparison matters).
        neg_scores: (N,) or (N, K) scores of the same images with their hard-negative captions.
        kinds: perturbation kind (a string) of each entry of ``neg_scores``, same shape.

    Returns:
        ``{kind: accuracy %}`` for each kind, in sorted order, plus ``"overall"``.

    Example:
        >>> acc = compositional_accuracy(
        ...     [0.9, 0.5, 0.7], [[0.1, 0.95], [0.5, 0.2], [0.3, 0.1]],
        ...     [["colour", "swap"], ["colour", "swap"], ["colour", "swap"]])
        >>> {kind: round(v, 1) for kind, v in acc.items()}
        {'colour': 66.7, 'swap': 66.7, 'overall': 66.7}
    """
    correct, flat_kinds = compositional_trials(pos_scores, neg_scores, kinds)
    out = {
        str(kind): 100.0 * float(correct[flat_kinds == kind].mean())
        for kind in sorted(set(flat_kinds))
    }
    out["overall"] = 100.0 * float(correct.mean())
    return out


def compositional_trials(
    pos_scores: Tensor | Sequence[float],
    neg_scores: Tensor | Sequence[float] | Sequence[Sequence[float]],
    kinds: Sequence[str] | Sequence[Sequence[str]],
) -> tuple[np.ndarray, np.ndarray]:
    r"""Outcome ``1[s⁺_i > s⁻_ij]`` of every (image, hard negative) trial, flattened row-major.

    Arguments and validation as :func:`compositional_accuracy`.

    Returns:
        ``(correct, kinds)``: (T,) bool and (T,) str arrays, ``T = neg_scores.numel()``.

    Example:
        >>> correct, kinds = compositional_trials([0.9, 0.5], [0.1, 0.5], ["colour", "swap"])
        >>> correct.tolist(), kinds.tolist()
        ([True, False], ['colour', 'swap'])
    """
    pos = as_tensor("pos_scores", pos_scores).detach().to("cpu")
    neg = as_tensor("neg_scores", neg_scores).detach().to("cpu")
    if pos.dim() != 1 or pos.shape[0] == 0:
        raise ValueError(
            f"pos_scores must be a non-empty 1-D (N,) tensor, got shape {tuple(pos.shape)}"
        )
    if neg.dim() not in (1, 2) or neg.shape[0] != pos.shape[0] or neg.numel() == 0:
        raise ValueError(
            f"neg_scores must have shape ({pos.shape[0]},) or ({pos.shape[0]}, K) with K ≥ 1 "
            f"(one row per entry of pos_scores), got {tuple(neg.shape)}"
        )
    pos, neg = pos.to(torch.float64), neg.to(torch.float64)
    check_finite("pos_scores", pos)
    check_finite("neg_scores", neg)
    try:
        kind_arr = np.asarray(kinds, dtype=object)
    except ValueError as err:  # ragged nesting
        raise ValueError("kinds must have the same (rectangular) shape as neg_scores") from err
    if kind_arr.shape != tuple(neg.shape):
        raise ValueError(
            f"kinds must have the same shape as neg_scores {tuple(neg.shape)} (one kind per "
            f"hard negative), got {kind_arr.shape}"
        )
    if not all(isinstance(k, str) for k in kind_arr.flat):
        raise ValueError("kinds must hold perturbation names as str, e.g. 'swap_colours'")
    if "overall" in set(kind_arr.flat):
        raise ValueError("'overall' is reserved for the pooled accuracy; rename that kind")
    correct = (pos[:, None] > neg.reshape(neg.shape[0], -1)).reshape(-1).numpy()
    return correct, kind_arr.reshape(-1).astype(str)
