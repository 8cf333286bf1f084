"""The bench report: ``results.md`` / ``results.csv`` / ``results.json`` and the PNG plots.

Reads the tree ``hardneg bench`` leaves (BENCHMARK.md, "Runs")::

    RUN/bench.json                       preset, methods, seeds, steps, batch_size, reference
    RUN/<method>/seed<k>/config.json     the TrainConfig as a dict
    RUN/<method>/seed<k>/train_log.csv   one row per logged step (empty cell = not logged)
    RUN/<method>/seed<k>/metrics.json    test / test_novel metrics, step time, peak memory, FN rate
    RUN/<method>/seed<k>/selected_bs.npy (BNS methods) (step, boundary score) of selected negatives

A run directory without ``metrics.json`` is unfinished (or failed): it is skipped and named
in the table footer. Every number is aggregated per method over its seeds as the mean and the
sample standard deviation (``ddof = 1``); NaN / null values are left out of the aggregate and
the cell is flagged (†), never averaged in silently.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hardneg.data.atomic_files import atomic_write

__all__ = [
    "BenchRun",
    "BenchTree",
    "MetricStats",
    "aggregate_runs",
    "load_bench",
    "read_train_log",
    "write_report",
]

EVAL_SPLITS = ("test", "test_novel")
TRAIN_SPLIT = "train"
"""Pseudo-split of the per-run numbers measured while training (cost, FN rate, ratios)."""
TRAIN_METRICS = (
    "step_time", "peak_mem_mib", "selected_fn_rate", "batch_fn_rate",
    "fn_rate", "time_ratio", "mem_ratio",
)  # fmt: skip
_SEED_DIR = re.compile(r"seed(\d+)$")


@dataclass
class BenchRun:
    """One finished (method, seed) run of a bench.

    Attributes:
        method: the method name (the run's parent directory).
        seed: the seed (``metrics.json`` ``seed``, else the ``seed<k>`` directory name).
        path: the run directory.
        metrics: ``metrics.json`` as loaded.
        config: ``config.json`` ({} when absent).
        log: ``train_log.csv`` as columns of floats (NaN where a cell is empty; {} when absent).
        selected_bs: ``selected_bs.npy`` (n, 2) of (step, boundary score), or None.
    """

    method: str
    seed: int
    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    log: dict[str, np.ndarray] = field(default_factory=dict)
    selected_bs: np.ndarray | None = None

    @property
    def total_steps(self) -> int | None:
        """Training steps of the run (``metrics.json`` ``steps``, else ``config.json``)."""
        steps = self.metrics.get("steps", self.config.get("steps"))
        return int(steps) if isinstance(steps, int | float) and steps > 0 else None


@dataclass
class BenchTree:
    """Everything a report is built from.

    Attributes:
        run_dir: the bench directory.
        info: ``bench.json`` ({} when absent).
        runs: the finished runs, in method order then seed order.
        methods: methods with at least one finished run, in ``bench.json`` order first.
        skipped: ``"<method>/seed<k> (<why>)"`` for every run without ``metrics.json``.
    """

    run_dir: Path
    info: dict[str, Any]
    runs: list[BenchRun]
    methods: list[str]
    skipped: list[str]

    @property
    def reference(self) -> str:
        """The method the cost ratios are relative to (``bench.json`` ``reference``)."""
        return str(self.info.get("reference") or "infonce")

    def runs_of(self, method: str) -> list[BenchRun]:
        """The finished runs of ``method``."""
        return [r for r in self.runs if r.method == method]


class MetricStats(NamedTuple):
    """Mean ± sample std (ddof = 1) of one metric over the seeds of one method.

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


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, not a number, NaN or ±inf."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _float_cell(cell: str | None) -> float:
    try:
        return float(cell) if cell not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_train_log(path: Path) -> dict[str, np.ndarray]:
    """Read a ``train_log.csv`` into float columns (empty or non-numeric cell → NaN).

    Args:
        path: the CSV file (header row, then one row per logged step).

    Returns:
        ``{column: array}``, all of the same length; {} for a missing or empty file.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "train_log.csv"
        >>> _ = p.write_text("step,loss,alpha\\n5,1.5,\\n10,1.25,0.3\\n")
        >>> log = read_train_log(p)
        >>> log["loss"].tolist(), bool(np.isnan(log["alpha"][0]))
        ([1.5, 1.25], True)
    """
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    keys = list(dict.fromkeys(k for row in rows for k in row if k is not None))
    return {k: np.array([_float_cell(row.get(k)) for row in rows], dtype=float) for k in keys}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and rerun that run") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _load_run(method: str, seed_dir: Path) -> BenchRun:
    metrics = _read_json(seed_dir / "metrics.json")
    match = _SEED_DIR.search(seed_dir.name)
    seed = metrics.get("seed", int(match.group(1)) if match else 0)
    config_path = seed_dir / "config.json"
    bs_path = seed_dir / "selected_bs.npy"
    selected_bs = None
    if bs_path.is_file():
        selected_bs = np.load(bs_path)
        if selected_bs.ndim != 2 or selected_bs.shape[1] != 2:
            raise ValueError(
                f"{bs_path} has shape {selected_bs.shape}; "
                "expected (n, 2) columns (step, boundary score)"
            )
    return BenchRun(
        method=str(metrics.get("method", method)),
        seed=int(seed),
        path=seed_dir,
        metrics=metrics,
        config=_read_json(config_path) if config_path.is_file() else {},
        log=read_train_log(seed_dir / "train_log.csv"),
        selected_bs=selected_bs,
    )


def load_bench(run_dir: Path) -> BenchTree:
    """Load every finished run under ``run_dir`` and list the unfinished ones.

    Methods and seeds come from ``bench.json`` (a planned run whose directory is missing is
    listed as "not started") and from the ``<method>/seed<k>/`` directories present.

    Args:
        run_dir: the bench directory (``hardneg bench --out``).

    Raises:
        FileNotFoundError: ``run_dir`` does not exist, or no run in it has finished.
        ValueError: a ``bench.json`` / ``metrics.json`` / ``config.json`` is not a JSON object.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"bench directory {run_dir} does not exist; run `hardneg bench --out {run_dir}` "
            "first or pass the directory that holds bench.json"
        )
    info = _read_json(run_dir / "bench.json") if (run_dir / "bench.json").is_file() else {}
    planned_methods = [str(m) for m in info.get("methods", [])]
    found = [p for p in run_dir.glob("*/seed*") if p.is_dir() and _SEED_DIR.search(p.name)]
    planned = [run_dir / m / f"seed{s}" for m in planned_methods for s in info.get("seeds", [])]
    order = list(dict.fromkeys(planned_methods + sorted(p.parent.name for p in found)))
    seed_dirs = sorted(
        set(found) | set(planned),
        key=lambda p: (order.index(p.parent.name), int(_SEED_DIR.search(p.name).group(1))),
    )
    runs, skipped = [], []
    for seed_dir in seed_dirs:
        name = f"{seed_dir.parent.name}/{seed_dir.name}"
        if (seed_dir / "metrics.json").is_file():
            runs.append(_load_run(seed_dir.parent.name, seed_dir))
        elif not seed_dir.is_dir():
            skipped.append(f"{name} (not started)")
        elif (seed_dir / "error.log").is_file():
            skipped.append(f"{name} (failed, see error.log)")
        else:
            skipped.append(f"{name} (unfinished: no metrics.json)")
    if not runs:
        raise FileNotFoundError(
            f"no finished run under {run_dir} (no <method>/seed<k>/metrics.json); "
            "run `hardneg bench` to completion first"
        )
    methods = list(dict.fromkeys(r.method for r in runs))
    return BenchTree(run_dir, info, runs, methods, skipped)


def _run_values(run: BenchRun, reference: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """``{split: {metric: value}}`` of one run: the eval splits and the ``train`` numbers.

    ``fn_rate`` is the selected negatives' FN rate when the run selects negatives, else the
    in-batch one; ``time_ratio`` / ``mem_ratio`` divide by the reference method's seed mean.
    """
    out: dict[str, dict[str, Any]] = {}
    for split in EVAL_SPLITS:
        values = run.metrics.get("metrics", {}).get(split)
        if isinstance(values, dict):
            out[split] = dict(values)
    m = run.metrics
    selected, batch = _finite(m.get("selected_fn_rate")), _finite(m.get("batch_fn_rate"))
    train: dict[str, Any] = {k: m.get(k) for k in TRAIN_METRICS[:4]}
    train["fn_rate"] = selected if selected is not None else batch
    for key, source in (("time_ratio", "step_time"), ("mem_ratio", "peak_mem_mib")):
        value, ref = _finite(m.get(source)), reference[source]
        train[key] = value / ref if value is not None and ref is not None else None
    out[TRAIN_SPLIT] = train
    return out


def _stats(values: list[Any]) -> MetricStats:
    clean = [_finite(v) for v in values]
    finite = [v for v in clean if v is not None]
    mean = float(np.mean(finite)) if finite else None
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return MetricStats(mean, std, len(finite), clean)


def aggregate_runs(tree: BenchTree) -> tuple[dict, dict]:
    """Per-seed values and their mean ± sample std per method × split × metric.

    The cost ratios are ``x / mean_seeds(x_reference)`` for x = median step time and peak
    memory (None when the reference method has no finished run or a non-positive value).

    Args:
        tree: the loaded bench (:func:`load_bench`).

    Returns:
        ``(aggregate, raw)``: ``aggregate[method][split][metric]`` is a :class:`MetricStats`;
        ``raw[method][seed][split][metric]`` the value read from that run (or derived).
    """
    reference: dict[str, float | None] = {}
    for source in ("step_time", "peak_mem_mib"):
        ref = _stats([r.metrics.get(source) for r in tree.runs_of(tree.reference)]).mean
        reference[source] = ref if ref is not None and ref > 0 else None
    raw: dict[str, dict[int, dict[str, dict[str, Any]]]] = {}
    for run in tree.runs:
        raw.setdefault(run.method, {})[run.seed] = _run_values(run, reference)
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


# ------------------------------------------------------------------------------ markdown
class _Column(NamedTuple):
    header: str
    split: str
    metric: str
    higher_is_better: bool = True
    decimals: int = 1


_RETRIEVAL = [
    _Column("I→T R@1", "test", "i2t_R@1"),
    _Column("T→I R@1", "test", "t2i_R@1"),
    _Column("I→T R@5", "test", "i2t_R@5"),
    _Column("I→T R@10", "test", "i2t_R@10"),
    _Column("T→I R@5", "test", "t2i_R@5"),
    _Column("T→I R@10", "test", "t2i_R@10"),
    _Column("I→T mAP", "test", "i2t_mAP"),
    _Column("T→I mAP", "test", "t2i_mAP"),
]
MAIN_COLUMNS = [
    *_RETRIEVAL,
    _Column("Comp. (cos)", "test", "comp_overall"),
    _Column("Comp. (ITM)", "test", "itm_comp_overall"),
    _Column("AEL", "test", "ael"),
    _Column("FN rate %", TRAIN_SPLIT, "fn_rate", higher_is_better=False, decimals=2),
    _Column("Time ×", TRAIN_SPLIT, "time_ratio", higher_is_better=False, decimals=2),
    _Column("Mem ×", TRAIN_SPLIT, "mem_ratio", higher_is_better=False, decimals=2),
]
"""Columns of the main results table (test split, percentages unless a ratio)."""
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


def _table(tree: BenchTree, aggregate: dict, columns: list[_Column]) -> list[str]:
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


def _kind_columns(aggregate: dict) -> list[_Column]:
    kinds = sorted(
        {
            k.removeprefix("comp_")
            for per_split in aggregate.values()
            for k in per_split.get("test", {})
            if k.startswith("comp_") and k != "comp_overall"
        }
    )
    return [_Column(k.replace("_", " "), "test", f"comp_{k}") for k in kinds] + [
        _Column("overall", "test", "comp_overall")
    ]


def _markdown(tree: BenchTree, aggregate: dict, plots: list[Path]) -> str:
    info = tree.info
    seeds = sorted({r.seed for r in tree.runs})
    planned = info.get("seeds", seeds)
    ref = tree.reference
    has_ref = bool(tree.runs_of(ref))
    lines = [
        f"# Bench results: {tree.run_dir.name}",
        "",
        f"Preset **{info.get('preset', 'unknown')}** · {info.get('steps', '?')} steps · "
        f"batch size {info.get('batch_size', '?')} · seeds {', '.join(map(str, planned))} · "
        f"reference method {ref}" + ("" if has_ref else " (no finished run: ratios –)"),
        "",
        "Cells are mean ± sample std over seeds (just the mean with one seed); retrieval, "
        "compositional accuracy, AEL and FN rate in %. **Bold** = best in the column (highest; "
        "lowest for FN rate, time and memory ratios).",
        "",
        "## Test",
        "",
        *_table(tree, aggregate, MAIN_COLUMNS),
        "",
        f"FN rate: share of the negatives a sampler selected (BNS) that are false negatives, else "
        f"of in-batch negatives. Time × / Mem ×: median step time / peak memory relative to "
        f"{ref} (mean over its seeds).",
        "",
        "## Test (novel digit–colour combinations)",
        "",
        *_table(tree, aggregate, NOVEL_COLUMNS),
        "",
        "## Compositional accuracy per perturbation kind (test, cosine)",
        "",
        *_table(tree, aggregate, _kind_columns(aggregate)),
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


# ------------------------------------------------------------------------------ csv / json
def _csv(raw: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "seed", "split", "metric", "value"])
    for method, seeds in raw.items():
        for seed, splits in seeds.items():
            for split, metrics in splits.items():
                for metric, value in metrics.items():
                    clean = _finite(value)
                    writer.writerow([method, seed, split, metric, "" if clean is None else clean])
    return buf.getvalue()


def _json_ready(aggregate: dict, raw: dict) -> tuple[dict, dict]:
    agg = {
        m: {s: {k: {"mean": v.mean, "std": v.std, "n": v.n} for k, v in ks.items()}
            for s, ks in splits.items()}
        for m, splits in aggregate.items()
    }  # fmt: skip
    per_seed = {
        m: {str(seed): {s: {k: _finite(v) for k, v in ks.items()} for s, ks in splits.items()}
            for seed, splits in seeds.items()}
        for m, seeds in raw.items()
    }  # fmt: skip
    return agg, per_seed


def write_report(run_dir: Path) -> dict[str, Any]:
    """Write the tables, tidy CSV, JSON and plots of a bench (BENCHMARK.md, "Runs").

    Files written into ``run_dir``: ``results.md`` (test table with cost ratios, test_novel
    retrieval table, compositional accuracy per perturbation kind), ``results.csv`` (tidy:
    method, seed, split, metric, value — splits ``test``, ``test_novel`` and ``train`` for the
    numbers measured while training), ``results.json`` and ``plots/*.png`` (see
    :mod:`hardneg.bench.plots`; a plot whose columns no run logged is skipped).

    Args:
        run_dir: the bench directory (``hardneg bench --out``; ``hardneg report RUN``).

    Returns:
        the content of ``results.json`` (``bench``, ``reference``, ``methods``, ``skipped``,
        ``aggregate[method][split][metric] = {mean, std, n}``, per-seed ``raw`` values) plus
        ``files``: the paths written.

    Raises:
        FileNotFoundError: ``run_dir`` is missing or holds no finished run.

    Example:
        >>> report = write_report(Path("runs/quick"))  # doctest: +SKIP
        >>> report["aggregate"]["bacl"]["test"]["i2t_R@1"]["mean"]  # doctest: +SKIP
    """
    from hardneg.bench.plots import write_plots

    tree = load_bench(Path(run_dir))
    aggregate, raw = aggregate_runs(tree)
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
        "files": [str(p) for p in [*files, *plots]],
    }
    texts = (_markdown(tree, aggregate, plots), _csv(raw), json.dumps(result, indent=2))
    for path, text in zip(files, texts):
        atomic_write(path, lambda f, text=text: f.write(text.encode()))
    return result
