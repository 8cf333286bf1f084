"""False negatives of DigitScenes at a controlled rate (``data.false_negative_percent``).

Two sources (``data.false_negative_source``):

- ``"partial"``: training draws, per scene and step, one of the scene's partial captions
  ("a red 3") with probability f instead of a full caption. A partial caption is true of
  every scene holding its object, so in a batch it is a false negative of each such scene.
  :func:`partial_caption_probability` derives f from the rate.
- ``"repeats"``: the train split shows a few scene configurations many times (new scans,
  layout and caption templates each time), like the near-duplicates of web data; every caption
  stays a full one. :func:`repeat_build` derives the number of repeats from the rate. The test
  split repeats the same configurations at the same pair rate, and retrieval counts a caption
  relevant to every duplicate, so a model that pushed duplicates apart loses mAP there.

:func:`in_batch_fn_rate` measures the rate a batch actually holds.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from hardneg.data.digitscenes.config import DigitScenesConfig
from hardneg.data.digitscenes.semantics import N_COMBOS
from hardneg.data.digitscenes.tensors import SplitTensors

__all__ = [
    "FALSE_NEGATIVE_SOURCES",
    "false_negative_pair_rates",
    "in_batch_fn_rate",
    "partial_caption_probability",
    "repeat_build",
]

#: values of ``data.false_negative_source``
FALSE_NEGATIVE_SOURCES = ("partial", "repeats")


def false_negative_pair_rates(split: SplitTensors) -> tuple[float, float]:
    """``(p_full, p_partial)``: the probability that the caption drawn for a scene a is true of
    another scene b, for a uniformly random ordered pair a ≠ b (a random batch's pairs).

    ``p_full`` (a's caption is a full one): ``Σ_s n_s (n_s − 1) / (N (N − 1))`` over semantic
    ids s held by n_s scenes. ``p_partial`` (a's caption names one of its objects, uniformly):
    ``mean_a mean_{o ∈ a} (m_o − 1) / (N − 1)`` with m_o the number of scenes holding object o.
    ``p_partial = p_full`` when the build has no partial captions.
    """
    n = len(split)
    _, counts = torch.unique(split.semantic_ids, return_counts=True)
    p_full = float((counts * (counts - 1)).sum()) / (n * (n - 1))
    assert split.partial_rows is not None
    has = split.partial_rows >= 0  # (N, P) objects with a partial caption
    if not has.any():
        return p_full, p_full
    codes = split.object_codes[:, : has.shape[1]]
    holds = (codes[:, :, None] == torch.arange(N_COMBOS)).any(dim=1)  # (N, 60)
    others = (holds.sum(dim=0)[codes.clamp_min(0)] - 1).double() / (n - 1)  # (N, P)
    per_scene = (others * has).sum(dim=1) / has.sum(dim=1).clamp_min(1)
    return p_full, float(per_scene[has.any(dim=1)].mean())


def partial_caption_probability(split: SplitTensors, percent: float) -> float:
    """Probability f of drawing a partial caption so that random batches hold ``percent`` %
    false negatives among their ordered (anchor, candidate) pairs: the expected share is
    ``(1 − f) p_full + f p_partial`` (:func:`false_negative_pair_rates`), so
    ``f = (percent / 100 − p_full) / (p_partial − p_full)``; 0 % means off (f = 0).

    Raises:
        ValueError: ``percent`` is outside ``[100 p_full, 100 p_partial]`` (names
            ``data.false_negative_percent`` and the reachable range).
    """
    if percent == 0:
        return 0.0
    p_full, p_partial = false_negative_pair_rates(split)
    low, high = 100.0 * p_full, 100.0 * p_partial
    if not low <= percent <= high:
        raise ValueError(
            f"data.false_negative_percent={percent} cannot be reached on this train split: "
            f"random batches hold at least {low:.4f} % false negatives (full captions only) and "
            f"at most {high:.4f} % (partial captions only); use 0 (off) or a value in that range"
        )
    return (percent / 100.0 - p_full) / (p_partial - p_full) if high > low else 0.0


def _fewest_repeats(percent: float, configurations: int, n: int, split: str) -> int:
    """The fewest scenes k per configuration for which ``G k (k − 1) / (n (n − 1))`` reaches
    ``percent`` % (``ValueError`` naming the options when ``G k`` exceeds the ``n`` scenes)."""
    g = configurations
    pairs = percent / 100.0 * n * (n - 1) / g  # k (k − 1) per configuration
    k = max(2, math.ceil((1.0 + math.sqrt(1.0 + 4.0 * pairs)) / 2.0) - 1)
    while k * (k - 1) < pairs:  # the root's rounding: the fewest k that reach the rate
        k += 1
    if g * k > n:
        top = 100.0 * g * (n // g) * (n // g - 1) / (n * (n - 1)) if n > 1 else 0.0
        raise ValueError(
            f"data.false_negative_percent={percent} cannot be reached with "
            f"data.repeated_configs={g} on {n} {split} scenes: use a value ≤ {top:.2f} or "
            "change data.repeated_configs"
        )
    return k


def repeat_build(
    build: DigitScenesConfig, percent: float, configurations: int
) -> DigitScenesConfig:
    """``build`` with ``configurations`` repeated scene configurations of k scenes each in the
    train split, k the fewest scenes for which ``G k (k − 1) / (N (N − 1))`` (the share of
    ordered train pairs that share a configuration, G = ``configurations``, N =
    ``build.n_train``) reaches ``percent`` %: the configured rate is a floor (1 % with 4
    configurations of 2000 scenes: k = 101, 1.01 %). The test split repeats the same
    configurations, in its own number of scenes each, derived the same way from
    ``build.n_test`` so that its ordered pairs hold the same share of duplicates (1 % of 500
    test scenes: 26 each, 1.04 %).

    Raises:
        ValueError: the rate needs more scenes than the train or test split holds (names
            ``data.false_negative_percent``, the split and the largest reachable value).
    """
    if percent == 0:
        return build
    g = configurations
    k = _fewest_repeats(percent, g, build.n_train, "train")
    k_test = _fewest_repeats(percent, g, build.n_test, "test") if build.n_test else 0
    return replace(build, repeated_configs=g, repeats=k, test_repeats=k_test)


def in_batch_fn_rate(split: SplitTensors, index: Tensor, meanings: Tensor) -> float:
    """% of ordered in-batch pairs (a, b), a ≠ b, whose caption a (meaning ``meanings[a]``) is
    true of scene ``index[b]``: the false negatives among a batch's in-batch negatives."""
    rel = split.relevance(index, meanings)
    n = len(index)
    return 100.0 * float(rel.sum() - rel.diagonal().sum()) / (n * (n - 1))
