"""A bench directory as data: its finished runs, their configs, logs and metrics.

Reads the tree ``hardneg bench`` leaves (README, "Results")::

    RUN/bench.json                       preset, methods, seeds, steps, batch_size, reference,
                                         overrides (``--set``)
    RUN/<method>/seed<k>/config.json     the TrainConfig as a dict (<method>: an arm, e.g.
                                         grit or grit@fn5, see hardneg.bench.arms)
    RUN/<method>/seed<k>/train_log.csv   one row per logged step (empty cell = not logged)
    RUN/<method>/seed<k>/metrics.json    test / test_novel metrics, step time, peak memory, FN rate
    RUN/<method>/seed<k>/per_item.npz    per-query / per-probe outcomes (hardneg.eval.items)
    RUN/<method>/seed<k>/selected_boundary_scores.npy
                                         (BNS methods) (step, boundary score) of the picks

A run directory without ``metrics.json`` is unfinished (or failed): it is skipped and named
in the report. :mod:`hardneg.bench.aggregate` aggregates the runs per method over seeds.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.eval.items import read_items

__all__ = [
    "BenchRun",
    "BenchTree",
    "finite",
    "load_bench",
    "read_train_log",
]

EVAL_SPLITS = ("test", "test_novel")
TRAIN_SPLIT = "train"
"""Pseudo-split of the per-run numbers measured while training (cost, FN rate, ratios)."""
TRAIN_METRICS = (
    "step_time", "peak_mem_mib", "selected_fn_rate", "batch_fn_rate", "fn_rate", "mem_ratio",
)  # fmt: skip
_SEED_DIR = re.compile(r"seed(\d+)$")


@dataclass
class BenchRun:
    """One finished (method, seed) run of a bench.

    Attributes:
        method: the arm (the run's parent directory): the method name, or the method at a
            swept setting (``grit@fn5``, :mod:`hardneg.bench.arms`), whose ``metrics.json``
            names the method alone.
        seed: the run's seed (``metrics.json`` ``seed``, else the ``seed<k>`` directory name).
        path: the run directory.
        metrics: ``metrics.json`` as loaded.
        config: ``config.json`` ({} when absent).
        log: ``train_log.csv`` as columns of floats (NaN where a cell is empty; {} when absent).
        selected_boundary_scores: ``selected_boundary_scores.npy`` (n, 2) of (step, boundary
            score), or None.
        items: ``per_item.npz`` as ``{split: {item: array}}`` ({} when absent), read on use.
    """

    method: str
    seed: int
    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    log: dict[str, np.ndarray] = field(default_factory=dict)
    selected_boundary_scores: np.ndarray | None = None

    @cached_property
    def items(self) -> dict[str, dict[str, np.ndarray]]:
        """Per-item outcomes of the run's evaluation splits (``per_item.npz``)."""
        return read_items(self.path / "per_item.npz")

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
        """The method differences and ratios are relative to (``bench.json`` ``reference``)."""
        return str(self.info.get("reference") or "infonce")

    def runs_of(self, method: str) -> list[BenchRun]:
        """The finished runs of ``method``."""
        return [r for r in self.runs if r.method == method]


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, not a number, NaN or ±inf.

    Example:
        >>> finite(2), finite(float("nan")), finite(None), finite(True)
        (2.0, None, None, None)
    """
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
    bs_path = seed_dir / "selected_boundary_scores.npy"
    selected_boundary_scores = None
    if bs_path.is_file():
        selected_boundary_scores = np.load(bs_path)
        if selected_boundary_scores.ndim != 2 or selected_boundary_scores.shape[1] != 2:
            raise ValueError(
                f"{bs_path} has shape {selected_boundary_scores.shape}; "
                "expected (n, 2) columns (step, boundary score)"
            )
    return BenchRun(
        method=method,
        seed=int(seed),
        path=seed_dir,
        metrics=metrics,
        config=_read_json(config_path) if config_path.is_file() else {},
        log=read_train_log(seed_dir / "train_log.csv"),
        selected_boundary_scores=selected_boundary_scores,
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
