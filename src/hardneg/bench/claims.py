r"""The papers' headline claims, each checked against a bench with a confidence interval.

Every claim is a difference ``method − baseline`` of one metric (or, for "larger out of
distribution", the difference of the ``test_novel`` and ``test`` gains) that the paper says
is positive (``direction = +1``) or negative (``-1``, e.g. fewer false negatives). With the
measured difference turned into the claimed direction, ``e = direction · Δ`` and its 95 %
interval ``[e_lo, e_hi]`` (:mod:`hardneg.bench.comparisons`), the verdict is:

*Superiority* claims ("A > B"):

- **reproduced**: ``e_lo > 0`` — significant in the claimed direction;
- **not reproduced**: ``e_hi < 0`` — significant in the opposite direction — or, when the
  paper reports a size ``g`` for the effect, ``e_hi < FRACTION · g`` (``FRACTION = 0.25``): the
  whole interval lies below a quarter of the reported gain, so at most a small fraction of the
  claimed effect can be present;
- **inconclusive**: otherwise (the interval holds 0 and values of a meaningful size).

*Non-inferiority* claims ("A ≥ B", "robust to |M|"), with a margin ``m`` in the metric's units
(1 point of R@1 by default):

- **reproduced**: ``e_lo > -m`` — A is at worst ``m`` below B;
- **not reproduced**: ``e_hi < -m`` — A is significantly worse than B by more than ``m``;
- **inconclusive**: otherwise.

A claim whose methods did not both run is **not run**; one whose methods ran but have no
value for the metric (e.g. runs without ``per_item.npz``) is **not measured**.
Paper sizes (``claimed``) are the absolute gains the papers report on their own data (LAION,
COCO): DigitScenes is far smaller, so they are the yardstick of "meaningful", not a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from hardneg.bench.comparisons import compare
from hardneg.bench.statistics import Comparison, Resampler, interval
from hardneg.bench.tree import BenchTree

__all__ = ["CLAIMS", "FRACTION", "Claim", "ClaimResult", "check_claims", "verdict"]

FRACTION = 0.25
"""Share of a paper's reported gain below which a whole interval means "not reproduced"."""

BACL, EGA, FALCON = "BACL (arXiv:2511.08399)", "EGA (arXiv:2506.02020)", "FALCON (arXiv:2505.11192)"
NEGCLIP = "NegCLIP (arXiv:2210.01936)"
ALBEF, GRIT = "ALBEF (arXiv:2107.07651)", "GRIT-VLP (arXiv:2208.13628)"
MNRL = "MNRL hardness_mode (Lan et al. 2025)"


@dataclass(frozen=True)
class Claim:
    """One headline claim: ``direction · (method − baseline)`` of ``metric`` on ``split`` > 0.

    Attributes:
        paper: the paper (name and arXiv id).
        text: the claim in words.
        method, baseline: the methods compared (bench method names).
        metric: the metric (``split`` ``train`` for run-level scalars such as FN rates).
        split: ``"test"``, ``"test_novel"`` or ``"train"``.
        direction: +1 when the paper says the metric is higher for ``method``, −1 lower.
        claimed: the size of the effect the paper reports (metric units), or None.
        kind: ``"superiority"`` or ``"non_inferiority"`` (see the module docstring).
        margin: the non-inferiority margin.
        ood: compare the gain on ``test_novel`` minus the gain on ``test`` (``split`` unused).
        baseline_metric: the baseline's metric when it differs from ``metric`` (a method
            against itself: re-ranked vs ITC retrieval).
    """

    paper: str
    text: str
    method: str
    baseline: str
    metric: str = "i2t_R@1"
    split: str = "test"
    direction: int = 1
    claimed: float | None = None
    kind: Literal["superiority", "non_inferiority"] = "superiority"
    margin: float = 1.0
    ood: bool = False
    baseline_metric: str | None = None


