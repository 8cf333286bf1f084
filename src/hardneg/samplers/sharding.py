"""DDP batch sharding: the slice of a global batch that one rank loads (:func:`shard`)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["shard"]


def shard(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The contiguous slice of a global batch that rank ``rank`` loads (DDP).

    Example:
        >>> shard([10, 11, 12, 13, 14, 15], rank=1, world_size=3)
        [12, 13]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 ≤ rank < world_size, got rank={rank}, world_size={world_size}")
    if len(batch) % world_size != 0:
        raise ValueError(
            f"global batch of {len(batch)} items does not split over {world_size} ranks; make "
            "batch_size a multiple of the world size"
        )
    per = len(batch) // world_size
    return list(batch[rank * per : (rank + 1) * per])
