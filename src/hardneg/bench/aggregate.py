"""Per-method aggregates of a bench over its seeds: every number as the mean and the sample
standard deviation (``ddof = 1``); NaN / null values are left out of the aggregate and
flagged, never averaged in silently."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from hardneg.bench.tree import EVAL_SPLITS, TRAIN_METRICS, TRAIN_SPLIT, BenchRun, BenchTree, finite

__all__ = ["MetricStats", "aggregate_runs"]


class MetricStats(NamedTuple):
    """Mean ± sample std (ddof = 1) of one metric over all seeds of one method.

    Attributes:
        mean: mean over the finite values (None when there is none).
        std: sample standard deviation (None with fewer than two finite values).
        n: number of finite values.
        values: the per-seed values in seed order (None = missing, null or NaN).
    """

    mean: float | None
    std: float | None
    n: int
    values: list[float | None]


def _run_values(run: BenchRun, ref_mem: float | None) -> dict[str, dict[str, Any]]:
    """``{split: {metric: value}}`` of one run: the eval splits and the ``train`` numbers.

    ``fn_rate`` is the selected negatives' FN rate when the run selects negatives, else the
    in-batch one; ``mem_ratio`` divides the peak memory by the reference method's seed mean.
    (No step-time ratio: the bench's runs share the CPU with different neighbours, so their
    step times are not comparable; see ``benchmarks/bench_steps.py`` for a measurement.)
    """
    out: dict[str, dict[str, Any]] = {}
    for split in EVAL_SPLITS:
        values = run.metrics.get("metrics", {}).get(split)
        if isinstance(values, dict):
            out[split] = dict(values)
    m = run.metrics
    selected, batch = finite(m.get("selected_fn_rate")), finite(m.get("batch_fn_rate"))
    train: dict[str, Any] = {k: m.get(k) for k in TRAIN_METRICS[:4]}
    train["fn_rate"] = selected if selected is not None else batch
    mem = finite(m.get("peak_mem_mib"))
    train["mem_ratio"] = mem / ref_mem if mem is not None and ref_mem is not None else None
    train.update(hardness_trend(run.log))
    out[TRAIN_SPLIT] = train
    return out


POLICY_TREND = ("q_start", "q_end", "q_dup_end", "q_nodup_end")
"""A batch sampler's hardness over training (:func:`hardness_trend`)."""


def hardness_trend(log: dict[str, np.ndarray], share: float = 0.1) -> dict[str, float]:
    """The batch samplers' quantile q at the start and the end of training: the mean of the
    logged ``batch_q_mean`` over the first and the last ``share`` of the logged hard-batch
    steps (``q_start``, ``q_end``), and at the end the mean q of the anchors whose search space
    holds another item of their meaning (``q_dup_end``) and of the others (``q_nodup_end``).
    Empty for a run without hard batches.

    Example:
        >>> trend = hardness_trend({"batch_q_mean": np.linspace(0.5, 0.3, 20)})
        >>> round(trend["q_start"], 3), round(trend["q_end"], 3)
        (0.495, 0.305)
    """
    out: dict[str, float] = {}
    for key, column, part in (
        ("q_start", "batch_q_mean", "start"),
        ("q_end", "batch_q_mean", "end"),
        ("q_dup_end", "batch_q_dup_mean", "end"),
        ("q_nodup_end", "batch_q_nodup_mean", "end"),
    ):
        values = np.asarray(log.get(column, []), dtype=float)
        values = values[np.isfinite(values)]
        if len(values) < 2:
            continue
        n = max(1, round(share * len(values)))
        out[key] = float(values[:n].mean() if part == "start" else values[-n:].mean())
    return out


def _stats(values: list[Any]) -> MetricStats:
    clean = [finite(v) for v in values]
    kept = [v for v in clean if v is not None]
    mean = float(np.mean(kept)) if kept else None
    std = float(np.std(kept, ddof=1)) if len(kept) > 1 else None
    return MetricStats(mean, std, len(kept), clean)


def aggregate_runs(tree: BenchTree) -> tuple[dict, dict]:
    """Per-seed values and their mean ± sample std per method × split × metric.

    The memory ratio is ``x / mean_seeds(x_reference)`` for x = peak memory (None when the
    reference method has no finished run or a non-positive value).

    Args:
        tree: the loaded bench (:func:`~hardneg.bench.tree.load_bench`).

    Returns:
        ``(aggregate, raw)``: ``aggregate[method][split][metric]`` is a :class:`MetricStats`;
        ``raw[method][seed][split][metric]`` the value read from that run (or derived).
    """
    ref = _stats([r.metrics.get("peak_mem_mib") for r in tree.runs_of(tree.reference)]).mean
    ref_mem = ref if ref is not None and ref > 0 else None
    raw: dict[str, dict[int, dict[str, dict[str, Any]]]] = {}
    for run in tree.runs:
        raw.setdefault(run.method, {})[run.seed] = _run_values(run, ref_mem)
    aggregate: dict[str, dict[str, dict[str, MetricStats]]] = {}
    for method, seeds in raw.items():
        splits = list(dict.fromkeys(s for per_seed in seeds.values() for s in per_seed))
        aggregate[method] = {}
        for split in splits:
            metrics = list(dict.fromkeys(k for v in seeds.values() for k in v.get(split, {})))
            aggregate[method][split] = {
                k: _stats([v.get(split, {}).get(k) for v in seeds.values()]) for k in metrics
            }
    return aggregate, raw
