"""The hardness quantile of each pick in the quantile batch modes (fixed, progressive, FALCON
per anchor or per batch): :func:`quantile_rule` gives ``q_of(anchor, batch)`` for one search
space and a hook that records FALCON's decisions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from hardneg.samplers.batch_config import PROGRESSIVE_DEFAULTS, HardnessSamplerConfig
from hardneg.samplers.falcon import FalconPolicy

__all__ = ["off_diagonal_rows", "quantile_rule"]


def off_diagonal_rows(sim: Tensor) -> Tensor:
    """(n, n−1) rows of a square matrix without their diagonal entry (each anchor's candidates).

    Example:
        >>> off_diagonal_rows(torch.arange(9.0).reshape(3, 3)).tolist()
        [[1.0, 2.0], [3.0, 5.0], [6.0, 7.0]]
    """
    n = sim.shape[0]
    # drop every (n+1)-th element of the flattened matrix: a strided copy, no boolean mask
    return sim.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


def quantile_rule(
    cfg: HardnessSamplerConfig,
    policy: FalconPolicy | None,
    position: float,
    sim: Tensor,
    n_batches: int,
    rng: np.random.Generator,
) -> tuple[Callable[[int, int], float], Callable[[int, list[int]], None] | None]:
    """``q_of(anchor, batch)`` of a quantile mode, and a hook recording the policy's decisions.

    Args:
        cfg: the sampler's config (its mode and quantiles).
        policy: FALCON's policy (modes ``falcon`` / ``batch_level``), else None.
        position: where the search space sits in training, in epochs (``epoch + space /
            spaces``; the progressive modes' schedule).
        sim: the space's symmetric similarity ``S`` (n, n).
        n_batches: batches the space yields.
        rng: the epoch's generator (FALCON's quantile draws).
    """
    if cfg.mode == "fixed":
        return (lambda anchor, number: cfg.q), None
    if cfg.mode in PROGRESSIVE_DEFAULTS:
        assert cfg.q_start is not None and cfg.q_end is not None
        frac = position / cfg.total_epochs
        q = cfg.q_start + (cfg.q_end - cfg.q_start) * min(max(frac, 0.0), 1.0)
        return (lambda anchor, number: q), None
    assert policy is not None  # checked by HardnessBatchSampler
    rows = off_diagonal_rows(sim)
    with torch.no_grad():
        feats = policy.summarize(rows)
        if cfg.mode == "falcon":
            q_all = policy.sample_features(feats, rng)[0].cpu()
            q_np = q_all.numpy()

            def record(number: int, anchors: list[int]) -> None:
                index = torch.as_tensor(anchors)
                policy.record(feats[index.to(feats.device)], q_all[index])

            return (lambda anchor, number: float(q_np[anchor])), record
        q_batch = policy.sample_features(feats.expand(n_batches, -1), rng)[0].cpu()

    def record_batch(number: int, anchors: list[int]) -> None:
        policy.record(feats, q_batch[number : number + 1])

    return (lambda anchor, number: float(q_batch[number])), record_batch