CLAIMS = [
    Claim(BACL, "TR R@1 of the re-ranker over the frozen dual encoder", "bacl", "frozen",
          "i2t_R@1_rerank", baseline_metric="i2t_R@1", claimed=11.3),
    Claim(BACL, "IR R@1 of the re-ranker over the frozen dual encoder", "bacl", "frozen",
          "t2i_R@1_rerank", baseline_metric="t2i_R@1"),
    Claim(BACL, "BNS alone over the frozen dual encoder", "bacl_bns_only", "frozen",
          "i2t_R@1_rerank", baseline_metric="i2t_R@1", claimed=7.3),
    Claim(BACL, "CLA alone over the frozen dual encoder", "bacl_cla_only", "frozen",
          "i2t_R@1_rerank", baseline_metric="i2t_R@1", claimed=3.2),
    Claim(BACL, "BNS picks > uniform picks (Theorem 4.2)", "bacl_bns_only", "bacl_uniform",
          "i2t_R@1_rerank"),
    Claim(BACL, "CLA > none, on uniform picks", "bacl_cla_only", "bacl_uniform",
          "i2t_R@1_rerank"),
    Claim(BACL, "full BACL > BNS alone", "bacl", "bacl_bns_only", "i2t_R@1_rerank", claimed=4.0),
    Claim(BACL, "full BACL > CLA alone", "bacl", "bacl_cla_only", "i2t_R@1_rerank", claimed=8.1),
    Claim(BACL, "AEL gain over uniform picks without CLA", "bacl", "bacl_uniform", "ael",
          claimed=11.0),
    Claim(BACL, "dual-encoder variant (hardneg's): R@1 I→T gain over InfoNCE", "bacl_dual",
          "infonce", claimed=11.3),
    Claim(BACL, "dual-encoder variant (hardneg's): BNS picks > uniform picks", "bacl_dual",
          "bacl_dual_uniform"),
    Claim(BACL, "default curriculum > aggressive", "bacl", "bacl_aggressive", "i2t_R@1_rerank"),
    Claim(BACL, "aggressive curriculum > shallow", "bacl_aggressive", "bacl_shallow",
          "i2t_R@1_rerank"),
    Claim(EGA, "R@1 gain over InfoNCE", "ega", "infonce"),
    Claim(EGA, "gain larger out of distribution (novel − test)", "ega", "infonce", ood=True),
    Claim(ALBEF, "re-ranked TR R@1 > ITC TR R@1 (the fusion group's precondition)", "albef",
          "albef", "i2t_R@1_rerank", baseline_metric="i2t_R@1"),
    Claim(ALBEF, "re-ranked IR R@1 > ITC IR R@1 (the fusion group's precondition)", "albef",
          "albef", "t2i_R@1_rerank", baseline_metric="t2i_R@1"),
    Claim(FALCON, "TR R@1 > GRIT-VLP (re-ranked)", "falcon", "grit", "i2t_R@1_rerank",
          claimed=1.68),
    Claim(FALCON, "IR R@1 > GRIT-VLP (re-ranked)", "falcon", "grit", "t2i_R@1_rerank",
          claimed=1.57),
    Claim(FALCON, "fewer false negatives than GRIT", "falcon", "grit", "batch_fn_rate",
          "train", direction=-1),
    Claim(FALCON, "lower hardness q where false negatives cluster (end of training)", "falcon",
          "falcon", "q_dup_end", "train", direction=-1, baseline_metric="q_nodup_end"),
    Claim(GRIT, "TR R@1 > ALBEF (re-ranked)", "grit", "albef", "i2t_R@1_rerank", claimed=5.0),
    Claim(FALCON, "TR R@1 > ALBEF (re-ranked)", "falcon", "albef", "i2t_R@1_rerank",
          claimed=6.68),
    Claim(FALCON, "instance-level > batch-level (re-ranked)", "falcon", "falcon_batch",
          "i2t_R@1_rerank", claimed=2.94),
    Claim(FALCON, "learned q > fixed q = 0.5 (re-ranked)", "falcon", "falcon_fixed_q",
          "i2t_R@1_rerank"),
    Claim(FALCON, "robust to |M| (small search space)", "falcon_space2", "falcon",
          "i2t_R@1_rerank", kind="non_inferiority"),
    Claim(FALCON, "robust to |M| (large search space)", "falcon_space32", "falcon",
          "i2t_R@1_rerank", kind="non_inferiority"),
    Claim(NEGCLIP, "compositional gain: flip relation", "negclip", "infonce",
          "comp_flip_relation"),
    Claim(NEGCLIP, "compositional gain: swap colours", "negclip", "infonce", "comp_swap_colours"),
    Claim(NEGCLIP, "compositional gain: swap digits", "negclip", "infonce", "comp_swap_digits"),
    Claim(MNRL, "hardness weighting > InfoNCE (comparator)", "mnrl_hardness", "infonce"),
]  # fmt: skip
"""The claims of the BACL, EGA, FALCON and NegCLIP papers (and the MNRL comparator).
``claimed`` sizes: BACL R@1 +11.3 (LAION-400M, frozen CLIP → CLIP + BACL), BNS +7.3 and CLA
+3.2 alone over CLIP (so full − BNS = 4.0, full − CLA = 8.1), AEL ≈ +11 points; FALCON
instance- vs batch-level TR R@1 61.72 vs 58.78 (COCO); FALCON vs GRIT-VLP +1.68 TR / +1.57 IR
R@1 and vs ALBEF +6.68 TR R@1, GRIT-VLP vs ALBEF +5.0 TR R@1 (FALCON's Table 1, COCO
pre-training)."""


