"""Diagnostics of one built batch (:func:`batch_stats`): the hardness quantiles used, the
picks' similarity to their anchors and the share of false negatives."""

from __future__ import annotations

import numpy as np

__all__ = ["batch_stats"]


def batch_stats(
    batch: list[int],
    qs: list[float] | None,
    pick_sims: list[float] | None,
    semantic_ids: np.ndarray | None,
) -> dict:
    """``random``, ``q_mean``, ``q_p10``, ``q_p50``, ``q_p90``, ``pick_sim_mean`` and ``fn_rate``
    of a batch (see :attr:`HardnessBatchSampler.last_batch_stats
    <hardneg.samplers.batches.HardnessBatchSampler>`); ``qs`` None = a random batch."""
    stats: dict = {"random": qs is None, "fn_rate": None}
    for key in ("q_mean", "q_p10", "q_p50", "q_p90", "pick_sim_mean"):
        stats[key] = None
    if qs is not None and pick_sims is not None:
        q_arr = np.asarray(qs)
        stats["q_mean"] = float(q_arr.mean())
        for pct in (10, 50, 90):
            stats[f"q_p{pct}"] = float(np.percentile(q_arr, pct))
        stats["pick_sim_mean"] = float(np.mean(pick_sims))
    if semantic_ids is not None:
        ids = semantic_ids[batch]
        same = int((ids[:, None] == ids[None, :]).sum()) - len(batch)
        stats["fn_rate"] = 100.0 * same / (len(batch) * (len(batch) - 1))
    return stats
