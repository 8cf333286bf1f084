r"""Confidence intervals of the difference between two methods of a bench.

**Test-set metrics** (R@K, mAP, compositional accuracy, AEL) are means over test items —
queries or probes — so their uncertainty is the paired bootstrap over those items (Efron &
Tibshirani 1993, "An Introduction to the Bootstrap", §13 percentile interval; Koehn 2004,
"Statistical Significance Tests for Machine Translation Evaluation", paired bootstrap). With
``a[s, i]`` / ``b[s, i]`` the outcome of item ``i`` under method A / B trained with seed ``s``
(the same items and seeds for both), the difference is

.. math::
    \Delta = \frac{1}{S\,n}\sum_{s=1}^{S}\sum_{i=1}^{n} (a_{si} - b_{si})
           = \frac1n \sum_i \bar d_i, \qquad \bar d_i = \frac1S \sum_s (a_{si} - b_{si}),

and each of ``R`` resamples draws ``n`` item indices with replacement, the *same* indices for
both methods and for every seed, and recomputes ``Δ*``. The 95 % interval is the 2.5 / 97.5 %
percentiles of the ``Δ*``; the difference is *significant* when the interval excludes 0. The
interval reflects the sampling of test items given the trained models; seed-to-seed spread is
reported separately (the ± std of the tables).

**Run-level scalars** (the FN rate of a run's batches) have one value per seed, so the interval
is the paired t-interval over every seed both methods ran, ``mean(d_s) ± t_{0.975, S-1} ·
sd(d_s)/√S`` (same seed = same initialisation and data order); with fewer than two common
seeds there is no interval and nothing is significant.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from scipy import stats

__all__ = ["Comparison", "Resampler", "interval", "paired_bootstrap", "seed_interval"]

LEVEL = 0.95
N_RESAMPLES = 2000


class Comparison(NamedTuple):
    """The difference method − baseline of one metric with its confidence interval.

    Attributes:
        diff: the point estimate Δ (in the metric's units, e.g. percentage points).
        lo: lower end of the interval (None without one).
        hi: upper end of the interval (None without one).
        significant: the interval excludes 0.
        n: test items (bootstrap) or common seeds (seed interval) the estimate uses.
        seeds: seeds the estimate averages over.
    """

    diff: float
    lo: float | None
    hi: float | None
    significant: bool
    n: int
    seeds: int

    def as_dict(self) -> dict[str, float | int | bool | None]:
        """``{"diff", "lo", "hi", "significant", "n", "seeds"}`` (JSON-ready)."""
        return self._asdict()


def _significant(lo: float | None, hi: float | None) -> bool:
    return lo is not None and hi is not None and (lo > 0.0 or hi < 0.0)


class Resampler:
    """Bootstrap resamples of ``n`` items, drawn once per (stream, n) and reused.

    Every comparison of the same stream (a test split) and item count uses the same resampled
    indices, so methods, seeds and method pairs are all compared on identical resamples;
    different streams (``test`` vs ``test_novel``) draw independently.

    Args:
        n_resamples: resamples ``R`` (≥ 1000 for a stable 95 % percentile interval).
        seed: base seed of the generator.
    """

    def __init__(self, n_resamples: int = N_RESAMPLES, seed: int = 0) -> None:
        if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
            raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
        self.n_resamples = n_resamples
        self.seed = seed
        self._counts: dict[tuple[str, int], np.ndarray] = {}

    def counts(self, n: int, stream: str = "") -> np.ndarray:
        """(R, n) float32: how often each item is drawn in each resample (rows sum to n).

        Drawn in blocks of resamples, so the temporaries stay a fraction of the result; float32
        counts are exact (integers ≤ n < 2^24) and halve the cache.
        """
        key = (stream, n)
        if key not in self._counts:
            rng = np.random.default_rng([self.seed, zlib.crc32(stream.encode()), n])
            counts = np.empty((self.n_resamples, n), dtype=np.float32)
            block = max(1, 2**20 // n)
            for start in range(0, self.n_resamples, block):
                rows = min(block, self.n_resamples - start)
                draws = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
                counts[start : start + rows] = np.bincount(
                    draws.ravel(), minlength=rows * n
                ).reshape(rows, n)
            self._counts[key] = counts
        return self._counts[key]

    def means(self, values: np.ndarray, stream: str = "") -> np.ndarray:
        """(R,) resampled means of the (n,) ``values`` (accumulated in float64)."""
        values = np.asarray(values, dtype=np.float64)
        centre = values.mean()  # centred, float32 rounding stays far below the CI resolution
        spread = self.counts(len(values), stream) @ (values - centre).astype(np.float32)
        return centre + spread.astype(np.float64) / len(values)


def _as_matrix(name: str, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    arr = arr[None, :] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[0] == 0:
        raise ValueError(
            f"{name} must be (items,) or (seeds, items) with ≥ 1 item, got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN/inf outcomes; drop those items before comparing")
    return arr


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    resampler: Resampler | None = None,
    stream: str = "",
    scale: float = 100.0,
    level: float = LEVEL,
) -> tuple[Comparison, np.ndarray]:
    r"""Paired bootstrap of ``scale · (mean(a) − mean(b))`` over items (module docstring).

    Args:
        a: (n,) or (S, n) per-item outcomes of method A (row = seed).
        b: the same shape for method B, on the same items and seeds.
        resampler: the shared resamples (default: a fresh ``Resampler()``).
        stream: the resample stream (the test split's name).
        scale: unit of the result (100 for metrics in percent).
        level: coverage of the interval, in (0, 1).

    Returns:
        ``(comparison, deltas)``: the :class:`Comparison` and the (R,) resampled ``Δ*``
        (to combine with other bootstraps, e.g. a difference between splits).

    Example:
        >>> c, _ = paired_bootstrap([1, 1, 0, 1], [0, 1, 0, 0])
        >>> c.diff, c.n
        (50.0, 4)
    """
    a, b = _as_matrix("a", a), _as_matrix("b", b)
    if a.shape != b.shape:
        raise ValueError(
            f"a {a.shape} and b {b.shape} must hold the same seeds × items (paired outcomes)"
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    d = scale * (a - b).mean(axis=0)
    deltas = (resampler or Resampler()).means(d, stream)
    return interval(float(d.mean()), deltas, len(d), a.shape[0], level), deltas


def interval(
    diff: float, deltas: np.ndarray, n: int, seeds: int, level: float = LEVEL
) -> Comparison:
    """The percentile interval of resampled differences ``deltas`` around ``diff``."""
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = (float(v) for v in np.percentile(deltas, [tail, 100.0 - tail]))
    return Comparison(diff, lo, hi, _significant(lo, hi), n, seeds)


def seed_interval(
    a: Mapping[int, float | None], b: Mapping[int, float | None], level: float = LEVEL
) -> Comparison | None:
    r"""Paired t-interval over seeds of a run-level scalar (module docstring).

    Args:
        a: ``{seed: value}`` of method A (None / NaN = missing).
        b: ``{seed: value}`` of method B.
        level: coverage of the interval, in (0, 1).

    Returns:
        the :class:`Comparison` over every seed where both have a value (``lo``/``hi`` None with
        one common seed), or None when there is none.

    Example:
        >>> c = seed_interval({0: 3.0, 1: 4.0, 2: 5.0}, {0: 1.0, 1: 1.0, 2: 1.0})
        >>> c.diff, round(c.lo, 2), round(c.hi, 2), c.significant
        (3.0, 0.52, 5.48, True)
    """
    common = sorted(
        s for s in set(a) & set(b) if _finite(a[s]) is not None and _finite(b[s]) is not None
    )
    if not common:
        return None
    d = np.array([float(a[s]) - float(b[s]) for s in common])
    diff = float(d.mean())
    if len(d) < 2:
        return Comparison(diff, None, None, False, len(d), len(d))
    half = float(stats.t.ppf(0.5 + level / 2.0, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    lo, hi = diff - half, diff + half
    return Comparison(diff, lo, hi, _significant(lo, hi), len(d), len(d))


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if np.isfinite(value) else None
