"""The markdown tables of a bench report: per-method results, paired differences, claims."""

from __future__ import annotations

from typing import NamedTuple

from hardneg.bench.aggregate import MetricStats
from hardneg.bench.claims import ClaimResult
from hardneg.bench.statistics import Comparison
from hardneg.bench.tree import TRAIN_SPLIT, BenchTree

__all__ = [
    "MAIN_COLUMNS",
    "NOVEL_COLUMNS",
    "Column",
    "claims_table",
    "difference_table",
    "kind_columns",
    "results_table",
]


class Column(NamedTuple):
    """One table column: header, split and metric, which way is better, decimals."""

    header: str
    split: str
    metric: str
    higher_is_better: bool = True
    decimals: int = 1


_RETRIEVAL = [
    Column("I→T R@1", "test", "i2t_R@1"),
    Column("T→I R@1", "test", "t2i_R@1"),
    Column("I→T R@5", "test", "i2t_R@5"),
    Column("I→T R@10", "test", "i2t_R@10"),
    Column("T→I R@5", "test", "t2i_R@5"),
    Column("T→I R@10", "test", "t2i_R@10"),
    Column("I→T mAP", "test", "i2t_mAP"),
    Column("T→I mAP", "test", "t2i_mAP"),
]
MAIN_COLUMNS = [
    *_RETRIEVAL,
    Column("I→T R@1 rerank", "test", "i2t_R@1_rerank"),
    Column("T→I R@1 rerank", "test", "t2i_R@1_rerank"),
    Column("Comp. (cos)", "test", "comp_overall"),
    Column("Comp. (ITM)", "test", "itm_comp_overall"),
    Column("AEL", "test", "ael"),
    Column("FN rate %", TRAIN_SPLIT, "fn_rate", higher_is_better=False, decimals=2),
]
"""Columns of the main results table (test split, percentages). No time or memory column: the
bench's runs share the CPU and a worker process, so their step times and peaks are not a
controlled comparison (``benchmarks/bench_steps.py`` is); ``mem_ratio`` stays in the JSON."""
NOVEL_COLUMNS = [c._replace(split="test_novel") for c in _RETRIEVAL]


def _format(stats: MetricStats | None, decimals: int, seeds: int) -> tuple[str, float | None]:
    """The cell text (mean, or mean ± std) and the rounded mean the bold mark compares."""
    if stats is None or stats.mean is None:
        return "–", None
    mean = round(stats.mean, decimals)
    text = f"{mean:.{decimals}f}"
    if stats.std is not None:
        text += f" ± {stats.std:.{decimals}f}"
    if stats.n < seeds:
        text += "†"
    return text, mean


def results_table(tree: BenchTree, aggregate: dict, columns: list[Column]) -> list[str]:
    """A markdown table, one row per method; the best (rounded) mean of each column in bold."""
    cells = {}
    for method in tree.methods:
        seeds = len(tree.runs_of(method))
        for col in columns:
            stats = aggregate[method].get(col.split, {}).get(col.metric)
            cells[method, col] = _format(stats, col.decimals, seeds)
    for col in columns:
        means = [cells[m, col][1] for m in tree.methods if cells[m, col][1] is not None]
        if len(set(means)) < 2:  # one value, or all tied: nothing stands out
            continue
        best = max(means) if col.higher_is_better else min(means)
        for m in tree.methods:
            text, mean = cells[m, col]
            if mean == best:
                cells[m, col] = (f"**{text}**", mean)
    lines = [
        "| Method | " + " | ".join(c.header for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for m in tree.methods:
        lines.append(f"| {m} | " + " | ".join(cells[m, c][0] for c in columns) + " |")
    return lines


def kind_columns(aggregate: dict) -> list[Column]:
    """One column per compositional perturbation kind present (test, cosine), then overall."""
    kinds = sorted(
        {
            k.removeprefix("comp_")
            for per_split in aggregate.values()
            for k in per_split.get("test", {})
            if k.startswith("comp_") and k != "comp_overall"
        }
    )
    return [Column(k.replace("_", " "), "test", f"comp_{k}") for k in kinds] + [
        Column("overall", "test", "comp_overall")
    ]


def _difference(c: Comparison | None, decimals: int) -> str:
    """``+Δ [lo, hi]`` with ``*`` when significant; ``Δ`` alone without an interval."""
    if c is None:
        return "–"
    text = f"{c.diff:+.{decimals}f}"
    if c.lo is not None and c.hi is not None:
        text += f" [{c.lo:+.{decimals}f}, {c.hi:+.{decimals}f}]"
    return f"**{text}\\***" if c.significant else text


def difference_table(tree: BenchTree, comparisons: dict, columns: list[Column]) -> list[str]:
    """One row per non-reference method: ``method − reference`` per column, 95 % CI in
    brackets, significant differences in bold with a ``*``."""
    lines = [
        "| Method | " + " | ".join(c.header for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for m in tree.methods:
        if m not in comparisons:
            continue
        cells = [
            _difference(comparisons[m].get(c.split, {}).get(c.metric), c.decimals) for c in columns
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def claims_table(results: list[ClaimResult]) -> list[str]:
    """One row per claim: paper, claim, methods, metric, the measured difference with its CI,
    the paper's reported size, the verdict."""
    lines = [
        "| Paper | Claim | Compared | Metric | Measured Δ [95 % CI] | Paper | Verdict |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for r in results:
        c = r.claim
        split = "novel − test" if c.ood else c.split
        decimals = 2 if c.split == TRAIN_SPLIT else 1
        measured = _difference(r.comparison, decimals).replace("**", "").replace("\\*", "")
        paper = "–" if c.claimed is None else f"{c.direction * c.claimed:+.1f}"
        text = c.text.replace("|", "\\|")  # a pipe would end the cell
        lines.append(
            f"| {c.paper} | {text} | {c.method} − {c.baseline} | {c.metric} ({split}) | "
            f"{measured} | {paper} | {r.verdict} |"
        )
    return lines
