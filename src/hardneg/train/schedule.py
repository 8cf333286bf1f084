"""The learning-rate schedule every training loop of hardneg uses: linear warm-up, cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    r"""LR factor at ``step``: ``(step + 1) / warmup`` during warm-up, then
    :math:`\tfrac12(1 + \cos(\pi \min(1, (step - warmup) / (total - warmup))))`.

    Example:
        >>> [round(warmup_cosine(s, 2, 6), 3) for s in range(6)]
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
