"""Offline cross-modal hard-negative mining (``hardneg mine``; see ``docs/data.md``).

- :mod:`hardneg.mining.core`: :func:`mine_hard_negatives` on precomputed embeddings;
- :mod:`hardneg.mining.embed`: a source's embeddings with a model, cached on disk;
- :mod:`hardneg.mining.output`: the mined negatives written next to the source.
"""

from hardneg.mining.core import (
    SAMPLINGS,
    MinedDirection,
    MinedNegatives,
    MiningOptions,
    mine_hard_negatives,
)

__all__ = ["SAMPLINGS", "MinedDirection", "MinedNegatives", "MiningOptions", "mine_hard_negatives"]
