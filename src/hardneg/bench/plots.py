"""The bench plots (README, "Results"): recall bars, training curves, BACL curriculum and
hardness, FALCON q over training, FN rate per method, and each sweep's retrieval against its
value (:mod:`hardneg.bench.sweep`).

Every plot is drawn on a bare :class:`matplotlib.figure.Figure` (:mod:`hardneg.bench.figures`).
A plot whose inputs no run has (e.g. no BNS run, so no ``alpha`` column) is skipped: its
function returns None.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hardneg.bench.aggregate import MetricStats
from hardneg.bench.arms import SWEEPS
from hardneg.bench.figures import figure, grouped_bars, method_colour, save
from hardneg.bench.sweep import plot_sweep
from hardneg.bench.tree import BenchRun, BenchTree
from hardneg.miners.curriculum import CURRICULUM_PRESETS, LogisticCurriculum

__all__ = [
    "curriculum_curves",
    "mean_curve",
    "plot_bacl_curriculum",
    "plot_falcon_q",
    "plot_fn_rate",
    "plot_recall_bars",
    "plot_selected_hardness",
    "plot_training_curves",
    "write_plots",
]

def mean_curve(runs: list[BenchRun], column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean over seeds of a logged column, per step (NaN cells ignored).

    Args:
        runs: runs of one method.
        column: a ``train_log.csv`` column.

    Returns:
        ``(steps, mean)`` over the steps where at least one run logged a finite value, or
        None when no run did.

    Example:
        >>> a = BenchRun("m", 0, Path("."), {}, log={"step": np.array([1.0, 2]),
        ...                                          "loss": np.array([1.0, 3])})
        >>> b = BenchRun("m", 1, Path("."), {}, log={"step": np.array([1.0, 2]),
        ...                                          "loss": np.array([2.0, np.nan])})
        >>> mean_curve([a, b], "loss")
        (array([1., 2.]), array([1.5, 3. ]))
    """
    steps, values = [], []
    for run in runs:
        if column in run.log and "step" in run.log:
            keep = np.isfinite(run.log[column]) & np.isfinite(run.log["step"])
            steps.append(run.log["step"][keep])
            values.append(run.log[column][keep])
    if not steps or not sum(len(s) for s in steps):
        return None
    all_steps, all_values = np.concatenate(steps), np.concatenate(values)
    unique, inverse = np.unique(all_steps, return_inverse=True)
    sums = np.bincount(inverse, weights=all_values, minlength=len(unique))
    counts = np.bincount(inverse, minlength=len(unique))
    return unique, sums / counts


def _methods_with(tree: BenchTree, column: str) -> list[str]:
    return [m for m in tree.methods if mean_curve(tree.runs_of(m), column) is not None]


def plot_recall_bars(tree: BenchTree, aggregate: dict, path: Path) -> Path | None:
    """Grouped bars of R@1 I→T and T→I per method, one panel per split; error bars = std."""
    splits = [
        s for s in ("test", "test_novel")
        if any(_mean(aggregate, m, s, "i2t_R@1") is not None for m in tree.methods)
    ]  # fmt: skip
    if not splits:
        return None
    fig, axes = figure(0.7 * len(tree.methods) + 2, 4.0 * len(splits), nrows=len(splits))
    series = [("i2t_R@1", "I→T R@1", ""), ("t2i_R@1", "T→I R@1", "//")]
    for ax, split in zip(axes[:, 0], splits):
        grouped_bars(ax, tree, aggregate, tree.methods, split, series)
        ax.set_ylabel("Recall@1 (%)")
        ax.set_title(f"Recall@1 on {split} (mean ± std over seeds)")
    return save(fig, path)


def _mean(aggregate: dict, method: str, split: str, metric: str) -> float | None:
    stats: MetricStats | None = aggregate.get(method, {}).get(split, {}).get(metric)
    return None if stats is None else stats.mean


