"""Masked variants of the train captions for MLM through a frozen text tower (ALBEF's fusion).

When the cross-modal transformer reads the text head's states (``crossmodal_input: heads``),
an MLM caption must enter the frozen MiniLM with its chosen words already replaced by [MASK]
(a contextual state of a neighbour would otherwise carry the masked word). Running MiniLM on
every step's masked captions costs ≈ 20 GFLOP per batch of 64 on CPU, so each train caption
gets ``V`` masked variants (targets drawn once, BERT's rule: each maskable token with
probability ``mask_prob``, at least one) encoded once and cached with the text bank; a step
draws one variant per caption.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from hardneg.data.digitscenes.textbank import TextBank, encode_masked
from hardneg.models.outputs import TextOutput
from hardneg.models.text import TextTower

__all__ = ["MaskedVariants"]


@dataclass
class MaskedVariants:
    """``V`` masked variants of some text-bank rows.

    Attributes:
        position: ``(len(bank),)`` the variant block of each bank row (−1: none).
        chosen: ``(N, V, L)`` bool MLM targets of each variant.
        bank: the ``N·V`` masked captions' states, variant ``v`` of block ``n`` at row
            ``n·V + v``.
    """

    position: Tensor
    chosen: Tensor
    bank: TextBank

    @classmethod
    def build(
        cls,
        bank: TextBank,
        rows: Tensor,
        variants: int,
        choose: Callable[[TextOutput, torch.Generator], Tensor],
        tower: TextTower,
        seed: int,
        cache_dir: str | Path | None = None,
        progress: bool = True,
    ) -> MaskedVariants:
        """Variants of the distinct bank ``rows``; ``choose(text, generator)`` draws one
        ``(N, L)`` target mask (``CrossModalTransformer.choose_mask``), seeded by ``seed``."""
        if variants < 1:
            raise ValueError(f"variants must be ≥ 1, got {variants}")
        rows = torch.unique(rows[rows >= 0])
        gen = torch.Generator().manual_seed(seed)
        text = bank.take(rows)
        length = bank.mask.shape[1]
        chosen = torch.zeros(len(rows), variants, length, dtype=torch.bool)
        for v in range(variants):
            chosen[:, v, : text.mask.shape[1]] = choose(text, gen)
        flat_rows = rows.repeat_interleave(variants)
        masked = encode_masked(
            tower, bank, flat_rows, chosen.flatten(0, 1), cache_dir, progress=progress
        )
        position = torch.full((len(bank.texts),), -1, dtype=torch.long)
        position[rows] = torch.arange(len(rows))
        return cls(position, chosen, masked)

    @property
    def variants(self) -> int:
        """``V``, the variants per caption."""
        return self.chosen.shape[1]

    def draw(self, rows: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor] | None:
        """One uniformly random variant of each bank row of ``rows`` ``(B,)``: its targets
        ``(B, L)`` and its row in :attr:`bank`; None if a row has no variants."""
        block = self.position[rows]
        if bool((block < 0).any()):
            return None
        v = torch.randint(0, self.variants, (len(rows),), generator=generator)
        return self.chosen[block, v], block * self.variants + v
