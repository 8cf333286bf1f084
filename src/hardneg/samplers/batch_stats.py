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
    anchor_has_duplicate: np.ndarray | None = None,
) -> dict:
    """``random``, ``q_mean``, ``q_p10``, ``q_p50``, ``q_p90``, ``pick_sim_mean``, ``fn_rate``,
    ``q_dup_mean`` and ``q_nodup_mean`` of a batch (see :attr:`HardnessBatchSampler.last_batch_stats
    <hardneg.samplers.batches.HardnessBatchSampler>`); ``qs`` None = a random batch.
    ``anchor_has_duplicate``: per q, whether its anchor's search space holds another item of the
    same meaning (a potential false negative): ``q_dup_mean`` / ``q_nodup_mean`` average the q of
    those anchors and of the others (None when there is none)."""
    stats: dict = {"random": qs is None, "fn_rate": None}
    for key in ("q_mean", "q_p10", "q_p50", "q_p90", "pick_sim_mean", "q_dup_mean", "q_nodup_mean"):
        stats[key] = None
    if qs is not None and pick_sims is not None:
        q_arr = np.asarray(qs)
        stats["q_mean"] = float(q_arr.mean())
        for pct in (10, 50, 90):
            stats[f"q_p{pct}"] = float(np.percentile(q_arr, pct))
        stats["pick_sim_mean"] = float(np.mean(pick_sims))
        if anchor_has_duplicate is not None and len(q_arr):
            for key, rows in (
                ("q_dup_mean", anchor_has_duplicate),
                ("q_nodup_mean", ~anchor_has_duplicate),
            ):
                stats[key] = float(q_arr[rows].mean()) if rows.any() else None
    if semantic_ids is not None:
        ids = semantic_ids[batch]
        same = int((ids[:, None] == ids[None, :]).sum()) - len(batch)
        stats["fn_rate"] = 100.0 * same / (len(batch) * (len(batch) - 1))
    return stats