@dataclass
class ClaimResult:
    """A claim, its measured comparison (None = not run) and the verdict."""

    claim: Claim
    comparison: Comparison | None
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the claim's fields, ``comparison`` ({diff, lo, hi, …} or None), verdict."""
        c = self.claim
        return {
            "paper": c.paper, "claim": c.text, "method": c.method, "baseline": c.baseline,
            "metric": c.metric, "split": "test_novel − test" if c.ood else c.split,
            "direction": c.direction, "claimed": c.claimed, "kind": c.kind,
            "comparison": None if self.comparison is None else self.comparison.as_dict(),
            "verdict": self.verdict,
        }  # fmt: skip


def verdict(claim: Claim, comparison: Comparison | None) -> str:
    """``"reproduced"``, ``"not reproduced"``, ``"inconclusive"`` or ``"not run"`` (module
    docstring). A comparison without an interval (one seed of a run-level scalar) is
    inconclusive.

    Example:
        >>> c = Claim("P", "A > B", "a", "b", claimed=10.0)
        >>> verdict(c, Comparison(1.0, 0.5, 1.5, True, 500, 3))
        'reproduced'
        >>> verdict(c, Comparison(0.5, -0.5, 1.5, False, 500, 3))
        'not reproduced'
    """
    if comparison is None:
        return "not run"
    if comparison.lo is None or comparison.hi is None:
        return "inconclusive"
    ends = sorted((claim.direction * comparison.lo, claim.direction * comparison.hi))
    lo, hi = ends
    if claim.kind == "non_inferiority":
        if lo > -claim.margin:
            return "reproduced"
        return "not reproduced" if hi < -claim.margin else "inconclusive"
    if lo > 0.0:
        return "reproduced"
    if hi < 0.0 or (claim.claimed is not None and hi < FRACTION * abs(claim.claimed)):
        return "not reproduced"
    return "inconclusive"


def _measure(tree: BenchTree, raw: dict, claim: Claim, resampler: Resampler) -> Comparison | None:
    if not claim.ood:
        result = compare(
            tree, raw, claim.method, claim.baseline, claim.split, claim.metric, resampler,
            claim.baseline_metric,
        )  # fmt: skip
        return None if result is None else result[0]
    parts = [
        compare(tree, raw, claim.method, claim.baseline, split, claim.metric, resampler)
        for split in ("test_novel", "test")
    ]
    if any(p is None for p in parts):
        return None
    (novel, d_novel), (test, d_test) = parts  # independent resample streams per split
    diff = novel.diff - test.diff
    return interval(diff, d_novel - d_test, min(novel.n, test.n), min(novel.seeds, test.seeds))


def check_claims(
    tree: BenchTree, raw: dict, resampler: Resampler, claims: list[Claim] | None = None
) -> list[ClaimResult]:
    """Measure every claim of ``claims`` (default :data:`CLAIMS`) on the bench and judge it.

    Args:
        tree: the loaded bench.
        raw: per-seed values (:func:`~hardneg.bench.aggregate.aggregate_runs`).
        resampler: the bench's shared bootstrap resamples.
        claims: the claims to check.

    Returns:
        one :class:`ClaimResult` per claim, in order.
    """
    out = []
    for claim in CLAIMS if claims is None else claims:
        comparison = _measure(tree, raw, claim, resampler)
        ran = {claim.method, claim.baseline} <= set(tree.methods)
        judged = verdict(claim, comparison) if comparison is not None or not ran else "not measured"
        out.append(ClaimResult(claim, comparison, judged))
    return out
