"""Configuration of the batch sampler (:mod:`hardneg.samplers.batches`): its modes and checks.

References: GRIT-VLP (Byun et al. 2022) for mode ``grit``; FALCON (arXiv:2505.11192) §3 and
its baselines for the quantile modes (``fixed``, ``progressive_*``, ``batch_level``,
``falcon``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

#: Batch construction modes of :class:`~hardneg.samplers.batches.HardnessBatchSampler`.
BatchMode = Literal[
    "random",
    "grit",
    "fixed",
    "progressive_hardening",
    "progressive_softening",
    "batch_level",
    "falcon",
]
MODES: tuple[str, ...] = get_args(BatchMode)
"""The values of :data:`BatchMode`."""

#: Batches per search space when its size is not given: |M| = 8·B (FALCON's default).
SEARCH_SPACE_BATCHES = 8

PROGRESSIVE_DEFAULTS = {"progressive_hardening": (0.5, 1.0), "progressive_softening": (1.0, 0.5)}


@dataclass
class HardnessSamplerConfig:
    """Configuration of :class:`~hardneg.samplers.batches.HardnessBatchSampler`.

    Attributes:
        batch_size: global batch size B (all ranks together).
        search_space_size: |M|, items per search space; None = :data:`SEARCH_SPACE_BATCHES` · B.
        mode: one of :data:`MODES`:
            ``random`` plain shuffled batches; ``grit`` GRIT-VLP's alternating hardest chain
            (:func:`~hardneg.samplers.chain.grit_chain`); ``fixed`` q = ``q`` (q = 1: the
            hardest pick on the symmetric S, per batch); ``progressive_hardening`` /
            ``progressive_softening`` q moves linearly from ``q_start`` to ``q_end`` over
            ``total_epochs`` (defaults 0.5→1 and 1→0.5); ``falcon`` q per anchor from a
            :class:`FalconPolicy`; ``batch_level`` one policy q per batch (policy
            with ``instance_level=False``).
        q: the quantile of mode ``fixed``.
        q_start, q_end: endpoints of the progressive modes (None = mode default).
        total_epochs: run length used by the progressive modes.
        seed: seed of every random choice (epoch e uses ``default_rng([seed, e])``).

    A bad value raises a ``ValueError`` whose message starts with the field's name (the
    trainer's validation prefixes it with ``sampler.``, the config section of the same keys).
    """

    batch_size: int
    search_space_size: int | None = None
    mode: BatchMode = "random"
    q: float = 0.5
    q_start: float | None = None
    q_end: float | None = None
    total_epochs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be ≥ 2 (a contrastive batch), got {self.batch_size}")
        if self.search_space_size is None:
            self.search_space_size = SEARCH_SPACE_BATCHES * self.batch_size
        if self.search_space_size < self.batch_size:
            raise ValueError(
                f"search_space_size={self.search_space_size} is smaller than batch_size="
                f"{self.batch_size}; use at least one batch per search space"
            )
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is unknown; choose one of {MODES}")
        if self.mode in PROGRESSIVE_DEFAULTS:
            start, end = PROGRESSIVE_DEFAULTS[self.mode]
            self.q_start = start if self.q_start is None else self.q_start
            self.q_end = end if self.q_end is None else self.q_end
            rising = self.q_end >= self.q_start
            if rising != (self.mode == "progressive_hardening"):
                raise ValueError(
                    f"mode={self.mode!r} needs q_end {'≥' if not rising else '≤'} q_start, got "
                    f"q_start={self.q_start}, q_end={self.q_end}; swap them or change the mode"
                )
        for name in ("q", "q_start", "q_end"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"{name} must be in [0, 1] (0 = easiest, 1 = hardest), got {value}"
                )
        if self.total_epochs < 1:
            raise ValueError(f"total_epochs must be ≥ 1, got {self.total_epochs}")
