"""Configuration of BACL's boundary-aware miner (:class:`~hardneg.miners.BoundaryAwareMiner`).

Reference: "Aligning by Misaligning: Boundary-aware Curriculum Learning for Multimodal
Alignment" (BACL, NeurIPS 2025, arXiv:2511.08399), §3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hardneg.miners.curriculum import CURRICULUM_PRESETS

SELECTIONS = ("boundary", "schedule", "uniform")
"""How the miner scores candidates (see :attr:`BNSConfig.selection`)."""


@dataclass
class BNSConfig:
    """Configuration of :class:`BoundaryAwareMiner`.

    Attributes:
        k: negatives selected per anchor.
        hidden: hidden width of the 2-layer policy MLP (paper: 64).
        tau_start: Gumbel-Softmax temperature at the start of training.
        tau_end: temperature at the end; annealed geometrically,
            ``τ_g(η) = τ_start·(τ_end/τ_start)^{η/total}``.
        entropy_weight: weight w_H of the entropy bonus of the policy.
        curriculum: name of a preset in :data:`~hardneg.samplers.CURRICULUM_PRESETS`.
        midpoint: η₀ of the curriculum in epochs; None = the preset's fraction of training.
        lr: Adam learning rate of the policy's own optimiser.
        init_output_scale: scale of the policy's last-layer initial weights (bias starts at 0);
            small, so that at the start the curriculum term ``−α·BS/τ`` decides the selection.
        seed: seed of the sampler's Gumbel noise generator.
        logit_scale: ``1/τ`` multiplying BS in the selection logit when ``forward`` gets no
            ``logit_scale`` (default 1/0.07, CLIP's initial temperature). Pass the loss's live
            ``scale()`` to ``forward`` so the tilt matches the logits the loss sees. Measured
            (B=128, k=16, negative cosines ~N(0.1, 0.15), positive 0.6): in cosine units the
            curriculum moved the mean picked BS 3 % (start) / 6 % (end) of the way from the
            uniform mean to the easiest / hardest k against the Gumbel noise (std ≈ 1.28);
            with 1/0.07, 36 % / 55 % (the tests require ≥ 25 %).
        selection: ``"boundary"`` (BNS: curriculum + policy), ``"schedule"`` (the curriculum
            alone, policy off: what the policy adds over its schedule) or ``"uniform"`` (k
            uniformly random negatives per anchor: the paper's Theorem 4.2 control).
    """

    k: int = 16
    hidden: int = 64
    tau_start: float = 1.0
    tau_end: float = 0.1
    entropy_weight: float = 0.01
    curriculum: str = "default"
    midpoint: float | None = None
    lr: float = 1e-3
    init_output_scale: float = 1e-3
    seed: int = 0
    logit_scale: float = 1.0 / 0.07
    selection: str = "boundary"

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"BNSConfig.k must be a positive int, got {self.k!r}")
        if self.hidden < 1:
            raise ValueError(f"BNSConfig.hidden must be ≥ 1, got {self.hidden}")
        if not (self.tau_start > 0 and self.tau_end > 0):
            raise ValueError(
                f"BNSConfig.tau_start and tau_end must be > 0, got {self.tau_start}, {self.tau_end}"
            )
        if self.tau_end > self.tau_start:
            raise ValueError(
                f"BNSConfig.tau_end={self.tau_end} must be ≤ BNSConfig.tau_start={self.tau_start} "
                "(the Gumbel temperature anneals down); swap them"
            )
        if self.entropy_weight < 0:
            raise ValueError(f"BNSConfig.entropy_weight must be ≥ 0, got {self.entropy_weight}")
        if self.curriculum not in CURRICULUM_PRESETS:
            raise ValueError(
                f"BNSConfig.curriculum={self.curriculum!r} is not a preset; choose one of "
                f"{sorted(CURRICULUM_PRESETS)}"
            )
        if not self.lr > 0:
            raise ValueError(f"BNSConfig.lr must be > 0, got {self.lr}")
        if self.selection not in SELECTIONS:
            raise ValueError(
                f"BNSConfig.selection={self.selection!r}; choose one of {list(SELECTIONS)}"
            )
        if not (self.logit_scale > 0 and math.isfinite(self.logit_scale)):
            raise ValueError(
                f"BNSConfig.logit_scale must be a finite 1/τ > 0, got {self.logit_scale}"
            )
        if self.init_output_scale < 0:
            raise ValueError(
                f"BNSConfig.init_output_scale must be ≥ 0, got {self.init_output_scale}"
            )
