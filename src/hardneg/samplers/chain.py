r"""Batch chains of one search space: GRIT-VLP's alternating hardest chain and FALCON's q-chain.

References: Byun et al. 2022, "GRIT-VLP: Grouped Mini-batch Sampling for Efficient
Vision-Language Pre-training" (ECCV 2022, ``jaeseokbyun/GRIT-VLP``, ``models/GRIT_utils.py``,
grouping): one chain through the search space alternating the hardest caption of the current
image and the hardest image of that caption, cut into batches. FALCON (arXiv:2505.11192) §3:
per batch, a chain on the symmetric ``S = S_i2t + S_t2i`` picking the candidate at hardness
quantile q of the anchor's row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hardneg.samplers.quantile import quantile_pick


@dataclass
class ChainResult:
    """Batches of one search space built by :func:`chain_batches` or :func:`grit_chain`.

    All indices are local (rows of the search space's similarity matrix).

    Attributes:
        batches: B items each, in pick order.
        anchors: per batch, the B − 1 anchors whose rows chose the batch's items 2..B.
        qs: per batch, the B − 1 quantiles used (1.0 for GRIT's hardest picks).
        pick_sims: per batch, the B − 1 similarities anchor → picked item (``S`` for the
            quantile chain; the image→caption or caption→image cosine for GRIT's chain).
    """

    batches: list[list[int]] = field(default_factory=list)
    anchors: list[list[int]] = field(default_factory=list)
    qs: list[list[float]] = field(default_factory=list)
    pick_sims: list[list[float]] = field(default_factory=list)


def chain_batches(
    sim: np.ndarray,
    batch_size: int,
    q_of: Callable[[int, int], float],
    rng: np.random.Generator,
) -> ChainResult:
    """Fill batches of one search space by the hardness-quantile chain (FALCON §3).

    Per batch: sample the first anchor uniformly among the unused items; repeatedly pick the
    candidate at quantile ``q_of(anchor, batch_number)`` of the anchor's row (excluding every
    item already used in this search space, the anchor included) and make it the next anchor,
    until the batch holds ``batch_size`` items. ``⌊n / B⌋`` batches are built; the < B leftover
    items are not used this epoch (the next epoch reshuffles). GRIT-VLP's own hardest chain is
    :func:`grit_chain` (alternating directions, one chain for the whole space), not q ≡ 1 here.

    Args:
        sim: (n, n) similarity within the search space.
        batch_size: B.
        q_of: quantile for (local anchor index, batch number).
        rng: numpy Generator for the first anchors.
    """
    n = sim.shape[0]
    used = np.zeros(n, dtype=bool)
    result = ChainResult()
    for number in range(n // batch_size):
        anchor = int(rng.choice(np.flatnonzero(~used)))
        used[anchor] = True
        batch, anchors, qs, sims = [anchor], [], [], []
        while len(batch) < batch_size:
            q = float(q_of(anchor, number))
            pick = quantile_pick(sim[anchor], q, used)
            used[pick] = True
            anchors.append(anchor)
            qs.append(q)
            sims.append(float(sim[anchor, pick]))
            batch.append(pick)
            anchor = pick
        result.batches.append(batch)
        result.anchors.append(anchors)
        result.qs.append(qs)
        result.pick_sims.append(sims)
    return result


def grit_chain(i2t: np.ndarray, batch_size: int, rng: np.random.Generator) -> ChainResult:
    r"""GRIT-VLP's grouping: one alternating hardest chain through the space, cut into batches.

    From a uniformly drawn item :math:`c_0`, with ``U Vᵀ = i2t`` (images × captions):

    .. math::
        c_{t+1} = \begin{cases}
            \arg\max_{j\ \mathrm{unused}} (UV^\top)_{c_t j} & t \text{ even (hardest caption
            of the current image)}\\
            \arg\max_{j\ \mathrm{unused}} (UV^\top)_{j c_t} & t \text{ odd (hardest image of
            the current caption)}
        \end{cases}

    (an item is a pair; picking its caption or its image uses the whole pair). The chain
    ``c_0, c_1, …`` is cut into consecutive batches of B; the ``n mod B`` last items are
    dropped for the epoch. Ties go to the lowest index.

    Args:
        i2t: (n, n) image→caption cosine within the search space (rows images, columns
            captions, same item order).
        batch_size: B (≤ n).
        rng: numpy Generator for the first item.

    Example:
        >>> i2t = np.array([[1.0, 0.9, 0.1], [0.2, 1.0, 0.3], [0.8, 0.1, 1.0]])
        >>> grit_chain(i2t, 3, np.random.default_rng(0)).batches  # starts at item 2 here
        [[2, 0, 1]]
    """
    n = i2t.shape[0]
    if i2t.ndim != 2 or i2t.shape[1] != n:
        raise ValueError(f"i2t must be a square (n, n) matrix, got shape {i2t.shape}")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}] (items of the space), got {batch_size}")
    length = (n // batch_size) * batch_size
    used = np.zeros(n, dtype=bool)
    order = [int(rng.integers(n))]
    used[order[0]] = True
    sims: list[float] = []
    while len(order) < length:
        current = order[-1]
        row = i2t[current] if len(order) % 2 == 1 else i2t[:, current]
        pick = int(np.argmax(np.where(used, -np.inf, row)))
        used[pick] = True
        sims.append(float(row[pick]))
        order.append(pick)
    result = ChainResult()
    for start in range(0, length, batch_size):
        batch = order[start : start + batch_size]
        result.batches.append(batch)
        result.anchors.append(batch[:-1])
        result.qs.append([1.0] * (batch_size - 1))
        result.pick_sims.append(sims[start : start + batch_size - 1])
    return result
