"""Paired bootstrap and seed intervals: cases whose answer is known analytically."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hardneg.bench.statistics import Resampler, paired_bootstrap, seed_interval


def test_constant_difference_gives_a_degenerate_interval_at_that_value():
    rng = np.random.default_rng(0)
    b = rng.random((3, 400))
    comparison, deltas = paired_bootstrap(b + 0.07, b, scale=100.0)
    assert comparison.diff == pytest.approx(7.0)
    assert comparison.lo == pytest.approx(7.0) and comparison.hi == pytest.approx(7.0)
    assert comparison.significant and comparison.n == 400 and comparison.seeds == 3
    assert deltas.shape == (2000,)


def test_independent_bernoulli_methods_interval_width_matches_analytic_se():
    """a ~ Bern(0.6), b ~ Bern(0.4) independent: SE(Δ) = √((p_a q_a + p_b q_b)/n)."""
    n = 2000
    rng = np.random.default_rng(1)
    a = (rng.random(n) < 0.6).astype(float)
    b = (rng.random(n) < 0.4).astype(float)
    comparison, _ = paired_bootstrap(a, b, Resampler(2000, seed=3), scale=1.0)
    se = math.sqrt((0.6 * 0.4 + 0.4 * 0.6) / n)
    assert comparison.hi - comparison.lo == pytest.approx(2 * 1.96 * se, rel=0.08)
    assert comparison.diff == pytest.approx(a.mean() - b.mean())
    assert comparison.lo < 0.2 < comparison.hi and comparison.significant


@pytest.mark.parametrize("seed", range(5))
def test_identical_methods_contain_zero_and_are_never_significant(seed):
    a = (np.random.default_rng(seed).random((2, 300)) < 0.5).astype(float)
    comparison, _ = paired_bootstrap(a, a.copy(), Resampler(1000, seed=seed))
    assert comparison.lo <= 0.0 <= comparison.hi
    assert not comparison.significant


def test_pairing_narrows_the_interval_of_correlated_methods():
    """B = A with 5 % of items flipped: the paired interval is far narrower than resampling
    the two methods independently (the unpaired bootstrap, written here)."""
    n, reps = 2000, 2000
    rng = np.random.default_rng(2)
    a = (rng.random(n) < 0.5).astype(float)
    b = np.where(rng.random(n) < 0.05, 1.0 - a, a)
    paired, _ = paired_bootstrap(a, b, Resampler(reps, seed=0), scale=1.0)
    ia, ib = rng.integers(0, n, (reps, n)), rng.integers(0, n, (reps, n))
    unpaired = a[ia].mean(1) - b[ib].mean(1)
    lo, hi = np.percentile(unpaired, [2.5, 97.5])
    assert (paired.hi - paired.lo) < 0.4 * (hi - lo)
    # paired SE: √(Var(a − b)/n) with a − b ∈ {−1, 0, 1}
    se = float(np.std(a - b) / math.sqrt(n))
    assert paired.hi - paired.lo == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_same_stream_reuses_resamples_and_streams_are_independent():
    resampler = Resampler(1000, seed=0)
    x = np.arange(50.0)
    assert np.array_equal(resampler.means(x, "test"), resampler.means(x, "test"))
    assert not np.array_equal(resampler.means(x, "test"), resampler.means(x, "test_novel"))
    assert resampler.counts(50, "test").sum(axis=1).tolist() == [50.0] * 1000


def test_bootstrap_rejects_unpaired_or_bad_input():
    with pytest.raises(ValueError, match="same seeds × items"):
        paired_bootstrap(np.ones((2, 5)), np.ones((2, 6)))
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([1.0, math.nan], [1.0, 0.0])
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap([1.0, 0.0], [1.0, 0.0], level=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        Resampler(0)


def test_seed_interval_is_the_paired_t_interval_over_common_seeds():
    a = {0: 10.0, 1: 12.0, 2: 11.0, 3: 99.0}  # seed 3: no partner
    b = {0: 9.0, 1: 10.0, 2: 10.0, 4: 1.0}
    c = seed_interval(a, b)
    d = np.array([1.0, 2.0, 1.0])
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert c.diff == pytest.approx(4 / 3) and c.n == 3
    assert (c.lo, c.hi) == pytest.approx((4 / 3 - half, 4 / 3 + half))
    assert not c.significant  # lo = 1.333 − 1.434 < 0
    # one common finite seed: a point estimate, no interval; none: no comparison
    single = seed_interval({0: 2.0, 1: None}, {0: 1.0, 1: 3.0})
    assert (single.diff, single.lo, single.hi, single.significant) == (1.0, None, None, False)
    assert seed_interval({0: math.nan}, {0: 1.0}) is None