def plot_training_curves(tree: BenchTree, path: Path) -> Path | None:
    """Total loss and contrastive loss vs step per method (mean over seeds)."""
    panels = [(c, t) for c, t in (("loss", "total loss"), ("contrastive", "contrastive loss"))
              if _methods_with(tree, c)]  # fmt: skip
    if not panels:
        return None
    fig, axes = figure(6.0 * len(panels), 4.5, ncols=len(panels))
    for ax, (column, title) in zip(axes[0], panels):
        for method in tree.methods:
            curve = mean_curve(tree.runs_of(method), column)
            if curve is not None:
                ax.plot(*curve, label=method, color=method_colour(tree, method), lw=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel(title)
        ax.set_title(f"{title.capitalize()} during training (mean over seeds)")
        ax.legend(fontsize=7, ncol=2)
    return save(fig, path)


def _total_epochs(run: BenchRun) -> float | None:
    """Epochs of the whole run: ``steps × (epoch / step)`` of the last logged row."""
    step, epoch, total = run.log.get("step"), run.log.get("epoch"), run.total_steps
    if step is None or epoch is None or total is None:
        return None
    keep = np.isfinite(step) & np.isfinite(epoch) & (step > 0)
    if not keep.any():
        return None
    return float(total * epoch[keep][-1] / step[keep][-1])


def curriculum_curves(total_epochs: float, points: int = 200) -> dict[str, tuple]:
    """α(η) of every preset in :data:`~hardneg.samplers.CURRICULUM_PRESETS` on [0, total].

    Args:
        total_epochs: length of the run in epochs (sets η₀ = midpoint_fraction · total).
        points: number of η values.

    Returns:
        ``{preset: (eta, alpha)}`` as numpy arrays.

    Example:
        >>> eta, alpha = curriculum_curves(10.0, points=3)["default"]
        >>> eta.tolist(), round(float(alpha[1]), 3)
        ([0.0, 5.0, 10.0], -0.1)
    """
    if not total_epochs > 0:
        raise ValueError(f"total_epochs must be > 0, got {total_epochs}")
    eta = np.linspace(0.0, total_epochs, points)
    curves = {}
    for name in CURRICULUM_PRESETS:
        curriculum = LogisticCurriculum.from_preset(name)
        curves[name] = (eta, np.array([curriculum(float(e), total_epochs) for e in eta]))
    return curves


def plot_bacl_curriculum(tree: BenchTree, path: Path) -> Path | None:
    """Logged α vs η of every BNS run, over the analytic α(η) of the three presets (BACL §3)."""
    runs = [
        r for r in tree.runs
        if {"alpha", "epoch", "step"} <= r.log.keys()
        and (np.isfinite(r.log["alpha"]) & np.isfinite(r.log["epoch"])).any()
    ]  # fmt: skip
    if not runs:
        return None
    totals = [t for t in map(_total_epochs, runs) if t is not None]
    fig, axes = figure(9.0, 5.0)
    ax = axes[0, 0]
    if totals:
        for (name, (eta, alpha)), style in zip(
            curriculum_curves(max(totals)).items(), ("-", "--", ":")
        ):
            ax.plot(eta, alpha, style, color="grey", lw=2, label=f"analytic α(η): {name}")
    for run in runs:
        step, epoch, alpha = run.log["step"], run.log["epoch"], run.log["alpha"]
        keep = np.isfinite(alpha) & np.isfinite(epoch) & np.isfinite(step) & (step > 0)
        # a row logged at step s holds the α the miner used at η = (s − 1) / steps_per_epoch
        eta = epoch[keep] * (step[keep] - 1) / step[keep]
        curriculum = run.config.get("miner", {}).get("curriculum", "?")
        ax.plot(eta, alpha[keep], "o-", ms=3, lw=1,
                color=method_colour(tree, run.method),
                label=f"{run.method} seed {run.seed} (logged, {curriculum})")  # fmt: skip
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xlabel("training progress η (epochs)")
    ax.set_ylabel("α(η)  (> 0 suppresses, < 0 favours hard negatives)")
    ax.set_title("BACL curriculum α(η): logged vs analytic presets")
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_selected_hardness(tree: BenchTree, path: Path) -> Path | None:
    """Histograms of the selected negatives' boundary scores, first vs last third of steps."""
    panels = []
    for method in tree.methods:
        runs = [r for r in tree.runs_of(method) if r.selected_boundary_scores is not None]
        runs = [r for r in runs if len(r.selected_boundary_scores)]
        early, late = [], []
        for run in runs:
            steps, scores = run.selected_boundary_scores[:, 0], run.selected_boundary_scores[:, 1]
            total = run.total_steps or float(np.nanmax(steps) + 1)
            ok = np.isfinite(scores)
            early.append(scores[ok & (steps < total / 3)])
            late.append(scores[ok & (steps >= 2 * total / 3)])
        if runs and (sum(map(len, early)) or sum(map(len, late))):
            panels.append((method, np.concatenate(early), np.concatenate(late)))
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = figure(4.0 * ncols, 3.6 * nrows, nrows=nrows, ncols=ncols)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (method, early, late) in zip(axes.flat, panels):
        both = np.concatenate([early, late])
        bins = np.histogram_bin_edges(both, bins=30)
        for scores, label, colour in ((early, "early (first third)", "tab:blue"),
                                      (late, "late (last third)", "tab:red")):  # fmt: skip
            if len(scores):
                ax.hist(scores, bins=bins, density=True, alpha=0.55, color=colour,
                        label=f"{label}, n={len(scores)}")  # fmt: skip
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_xlabel("boundary score s_ij − s_ii")
        ax.set_ylabel("density")
        ax.set_title(f"{method}: selected negatives")
        ax.legend(fontsize=7)
    return save(fig, path)


def plot_falcon_q(tree: BenchTree, path: Path) -> Path | None:
    """Hardness quantile q over training (batch mean, p10–p90 band) per GRIT/FALCON method;
    for FALCON's also the mean q of anchors whose search space holds a same-meaning item
    (dashed) and of the others (dotted)."""
    methods = _methods_with(tree, "batch_q_mean")
    if not methods:
        return None
    fig, axes = figure(9.0, 5.0)
    ax = axes[0, 0]
    for method in methods:
        runs = tree.runs_of(method)
        steps, q = mean_curve(runs, "batch_q_mean")
        colour = method_colour(tree, method)
        ax.plot(steps, q, color=colour, lw=1.8, label=f"{method} (batch mean q)")
        low, high = mean_curve(runs, "batch_q_p10"), mean_curve(runs, "batch_q_p90")
        if low is not None and high is not None:
            common, il, ih = np.intersect1d(low[0], high[0], return_indices=True)
            ax.fill_between(common, low[1][il], high[1][ih], color=colour, alpha=0.18,
                            label=f"{method} p10–p90")  # fmt: skip
        for column, style, what in (
            ("batch_q_dup_mean", "--", "anchors with a same-meaning item in their space"),
            ("batch_q_nodup_mean", ":", "the other anchors"),
        ):
            curve = mean_curve(runs, column)
            if curve is not None and method.startswith("falcon"):
                ax.plot(*curve, color=colour, lw=1.0, ls=style, label=f"{method}: {what}")
    ax.set_xlabel("step (no point: random batches while the embedding store fills)")
    ax.set_ylabel("hardness quantile q (0 = easy, 1 = hardest)")
    ax.set_title("Hardness quantile q of the batch samplers over training (mean over seeds)")
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_fn_rate(tree: BenchTree, aggregate: dict, path: Path) -> Path | None:
    """FN rate (%) of the selected and of the in-batch negatives per method; error bars = std."""
    series = [("selected_fn_rate", "selected negatives (BNS)", ""),
              ("batch_fn_rate", "in-batch negatives", "//")]  # fmt: skip
    methods = [
        m for m in tree.methods
        if any(_mean(aggregate, m, "train", metric) is not None for metric, _, _ in series)
    ]  # fmt: skip
    if not methods:
        return None
    fig, axes = figure(0.7 * len(methods) + 2, 4.5)
    ax = axes[0, 0]
    grouped_bars(ax, tree, aggregate, methods, "train", series)
    ax.set_ylabel("false-negative rate (%)")
    ax.set_title("Share of negatives that are false negatives (mean ± std over seeds)")
    return save(fig, path)


def write_plots(tree: BenchTree, aggregate: dict, out_dir: Path) -> list[Path]:
    """Draw every plot that has data into ``out_dir``; returns the files written.

    Args:
        tree: the loaded bench (:func:`hardneg.bench.tree.load_bench`).
        aggregate: ``aggregate[method][split][metric]`` of
            :func:`hardneg.bench.aggregate.aggregate_runs`.
        out_dir: where the PNGs go (created; ``RUN/plots``).
    """
    plots: list[tuple[str, Callable[[Path], Path | None]]] = [
        ("recall_bars.png", lambda p: plot_recall_bars(tree, aggregate, p)),
        ("training_curves.png", lambda p: plot_training_curves(tree, p)),
        ("bacl_curriculum.png", lambda p: plot_bacl_curriculum(tree, p)),
        ("selected_hardness.png", lambda p: plot_selected_hardness(tree, p)),
        ("falcon_q.png", lambda p: plot_falcon_q(tree, p)),
        ("fn_rate.png", lambda p: plot_fn_rate(tree, aggregate, p)),
        *[(f"{key}_sweep.png", lambda p, key=key: plot_sweep(tree, aggregate, key, p))
          for key in SWEEPS],
    ]  # fmt: skip
    written = []
    for name, draw in plots:
        path = draw(out_dir / name)
        if path is not None:
            written.append(path)
        elif (out_dir / name).is_file():  # stale from an earlier report: no longer backed
            (out_dir / name).unlink()
    return written
