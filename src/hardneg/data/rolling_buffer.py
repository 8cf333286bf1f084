"""The last N streamed items (ids, keys, captions, embeddings): a stream's hardness search space.

GRIT (Byun et al. 2022, "GRIT-VLP: Grouped Mini-batch Sampling for Efficient Vision-Language
Pre-training") and FALCON (arXiv:2505.11192, §3) compose batches from a random-access dataset:
similar items are searched over the embedding store of every item. A webdataset stream
(:mod:`hardneg.data.wds_source`) reads each item once per epoch in shard order and cannot fetch
an arbitrary item, so on a stream their search spaces are built from a :class:`RollingBuffer`
of the most recent items instead: the similarity of the buffered embeddings ranks the
candidates, and the buffered captions (re-encoded, or their cached embeddings) serve as hard
negatives. Images are not buffered (memory); image-side hardness uses the cached embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hardneg.samplers.store import EmbeddingStore

__all__ = ["BufferView", "RollingBuffer"]


@dataclass(frozen=True)
class BufferView:
    """The buffered items, oldest first.

    Attributes:
        ids: (n,) int64 stream positions (the ``i``-th item ever added has id ``i``).
        keys: sample keys (e.g. the webdataset ``key``).
        captions: the items' captions.
        image, text: (n, d) L2-normalised CPU float32 embeddings.
    """

    ids: Tensor
    keys: list[str]
    captions: list[str]
    image: Tensor
    text: Tensor


class RollingBuffer:
    """Ring buffer of the last ``capacity`` items' ids, keys, captions and embeddings.

    Embeddings are stored like :class:`~hardneg.samplers.store.EmbeddingStore` (detached,
    L2-normalised, CPU float32; the same checks), one row per ring slot.

    Args:
        capacity: N, the number of most recent items kept (≥ 1).

    Example:
        >>> buf = RollingBuffer(3)
        >>> ids = buf.add(["a", "b"], ["a cat", "a dog"], torch.randn(2, 4), torch.randn(2, 4))
        >>> ids = buf.add(["c", "d"], ["a cow", "a hen"], torch.randn(2, 4), torch.randn(2, 4))
        >>> view = buf.view()
        >>> view.ids.tolist(), view.captions
        ([1, 2, 3], ['a dog', 'a cow', 'a hen'])
    """

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int ≥ 1, got {capacity!r}")
        self.capacity = capacity
        self.store = EmbeddingStore(capacity)
        self.slot_ids = torch.full((capacity,), -1, dtype=torch.long)
        self.keys: list[str] = [""] * capacity
        self.captions: list[str] = [""] * capacity
        self.added = 0

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    def add(
        self, keys: Sequence[str], captions: Sequence[str], image_emb: Tensor, text_emb: Tensor
    ) -> Tensor:
        """Append a batch of items (evicting the oldest); returns their (n,) stream ids.

        Args:
            keys, captions: n strings each.
            image_emb, text_emb: (n, d) embeddings of the items (e.g. this step's, detached).
        """
        n = len(keys)
        if len(captions) != n or n == 0:
            raise ValueError(
                f"keys and captions must be two non-empty lists of equal length, got {n} keys "
                f"and {len(captions)} captions"
            )
        for name, emb in (("image_emb", image_emb), ("text_emb", text_emb)):
            if not isinstance(emb, Tensor) or emb.dim() != 2 or emb.shape[0] != n:
                shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
                raise ValueError(f"{name} must be ({n}, d), one row per key, got {shape}")
        ids = torch.arange(self.added, self.added + n)
        keep = slice(max(0, n - self.capacity), n)  # more than capacity: only the newest fit
        slots = ids[keep] % self.capacity
        self.store.update(slots, image_emb[keep], text_emb[keep])
        self.slot_ids[slots] = ids[keep]
        for slot, key, caption in zip(slots.tolist(), keys[keep], captions[keep]):
            self.keys[slot], self.captions[slot] = str(key), str(caption)
        self.added += n
        return ids

    def view(self) -> BufferView:
        """The buffered items, oldest first (copies: later adds do not change them)."""
        if self.store.image is None or self.store.text is None:
            raise ValueError("the rolling buffer is empty; add() items first")
        order = torch.arange(self.added - len(self), self.added) % self.capacity
        return BufferView(
            ids=self.slot_ids[order].clone(),
            keys=[self.keys[i] for i in order.tolist()],
            captions=[self.captions[i] for i in order.tolist()],
            image=self.store.image[order].clone(),
            text=self.store.text[order].clone(),
        )

    def state_dict(self) -> dict:
        """Everything needed to resume the stream's buffer."""
        return {
            "capacity": self.capacity,
            "added": self.added,
            "slot_ids": self.slot_ids.clone(),
            "keys": list(self.keys),
            "captions": list(self.captions),
            "store": self.store.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (of a buffer with the same capacity)."""
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"buffer state has capacity {state['capacity']} but this buffer {self.capacity}; "
                "resume with the same capacity"
            )
        self.added = int(state["added"])
        self.slot_ids = state["slot_ids"].clone()
        self.keys, self.captions = list(state["keys"]), list(state["captions"])
        self.store.load_state_dict(state["store"])
