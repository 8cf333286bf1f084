"""Negative selectors and batch samplers: they *pick*, the losses in :mod:`hardneg.losses` score.

- BACL boundary-aware negative sampler: :class:`BoundaryAwareSampler` (+ :class:`BNSConfig`,
  :class:`Selection`, :func:`boundary_scores`, :func:`hardest_negative`), its curriculum
  :class:`LogisticCurriculum` / :data:`CURRICULUM_PRESETS` and :func:`gumbel_topk`.
- Batch construction (GRIT-VLP, FALCON and heuristic baselines): :class:`HardnessBatchSampler`
  (+ :class:`HardnessSamplerConfig`, :func:`shard`), the chains :func:`grit_chain` (GRIT-VLP)
  and :func:`chain_batches` (hardness quantile), :func:`quantile_pick`, and FALCON's learned
  :class:`FalconScheduler` (+ :class:`FalconConfig`).
"""

from hardneg.samplers.batch_config import MODES, HardnessSamplerConfig
from hardneg.samplers.batches import HardnessBatchSampler
from hardneg.samplers.bns import BNSConfig, BoundaryAwareSampler
from hardneg.samplers.chain import ChainResult, chain_batches, grit_chain
from hardneg.samplers.curriculum import CURRICULUM_PRESETS, CurriculumPreset, LogisticCurriculum
from hardneg.samplers.falcon import FalconConfig, FalconScheduler
from hardneg.samplers.gumbel import gumbel_topk
from hardneg.samplers.quantile import quantile_pick
from hardneg.samplers.selection import Selection, boundary_scores, hardest_negative
from hardneg.samplers.sharding import shard
from hardneg.samplers.store import EmbeddingStore

__all__ = [
    "CURRICULUM_PRESETS",
    "MODES",
    "BNSConfig",
    "BoundaryAwareSampler",
    "ChainResult",
    "CurriculumPreset",
    "EmbeddingStore",
    "FalconConfig",
    "FalconScheduler",
    "HardnessBatchSampler",
    "HardnessSamplerConfig",
    "LogisticCurriculum",
    "Selection",
    "boundary_scores",
    "chain_batches",
    "grit_chain",
    "gumbel_topk",
    "hardest_negative",
    "quantile_pick",
    "shard",
]
