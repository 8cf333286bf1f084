"""Miners pick negatives inside a batch; the losses in :mod:`hardneg.losses` score them.

BACL's boundary-aware miner (BNS, arXiv:2511.08399 §3): :class:`BoundaryAwareMiner`
(+ :class:`BNSConfig`), its one result :class:`MinedNegatives` (both directions, each a
:class:`Picks`), its curriculum :class:`LogisticCurriculum` / :data:`CURRICULUM_PRESETS`, the
Gumbel top-k :func:`gumbel_topk`, the boundary score :func:`boundary_scores`, CLA's
:func:`hardest_negative`, and :class:`MinedLoss`, a contrastive loss scored on the mined
negatives (the piece every framework integration uses).

Example:
    >>> import torch
    >>> from hardneg.losses import InfoNCELoss
    >>> from hardneg.miners import BNSConfig, BoundaryAwareMiner, MinedLoss
    >>> criterion = MinedLoss(InfoNCELoss(), BoundaryAwareMiner(BNSConfig(k=3)))
    >>> criterion.miner.set_progress(0.0, 5.0)
    >>> criterion(torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)).backward()
"""

from hardneg.miners.bns import BoundaryAwareMiner
from hardneg.miners.config import BNSConfig
from hardneg.miners.curriculum import CURRICULUM_PRESETS, CurriculumPreset, LogisticCurriculum
from hardneg.miners.gumbel import gumbel_topk
from hardneg.miners.loss import MinedLoss
from hardneg.miners.result import MinedNegatives, Picks, boundary_scores, hardest_negative

__all__ = [
    "CURRICULUM_PRESETS",
    "BNSConfig",
    "BoundaryAwareMiner",
    "CurriculumPreset",
    "LogisticCurriculum",
    "MinedLoss",
    "MinedNegatives",
    "Picks",
    "boundary_scores",
    "gumbel_topk",
    "hardest_negative",
]
