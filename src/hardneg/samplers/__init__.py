"""Batch samplers: they build each batch from the data (in-batch negative picks are the
miners' job, :mod:`hardneg.miners`).

- Batch construction (GRIT-VLP, FALCON and heuristic baselines): :class:`HardnessBatchSampler`
  (+ :class:`HardnessSamplerConfig`, :func:`shard`), the chains :func:`grit_chain` (GRIT-VLP)
  and :func:`chain_batches` (hardness quantile), :func:`quantile_pick`, and FALCON's learned
  :class:`FalconPolicy` (+ :class:`FalconConfig`).
"""

from hardneg.samplers.batch_config import MODES, HardnessSamplerConfig
from hardneg.samplers.batches import HardnessBatchSampler
from hardneg.samplers.chain import ChainResult, chain_batches, grit_chain
from hardneg.samplers.falcon import FalconConfig, FalconPolicy
from hardneg.samplers.quantile import quantile_pick
from hardneg.samplers.sharding import shard
from hardneg.samplers.store import EmbeddingStore

__all__ = [
    "MODES",
    "ChainResult",
    "EmbeddingStore",
    "FalconConfig",
    "FalconPolicy",
    "HardnessBatchSampler",
    "HardnessSamplerConfig",
    "chain_batches",
    "grit_chain",
    "quantile_pick",
    "shard",
]
