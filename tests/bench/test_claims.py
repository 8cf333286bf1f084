"""Claims: verdict rules on hand-built comparisons, and claims measured on a tiny fake bench."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardneg.bench.claims import CLAIMS, FRACTION, Claim, check_claims, verdict
from hardneg.bench.comparisons import compare
from hardneg.bench.statistics import Comparison, Resampler
from hardneg.bench.tree import BenchRun, BenchTree
from hardneg.eval.items import pack_items

GAIN = Claim("P", "A > B", "a", "b", claimed=8.0)
LOWER = Claim("P", "fewer FN", "a", "b", "batch_fn_rate", "train", direction=-1)
AT_LEAST = Claim("P", "A ≥ B", "a", "b", kind="non_inferiority", margin=1.0)


def _c(lo: float, hi: float) -> Comparison:
    return Comparison((lo + hi) / 2, lo, hi, lo > 0 or hi < 0, 100, 3)


@pytest.mark.parametrize(
    ("claim", "lo", "hi", "expected"),
    [
        (GAIN, 0.1, 5.0, "reproduced"),  # significant in the claimed direction
        (GAIN, -4.0, -0.2, "not reproduced"),  # significant the other way
        (GAIN, -1.0, 1.9, "not reproduced"),  # whole CI below FRACTION · 8 = 2
        (GAIN, -1.0, 2.1, "inconclusive"),  # holds 0 and a quarter of the claimed gain
        (Claim("P", "A > B", "a", "b"), -1.0, 0.5, "inconclusive"),  # no size: only the sign
        (LOWER, -3.0, -1.0, "reproduced"),  # lower FN rate, significantly
        (LOWER, 0.5, 2.0, "not reproduced"),
        (AT_LEAST, -0.9, 3.0, "reproduced"),  # at worst 0.9 below: within the margin
        (AT_LEAST, -1.5, 0.5, "inconclusive"),
        (AT_LEAST, -3.0, -1.2, "not reproduced"),  # worse by more than the margin
    ],
)
def test_verdict_rules(claim, lo, hi, expected):
    assert FRACTION == 0.25
    assert verdict(claim, _c(lo, hi)) == expected


def test_verdict_without_measurement_or_interval():
    assert verdict(GAIN, None) == "not run"
    assert verdict(LOWER, Comparison(-2.0, None, None, False, 1, 1)) == "inconclusive"


def test_claims_cover_every_paper_and_name_known_methods():
    from hardneg.train.methods import METHODS

    papers = {c.paper.split(" ")[0] for c in CLAIMS}
    assert papers == {"ALBEF", "BACL", "EGA", "FALCON", "GRIT-VLP", "NegCLIP", "MNRL"}
    known = set(METHODS) | {"mnrl_hardness"}  # the comparator another module adds
    assert {m for c in CLAIMS for m in (c.method, c.baseline)} <= known


def _tree(tmp_path: Path, hits: dict[str, dict[str, list[np.ndarray]]]) -> BenchTree:
    """A bench whose runs hold only I→T hits: hits[method][split] = one array per seed."""
    runs = []
    for method, per_split in hits.items():
        for seed in range(len(next(iter(per_split.values())))):
            path = tmp_path / method / f"seed{seed}"
            path.mkdir(parents=True)
            items = {split: {"i2t_hit@1": h[seed]} for split, h in per_split.items()}
            np.savez(path / "per_item.npz", **pack_items(items))
            runs.append(BenchRun(method, seed, path, {}))
    return BenchTree(tmp_path, {}, runs, list(hits), [])


def test_out_of_distribution_claim_is_the_difference_of_split_gains(tmp_path):
    n = 400
    first = np.arange(n)
    base = {"test": [first < 100] * 2, "test_novel": [first < 80] * 2}
    ega = {"test": [first < 110] * 2, "test_novel": [first < 120] * 2}  # +2.5 vs +10 points
    tree = _tree(tmp_path, {"infonce": base, "ega": ega})
    resampler = Resampler(1000)
    by_text = {r.claim.text: r for r in check_claims(tree, {}, resampler)}
    ood = by_text["gain larger out of distribution (novel − test)"]
    assert ood.comparison.diff == pytest.approx(10.0 - 2.5)
    assert ood.verdict == "reproduced"
    # the two splits are resampled independently: the DiD variance is the sum of both
    d_test = compare(tree, {}, "ega", "infonce", "test", "i2t_R@1", resampler)[0]
    d_novel = compare(tree, {}, "ega", "infonce", "test_novel", "i2t_R@1", resampler)[0]
    widths = [c.hi - c.lo for c in (d_test, d_novel, ood.comparison)]
    assert widths[2] == pytest.approx(np.hypot(widths[0], widths[1]), rel=0.15)
    assert by_text["full BACL > BNS alone"].verdict == "not run"
    unmeasured = check_claims(tree, {}, resampler, [Claim("P", "AEL", "ega", "infonce", "ael")])
    assert unmeasured[0].verdict == "not measured"  # both ran, but they have no AEL items


def test_comparing_runs_on_different_test_items_is_refused(tmp_path):
    tree = _tree(tmp_path, {"infonce": {"test": [np.ones(50)]}, "ega": {"test": [np.ones(60)]}})
    with pytest.raises(ValueError, match="different numbers of test items"):
        compare(tree, {}, "ega", "infonce", "test", "i2t_R@1", Resampler(100))


def test_a_method_against_itself_compares_two_metrics_of_the_same_queries(tmp_path):
    """ALBEF's precondition: re-ranked R@1 vs its own ITC R@1, paired by query."""
    rng = np.random.default_rng(0)
    itc = [(rng.random(200) < 0.5).astype(float) for _ in range(2)]
    rerank = [np.maximum(h, (rng.random(200) < 0.4).astype(float)) for h in itc]
    runs = []
    for seed in range(2):
        path = tmp_path / "albef" / f"seed{seed}"
        path.mkdir(parents=True)
        items = {"test": {"i2t_hit@1": itc[seed], "i2t_hit@1_rerank": rerank[seed]}}
        np.savez(path / "per_item.npz", **pack_items(items))
        runs.append(BenchRun("albef", seed, path, {}))
    tree = BenchTree(tmp_path, {}, runs, ["albef"], [])
    result = compare(
        tree, {}, "albef", "albef", "test", "i2t_R@1_rerank", Resampler(500),
        baseline_metric="i2t_R@1",
    )  # fmt: skip
    expected = 100 * np.mean([r.mean() - h.mean() for r, h in zip(rerank, itc, strict=True)])
    assert result is not None and result[0].diff == pytest.approx(expected)
    assert result[0].lo > 0  # every query kept or gained its hit
    precondition = [c for c in CLAIMS if c.method == c.baseline == "albef"]
    by_text = {r.claim.text: r for r in check_claims(tree, {}, Resampler(500), precondition)}
    assert by_text[precondition[0].text].verdict == "reproduced"
