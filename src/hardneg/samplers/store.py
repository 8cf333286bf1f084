"""Embedding store of the hardness batch sampler: the latest pooled embeddings of every item.

As GRIT-VLP (``jaeseokbyun/GRIT-VLP``, ``models/GRIT_utils.py``): the trainer hands over the
detached, normalised pooled image/text embeddings it already computed for each batch, so
grouping costs no extra forward pass (FALCON, arXiv:2505.11192, §3).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class EmbeddingStore:
    """CPU float32 table of the last seen image and text embedding of each dataset item.

    Args:
        num_items: dataset size N; rows are allocated at the first update (width from it).

    Example:
        >>> store = EmbeddingStore(4)
        >>> store.update(torch.tensor([0, 1, 2, 3]), torch.randn(4, 8), torch.randn(4, 8))
        >>> store.is_complete(), store.similarity(np.array([0, 2])).shape
        (True, torch.Size([2, 2]))
    """

    def __init__(self, num_items: int) -> None:
        if num_items < 1:
            raise ValueError(f"num_items must be ≥ 1, got {num_items}")
        self.num_items = num_items
        self.image: Tensor | None = None
        self.text: Tensor | None = None
        self.filled = torch.zeros(num_items, dtype=torch.bool)

    def update(self, indices: Tensor, image_emb: Tensor, text_emb: Tensor) -> None:
        """Store (detached, L2-normalised, CPU float32) embeddings of dataset items ``indices``.

        Args:
            indices: (n,) dataset indices of the batch (the global batch under DDP).
            image_emb: (n, d) pooled image embeddings.
            text_emb: (n, d) pooled text embeddings.
        """
        idx = torch.as_tensor(indices).detach().cpu()
        if idx.dim() != 1 or idx.is_floating_point():
            raise ValueError(
                f"indices must be a 1-D integer tensor, got {idx.dtype} {tuple(idx.shape)}"
            )
        if bool(((idx < 0) | (idx >= self.num_items)).any()):
            raise ValueError(f"indices must lie in [0, {self.num_items}) (dataset items)")
        n = idx.shape[0]
        for name, emb in (("image_emb", image_emb), ("text_emb", text_emb)):
            if emb.dim() != 2 or emb.shape[0] != n:
                raise ValueError(
                    f"{name} must be ({n}, d) like indices, got shape {tuple(emb.shape)}"
                )
            if not bool(torch.isfinite(emb).all()):
                raise ValueError(f"{name} contains NaN or inf; check the encoder output")
        if image_emb.shape[1] != text_emb.shape[1]:
            raise ValueError(
                f"image_emb has {image_emb.shape[1]} columns but text_emb has "
                f"{text_emb.shape[1]}; pass the projected embeddings of the same space"
            )
        dim = image_emb.shape[1]
        if self.image is None or self.text is None:
            self.image = torch.zeros(self.num_items, dim)
            self.text = torch.zeros(self.num_items, dim)
        elif self.image.shape[1] != dim:
            raise ValueError(
                f"embeddings have {dim} columns but the store holds {self.image.shape[1]}; "
                "always pass the same projected embeddings"
            )
        idx = idx.long()
        self.image[idx] = F.normalize(image_emb.detach().float(), dim=1).cpu()
        self.text[idx] = F.normalize(text_emb.detach().float(), dim=1).cpu()
        self.filled[idx] = True

    def is_complete(self) -> bool:
        """True once every item has an embedding."""
        return bool(self.filled.all())

    def image_text_similarity(self, items: np.ndarray) -> Tensor:
        """``U Vᵀ``: cosine of the images (rows) with the captions (columns) of ``items``."""
        if self.image is None or self.text is None:
            raise ValueError("the embedding store is empty; call update() during training first")
        idx = torch.as_tensor(np.asarray(items), dtype=torch.long)
        return self.image[idx] @ self.text[idx].T

    def similarity(self, items: np.ndarray) -> Tensor:
        """``S = U Vᵀ + V Uᵀ`` (image→text plus text→image cosine) restricted to ``items``."""
        i2t = self.image_text_similarity(items)
        return i2t + i2t.T

    def state_dict(self) -> dict:
        """Tensors of the store (for the sampler's checkpoint)."""
        return {"image": self.image, "text": self.text, "filled": self.filled.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        if state["filled"].shape != (self.num_items,):
            raise ValueError(
                f"embedding store state is for {state['filled'].shape[0]} items but this "
                f"sampler has {self.num_items}; resume with the same dataset"
            )
        self.image, self.text = state["image"], state["text"]
        self.filled = state["filled"].clone()
