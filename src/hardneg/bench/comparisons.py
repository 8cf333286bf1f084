"""Paired differences between two methods of a bench, with confidence intervals.

Any pair (method, baseline) on any split and metric: test-set metrics by the paired bootstrap
over the test items of ``per_item.npz`` (the same items and resamples for both methods and
every seed they share), run-level scalars (``train`` split: FN rates) by the paired t-interval
over seeds (:mod:`hardneg.bench.statistics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hardneg.bench.arms import parse_arm
from hardneg.bench.statistics import Comparison, Resampler, paired_bootstrap, seed_interval
from hardneg.bench.tree import EVAL_SPLITS, TRAIN_SPLIT, BenchTree
from hardneg.eval.items import metric_items

__all__ = [
    "HEADLINE_METRICS",
    "TRAIN_COMPARED",
    "compare",
    "compare_to_reference",
    "reference_of",
]

HEADLINE_METRICS = (
    "i2t_R@1", "t2i_R@1", "i2t_mAP", "t2i_mAP", "comp_overall", "itm_comp_overall", "ael",
)  # fmt: skip
"""Test-set metrics compared for every method (plus ``comp_<kind>`` for each kind present)."""
TRAIN_COMPARED = ("fn_rate", "batch_fn_rate")
"""Run-level scalars compared over seeds."""


def _seed_items(tree: BenchTree, method: str, split: str, metric: str) -> dict[int, np.ndarray]:
    out = {}
    for run in tree.runs_of(method):
        values = metric_items(run.items.get(split, {}), metric)
        if values is not None:
            out[run.seed] = values
    return out


def compare(
    tree: BenchTree,
    raw: dict,
    method: str,
    baseline: str,
    split: str,
    metric: str,
    resampler: Resampler,
    baseline_metric: str | None = None,
) -> tuple[Comparison, np.ndarray | None] | None:
    """``method − baseline`` on ``split`` / ``metric`` over every seed both ran.

    Args:
        tree: the loaded bench.
        raw: ``raw[method][seed][split][metric]`` of :func:`~hardneg.bench.aggregate.aggregate_runs`
            (the run-level scalars of the ``train`` split).
        method, baseline: the two methods (any pair).
        split: ``"test"``, ``"test_novel"`` or ``"train"``.
        metric: a metric name of that split.
        resampler: the bench's shared resamples.
        baseline_metric: the baseline's metric when it differs (e.g. ``albef``'s re-ranked
            ``i2t_R@1_rerank`` vs its own ``i2t_R@1``: per-query outcomes of the same queries,
            so still paired); default ``metric``.

    Returns:
        ``(comparison, deltas)`` — ``deltas`` the bootstrap ``Δ*`` (None for ``train``) — or
        None when either method has no value for it (not run, or no per-item outcomes).

    Raises:
        ValueError: the two methods' runs were evaluated on different test items (a different
            number of items: a different data build), which cannot be paired.
    """
    wanted = ((method, metric), (baseline, baseline_metric or metric))
    if split == TRAIN_SPLIT:
        per_seed = [
            {s: v.get(split, {}).get(name) for s, v in raw.get(m, {}).items()} for m, name in wanted
        ]
        result = seed_interval(*per_seed)
        return None if result is None else (result, None)
    a, b = (_seed_items(tree, m, split, name) for m, name in wanted)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    lengths = {(m, s, len(x[s])) for m, x in ((method, a), (baseline, b)) for s in seeds}
    if len({n for *_, n in lengths}) != 1:
        raise ValueError(
            f"{split}/{metric}: runs have different numbers of test items {sorted(lengths)}; "
            "they were evaluated on different data and cannot be paired (rerun them in one bench)"
        )
    stacked = [np.stack([x[s] for s in seeds]) for x in (a, b)]
    return paired_bootstrap(*stacked, resampler=resampler, stream=split)


def compare_to_reference(tree: BenchTree, raw: dict, resampler: Resampler) -> dict[str, Any]:
    """``comparisons[method][split][metric]`` = :class:`Comparison` of every method (arm) vs
    its reference (:func:`reference_of`), for :data:`HEADLINE_METRICS` + ``comp_<kind>`` and
    :data:`TRAIN_COMPARED` (entries without a value are left out; the reference itself, and an
    arm whose reference did not run, are not listed)."""
    out: dict[str, Any] = {}
    for method in tree.methods:
        reference = reference_of(tree, method)
        if reference is None:
            continue
        per_split: dict[str, dict[str, Comparison]] = {}
        for split in (*EVAL_SPLITS, TRAIN_SPLIT):
            metrics = TRAIN_COMPARED if split == TRAIN_SPLIT else _eval_metrics(raw, split)
            for metric in metrics:
                result = compare(tree, raw, method, reference, split, metric, resampler)
                if result is not None:
                    per_split.setdefault(split, {})[metric] = result[0]
        if per_split:
            out[method] = per_split
    return out


def reference_of(tree: BenchTree, arm: str) -> str | None:
    """The arm ``arm`` is compared with: the bench's reference method at the same point of a
    sweep (``grit@fn5`` → ``infonce@fn5``: an arm of another data build is evaluated on other
    test items), or None for the reference itself and when that arm has no finished run."""
    try:
        reference = parse_arm(arm).with_method(tree.reference).name
    except ValueError:  # a directory that is no arm (e.g. made by hand): the plain reference
        reference = tree.reference
    return reference if reference != arm and reference in tree.methods else None


def _eval_metrics(raw: dict, split: str) -> list[str]:
    kinds = sorted(
        {
            k
            for seeds in raw.values()
            for v in seeds.values()
            for k in v.get(split, {})
            if k.startswith("comp_") and k != "comp_overall"
        }
    )
    return [*HEADLINE_METRICS, *kinds]
