r"""Logistic easy-to-hard curriculum α(η) of BACL's boundary-aware negative sampler.

Reference: "Aligning by Misaligning: Boundary-aware Curriculum Learning for Multimodal
Alignment" (BACL, NeurIPS 2025, arXiv:2511.08399), §3 "Difficulty scheduling".

.. math::
    \alpha(\eta) = \alpha_{late} + (\alpha_{early} - \alpha_{late})\,
    \sigma\big(-\kappa\,(\eta - \eta_0)\big)

η is the training progress in (fractional) epochs and η₀ the midpoint of the transition. The
selection logit is ``ℓ = −α(η)·(BS/τ − g)`` (:class:`~hardneg.miners.BoundaryAwareMiner`):
α > 0 suppresses near-boundary (hard) negatives, α < 0 favours them, α = 0 picks uniformly.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class CurriculumPreset(NamedTuple):
    """The four numbers of a logistic curriculum.

    Attributes:
        alpha_early: α at the start of training (> 0 suppresses hard negatives).
        alpha_late: α at the end of training (< 0 favours hard negatives).
        kappa: steepness κ of the transition, per epoch.
        midpoint_fraction: η₀ as a fraction of the total number of epochs.
    """

    alpha_early: float
    alpha_late: float
    kappa: float
    midpoint_fraction: float


CURRICULUM_PRESETS: dict[str, CurriculumPreset] = {
    # The paper's default triple (α_early, α_late, κ) = (0.3, −0.5, 1.5), midpoint at half.
    "default": CurriculumPreset(0.3, -0.5, 1.5, 0.5),
    # Steeper (2×κ), earlier (η₀ at 35% of training) and more negative late α (2×).
    "aggressive": CurriculumPreset(0.3, -1.0, 3.0, 0.35),
    # Flatter (κ/2) and a late α closer to 0 (hard negatives only mildly favoured).
    "shallow": CurriculumPreset(0.3, -0.2, 0.75, 0.5),
}
"""Named curricula of the BACL ablation (default > aggressive > shallow in the paper's Table).

The paper only names the default triple; "aggressive" and "shallow" follow its description
(steeper/earlier and more negative α_late; flatter with α_late closer to 0).
"""


class LogisticCurriculum:
    r"""α(η) = α_late + (α_early − α_late)·σ(−κ(η − η₀)) (BACL §3, arXiv:2511.08399).

    Args:
        alpha_early: α when η ≪ η₀ (default 0.3).
        alpha_late: α when η ≫ η₀ (default −0.5).
        kappa: steepness κ > 0 per epoch (default 1.5).
        midpoint: η₀ in epochs; None (default) uses ``midpoint_fraction · total_epochs``.
        midpoint_fraction: η₀ as a fraction of the total epochs when ``midpoint`` is None
            (default 0.5, "midpoint of training").

    Example:
        >>> curriculum = LogisticCurriculum()
        >>> round(curriculum(5.0, total_epochs=10.0), 3)  # at the midpoint: the mean of both ends
        -0.1
        >>> LogisticCurriculum.from_preset("aggressive").alpha_late
        -1.0
    """

    def __init__(
        self,
        alpha_early: float = 0.3,
        alpha_late: float = -0.5,
        kappa: float = 1.5,
        midpoint: float | None = None,
        midpoint_fraction: float = 0.5,
    ) -> None:
        if not kappa > 0:
            raise ValueError(f"kappa must be > 0 (steepness of the curriculum), got {kappa}")
        if not 0.0 <= midpoint_fraction <= 1.0:
            raise ValueError(f"midpoint_fraction must be in [0, 1], got {midpoint_fraction}")
        if midpoint is not None and not math.isfinite(midpoint):
            raise ValueError(f"midpoint must be a finite number of epochs or None, got {midpoint}")
        self.alpha_early = float(alpha_early)
        self.alpha_late = float(alpha_late)
        self.kappa = float(kappa)
        self.midpoint = midpoint
        self.midpoint_fraction = float(midpoint_fraction)

    @classmethod
    def from_preset(cls, name: str, midpoint: float | None = None) -> LogisticCurriculum:
        """Build the curriculum named ``name`` in :data:`CURRICULUM_PRESETS`."""
        if name not in CURRICULUM_PRESETS:
            raise ValueError(
                f"unknown curriculum preset {name!r}; choose one of {sorted(CURRICULUM_PRESETS)}"
            )
        preset = CURRICULUM_PRESETS[name]
        return cls(
            preset.alpha_early, preset.alpha_late, preset.kappa, midpoint, preset.midpoint_fraction
        )

    def __call__(self, progress: float, total_epochs: float) -> float:
        """α at ``progress`` epochs (fractional) of a run of ``total_epochs`` epochs."""
        if not total_epochs > 0:
            raise ValueError(f"total_epochs must be > 0, got {total_epochs}")
        if not math.isfinite(progress):
            raise ValueError(f"progress must be a finite number of epochs, got {progress}")
        eta0 = self.midpoint if self.midpoint is not None else self.midpoint_fraction * total_epochs
        x = self.kappa * (progress - eta0)
        # σ(−x) written to avoid overflow of exp for large |x|
        gate = 1.0 / (1.0 + math.exp(x)) if x < 0 else math.exp(-x) / (1.0 + math.exp(-x))
        return self.alpha_late + (self.alpha_early - self.alpha_late) * gate

    def __repr__(self) -> str:
        return (
            f"LogisticCurriculum(alpha_early={self.alpha_early}, alpha_late={self.alpha_late}, "
            f"kappa={self.kappa}, midpoint={self.midpoint}, "
            f"midpoint_fraction={self.midpoint_fraction})"
        )
