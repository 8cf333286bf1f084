"""The bench report: ``results.md`` / ``results.csv`` / ``results.json`` and the PNG plots.

Built from the tree :func:`~hardneg.bench.tree.load_bench` reads: per-method mean ± std over
seeds (:func:`~hardneg.bench.aggregate.aggregate_runs`), the paired difference of every method vs
the reference with its 95 % bootstrap interval (:mod:`hardneg.bench.comparisons`), the
papers' claims with a verdict (:mod:`hardneg.bench.claims`) and the plots
(:mod:`hardneg.bench.plots`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from hardneg.bench.aggregate import aggregate_runs
from hardneg.bench.arms import SWEEPS
from hardneg.bench.claims import ClaimResult, check_claims
from hardneg.bench.comparisons import compare_to_reference
from hardneg.bench.plots import write_plots
from hardneg.bench.statistics import LEVEL, N_RESAMPLES, Resampler
from hardneg.bench.sweep import sweep_section
from hardneg.bench.tables import (
    MAIN_COLUMNS,
    NOVEL_COLUMNS,
    Column,
    claims_table,
    difference_table,
    kind_columns,
    results_table,
)
from hardneg.bench.tree import TRAIN_SPLIT, BenchTree, finite, load_bench
from hardneg.data.atomic_files import atomic_write

__all__ = ["write_report"]

_DIFF_COLUMNS = [
    Column("I→T R@1", "test", "i2t_R@1"),
    Column("T→I R@1", "test", "t2i_R@1"),
    Column("I→T mAP", "test", "i2t_mAP"),
    Column("T→I mAP", "test", "t2i_mAP"),
    Column("Comp. (cos)", "test", "comp_overall"),
    Column("Comp. (ITM)", "test", "itm_comp_overall"),
    Column("AEL", "test", "ael"),
    Column("FN rate %", TRAIN_SPLIT, "fn_rate", decimals=2),
]


def _markdown(
    tree: BenchTree, aggregate: dict, comparisons: dict, claims: list[ClaimResult], plots: list
) -> str:
    info = tree.info
    seeds = sorted({r.seed for r in tree.runs})
    planned = info.get("seeds", seeds)
    ref = tree.reference
    has_ref = bool(tree.runs_of(ref))
    overrides = info.get("overrides") or {}
    kinds = kind_columns(aggregate)
    sweeps = [line for key in SWEEPS for line in sweep_section(tree, aggregate, key)]
    same_point = (
        f" An arm of a sweep (`grit@fn5`) is compared with {ref} at the same point "
        f"(`{ref}@fn5`: the same data build), where that ran."
        if sweeps
        else ""
    )
    lines = [
        f"# Bench results: {tree.run_dir.name}",
        "",
        f"Preset **{info.get('preset', 'unknown')}** · {info.get('steps', '?')} steps · "
        f"batch size {info.get('batch_size', '?')} · seeds {', '.join(map(str, planned))} · "
        f"reference method {ref}"
        + ("" if has_ref else " (no finished run: ratios –)")
        + (f" · overrides `{json.dumps(overrides)}`" if overrides else ""),
        "",
        "Cells are mean ± sample std over seeds (just the mean with one seed); retrieval, "
        "compositional accuracy, AEL and FN rate in %. **Bold** = best in the column (highest; "
        "lowest for FN rate and memory ratio).",
        "",
        "## Test",
        "",
        *results_table(tree, aggregate, MAIN_COLUMNS),
        "",
        "FN rate: share of the negatives a sampler selected (BNS) that are false negatives, else "
        "of in-batch negatives. Step time and peak memory are not compared here: the bench "
        "trains several runs at once in shared worker processes, so each shared the CPU and "
        "the allocator with different neighbours; `benchmarks/bench_steps.py` measures them.",
        "",
        "## Test (novel digit–colour combinations)",
        "",
        *results_table(tree, aggregate, NOVEL_COLUMNS),
        "",
        "## Compositional accuracy per perturbation kind (test, cosine)",
        "",
        *results_table(tree, aggregate, kinds),
        "",
        *sweeps,
    ]
    if comparisons:
        lines += [
            f"## Paired differences vs {ref}",
            "",
            f"Δ = method − {ref} in points, averaged over every seed both ran, with its "
            f"{100 * LEVEL:.0f} % interval: paired bootstrap over test items "
            f"({N_RESAMPLES} resamples, the same items for both methods and every seed); FN "
            "rate: paired t-interval over seeds. **Bold\\*** = significant (the interval "
            f"excludes 0).{same_point}",
            "",
            "### Test",
            "",
            *difference_table(tree, comparisons, _DIFF_COLUMNS),
            "",
            "### Test (novel digit–colour combinations)",
            "",
            *difference_table(
                tree, comparisons, [c._replace(split="test_novel") for c in _DIFF_COLUMNS[:4]]
            ),
            "",
            "### Compositional accuracy per kind (test, cosine)",
            "",
            *difference_table(tree, comparisons, kinds),
            "",
        ]
    lines += [
        "## Claims",
        "",
        "Each paper's headline claim, measured here. Verdicts (`hardneg.bench.claims`): "
        '*reproduced* = the interval lies on the claimed side of 0 (for "≥" claims: above '
        "−1 point); *not reproduced* = significant in the opposite direction, or the whole "
        'interval below a quarter of the paper\'s reported gain ("Paper" column); '
        "*inconclusive* otherwise; *not run* = a method of the claim is not in this bench; "
        "*not measured* = its runs have no per-item outcomes for the metric.",
        "",
        *claims_table(claims),
        "",
    ]
    notes = []
    if any("†" in line for line in lines):
        notes.append("† some seeds had no value (null or NaN) for this metric; left out.")
    if tree.skipped:
        notes.append(f"Skipped {len(tree.skipped)} run(s) without metrics.json: "
                     + ", ".join(tree.skipped) + ".")  # fmt: skip
    if notes:
        lines += ["---", "", *[f"- {n}" for n in notes], ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def _csv(raw: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "seed", "split", "metric", "value"])
    for method, seeds in raw.items():
        for seed, splits in seeds.items():
            for split, metrics in splits.items():
                for metric, value in metrics.items():
                    clean = finite(value)
                    writer.writerow([method, seed, split, metric, "" if clean is None else clean])
    return buf.getvalue()


def _json_ready(aggregate: dict, raw: dict) -> tuple[dict, dict]:
    agg = {
        m: {s: {k: {"mean": v.mean, "std": v.std, "n": v.n} for k, v in ks.items()}
            for s, ks in splits.items()}
        for m, splits in aggregate.items()
    }  # fmt: skip
    per_seed = {
        m: {str(seed): {s: {k: finite(v) for k, v in ks.items()} for s, ks in splits.items()}
            for seed, splits in seeds.items()}
        for m, seeds in raw.items()
    }  # fmt: skip
    return agg, per_seed


def write_report(run_dir: Path) -> dict[str, Any]:
    """Write the tables, tidy CSV, JSON and plots of a bench.

    Files written into ``run_dir``: ``results.md`` (test table with the memory ratio,
    test_novel retrieval table, compositional accuracy per perturbation kind, one table per
    swept setting (:mod:`hardneg.bench.sweep`; e.g. method × FN rate), paired differences vs
    the reference with 95 % CIs, the claims table), ``results.csv`` (tidy:
    method, seed, split, metric, value — splits ``test``, ``test_novel`` and ``train`` for the
    numbers measured while training), ``results.json`` and ``plots/*.png`` (see
    :mod:`hardneg.bench.plots`; a plot whose columns no run logged is skipped).

    Args:
        run_dir: the bench directory (``hardneg bench --out``; ``hardneg report RUN``).

    Returns:
        the content of ``results.json`` (``bench``, ``reference``, ``methods``, ``skipped``,
        ``aggregate[method][split][metric] = {mean, std, n}``, per-seed
        ``raw[method][seed][split][metric]``, ``comparisons[method][split][metric] = {diff,
        lo, hi, significant, n, seeds}`` vs the reference, ``claims``: one dict per claim)
        plus ``files``: the paths written.

    Raises:
        FileNotFoundError: ``run_dir`` is missing or holds no finished run.

    Example:
        >>> report = write_report(Path("runs/quick"))  # doctest: +SKIP
        >>> report["aggregate"]["bacl"]["test"]["i2t_R@1"]["mean"]  # doctest: +SKIP
    """
    tree = load_bench(Path(run_dir))
    aggregate, raw = aggregate_runs(tree)
    resampler = Resampler()
    comparisons = compare_to_reference(tree, raw, resampler)
    claims = check_claims(tree, raw, resampler)
    plots = write_plots(tree, aggregate, tree.run_dir / "plots")
    agg_json, raw_json = _json_ready(aggregate, raw)
    files = [tree.run_dir / name for name in ("results.md", "results.csv", "results.json")]
    result: dict[str, Any] = {
        "bench": tree.info,
        "reference": tree.reference,
        "methods": tree.methods,
        "skipped": tree.skipped,
        "aggregate": agg_json,
        "raw": raw_json,
        "comparisons": {
            m: {s: {k: c.as_dict() for k, c in ks.items()} for s, ks in splits.items()}
            for m, splits in comparisons.items()
        },
        "claims": [c.as_dict() for c in claims],
        "files": [str(p) for p in [*files, *plots]],
    }
    markdown = _markdown(tree, aggregate, comparisons, claims, plots)
    texts = (markdown, _csv(raw), json.dumps(result, indent=2))
    for path, text in zip(files, texts):
        atomic_write(path, lambda f, text=text: f.write(text.encode()))
    return result
