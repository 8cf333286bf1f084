r"""False-negative rate of the negatives a sampler selects (README, "Results").

A selected negative is a *false* negative when it shares the anchor's semantic id (same scene
description ⇒ same meaning), e.g. a second caption of the anchor's own image or a duplicate
scene. Hard-negative samplers (BNS, GRIT, FALCON) drift toward such pairs because they score
high; this diagnostic measures how often (FALCON, arXiv:2505.11192, "false-negative rate of chosen
negatives").

Empty selections: the rate of zero pairs is undefined, so the rate functions raise
ValueError instead of returning 0 (which would read as "a perfect sampler") or NaN. To
aggregate over steps, sum :func:`false_negative_counts` and divide once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hardneg.eval.checks import as_tensor, check_ids, check_mask

__all__ = ["batch_false_negative_rate", "false_negative_counts", "false_negative_rate"]


def false_negative_counts(
    anchor_ids: Tensor | Sequence[int],
    negative_ids: Tensor | Sequence[int] | Sequence[Sequence[int]],
    mask: Tensor | None = None,
) -> tuple[int, int]:
    """Number of false negatives and of selected pairs: ``(Σ sel·[a_i = n_ij], Σ sel)``.

    Args:
        anchor_ids: (n,) semantic id of each anchor.
        negative_ids: (n,) or (n, k) semantic ids of the negatives selected for each anchor.
        mask: optional bool tensor shaped like ``negative_ids``; False entries are not
            selected (padding) and are ignored. Default: all selected.

    Returns:
        ``(false_negatives, selected)`` as Python ints.

    Example:
        >>> false_negative_counts([0, 1], [[0, 2], [1, 1]])
        (3, 4)
    """
    neg = as_tensor("negative_ids", negative_ids)
    if neg.dim() not in (1, 2):
        raise ValueError(f"negative_ids must be (n,) or (n, k), got shape {tuple(neg.shape)}")
    anchors = check_ids("anchor_ids", anchor_ids, neg.shape[0], neg.device)
    neg = check_ids("negative_ids", neg.reshape(-1), neg.numel(), neg.device).reshape(neg.shape)
    same = anchors.reshape(-1, *([1] * (neg.dim() - 1))) == neg
    if mask is not None:
        selected = check_mask("mask", mask, tuple(neg.shape)).to(neg.device)
        return int((same & selected).sum()), int(selected.sum())
    return int(same.sum()), neg.numel()


def _rate(false_neg: int, selected: int) -> float:
    if selected == 0:
        raise ValueError(
            "no (anchor, negative) pair is selected, so the false-negative rate is undefined; "
            "check the mask/selection, or sum false_negative_counts over several batches"
        )
    return 100.0 * false_neg / selected


def false_negative_rate(
    anchor_ids: Tensor | Sequence[int],
    negative_ids: Tensor | Sequence[int] | Sequence[Sequence[int]],
    mask: Tensor | None = None,
) -> float:
    r"""Percentage of selected (anchor, negative) pairs whose semantic ids are equal.

    .. math::
        \mathrm{FN} = 100\,\frac{\sum_{ij} m_{ij}\,\mathbb 1[a_i = n_{ij}]}{\sum_{ij} m_{ij}}

    Args:
        anchor_ids: (n,) semantic id of each anchor.
        negative_ids: (n,) or (n, k) semantic ids of its selected negatives.
        mask: optional bool selection shaped like ``negative_ids`` (default: all selected).

    Returns:
        FN rate in percent; raises ValueError when nothing is selected (module docstring).

    Example:
        >>> false_negative_rate([0, 1], [[0, 2], [1, 1]])
        75.0
    """
    return _rate(*false_negative_counts(anchor_ids, negative_ids, mask))


def batch_false_negative_rate(
    ids: Tensor | Sequence[int],
    selection: Tensor,
    candidate_ids: Tensor | Sequence[int] | None = None,
) -> float:
    """FN rate of a sampler's selection inside a batch.

    Anchor ``i`` has id ``ids[i]``; its candidates are the batch itself (``candidate_ids``
    defaults to ``ids``) or a larger pool (memory queue, extra captions). The selection is
    either a (B, C) bool matrix (``selection[i, j]``: candidate ``j`` chosen as a negative of
    anchor ``i``) or a (B, k) integer tensor of chosen candidate indices. A selected candidate
    that is the anchor's own pair also counts as a false negative (samplers must exclude it).
    For a whole FALCON/GRIT batch (every other item is a negative) pass
    ``selection = ~torch.eye(B, dtype=torch.bool)``.

    Args:
        ids: (B,) semantic ids of the anchors.
        selection: (B, C) bool or (B, k) int64 candidate indices.
        candidate_ids: (C,) semantic ids of the candidates; default ``ids``.

    Returns:
        FN rate in percent (see :func:`false_negative_rate`).

    Example:
        >>> import torch
        >>> ids = torch.tensor([0, 0, 1])
        >>> round(batch_false_negative_rate(ids, torch.tensor([[1], [2], [0]])), 2)
        33.33
    """
    if not isinstance(selection, Tensor) or selection.dim() != 2:
        raise ValueError(
            "selection must be a (B, C) bool matrix or a (B, k) tensor of candidate indices"
        )
    device = selection.device
    cand_ids = ids if candidate_ids is None else candidate_ids
    anchor_ids = check_ids("ids", ids, selection.shape[0], device)
    cand = as_tensor("candidate_ids", cand_ids)
    cand = check_ids("candidate_ids", cand, cand.reshape(-1).shape[0], device)
    if selection.dtype == torch.bool:
        if selection.shape[1] != cand.shape[0]:
            raise ValueError(
                f"selection has {selection.shape[1]} columns but there are {cand.shape[0]} "
                "candidates; a bool selection needs one column per candidate"
            )
        neg = cand.expand(selection.shape[0], -1)
        return false_negative_rate(anchor_ids, neg, mask=selection)
    if selection.is_floating_point() or selection.is_complex():
        raise ValueError(f"selection must be bool or integer indices, got dtype {selection.dtype}")
    if selection.numel() and not (0 <= int(selection.min()) and int(selection.max()) < len(cand)):
        raise ValueError(
            f"selection indices must lie in [0, {cand.shape[0]}) (candidate positions), got "
            f"range [{int(selection.min())}, {int(selection.max())}]"
        )
    return false_negative_rate(anchor_ids, cand[selection.long()])
