"""Per-step draws from a DigitScenes split: one caption per scene (full or partial), hard
negatives paired with the caption they rewrite, and captions true of no scene of a batch.

Every draw takes its random numbers from the caller's ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hardneg.data.digitscenes.captions import PERTURBATIONS
from hardneg.data.digitscenes.tensors import PARTIAL_MEANING_OFFSET, SplitTensors

__all__ = [
    "draw_captions",
    "draw_hard_negatives",
    "draw_valid",
    "outside_captions",
]


def draw_captions(
    split: SplitTensors, index: Tensor, partial_probability: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One caption per scene of ``index``: text-bank rows (n,) and caption meanings (n,).

    A uniformly random full caption; with probability ``partial_probability`` instead a partial
    caption of one of the scene's objects (uniformly). With probability 0 no extra random
    numbers are drawn, so the draw is exactly the full-caption-only one.
    """
    slots = torch.cat([split.caption_rows, split.partial_rows], dim=1)[index]
    meanings = split.caption_meanings()[index]
    n_caps = split.caption_rows.shape[1]
    col = torch.randint(0, n_caps, (len(index),), generator=generator)
    if partial_probability > 0:
        u = torch.rand(len(index), 2, generator=generator)
        n_obj = (slots[:, n_caps:] >= 0).sum(dim=1)
        obj = torch.minimum((u[:, 1] * n_obj).long(), (n_obj - 1).clamp_min(0))
        col = torch.where((u[:, 0] < partial_probability) & (n_obj > 0), n_caps + obj, col)
    rows = slots.gather(1, col[:, None]).squeeze(1)
    return rows, meanings.gather(1, col[:, None]).squeeze(1)


def draw_valid(rows: Tensor, generator: torch.Generator) -> Tensor:
    """One uniformly random valid entry (≥ 0) of each row of ``rows`` (n, K); −1 for a row with
    none (e.g. one hard-negative caption per scene)."""
    return rows.gather(1, _column(torch.rand(rows.shape, generator=generator), rows >= 0))[:, 0]


def _column(draw: Tensor, usable: Tensor) -> Tensor:
    """(n, 1) column of the largest ``draw`` among the ``usable`` entries of each row."""
    return draw.masked_fill(~usable, -1.0).argmax(dim=1, keepdim=True)


def draw_hard_negatives(
    split: SplitTensors,
    index: Tensor,
    rows: Tensor,
    meanings: Tensor,
    kinds: Sequence[str],
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """One hard-negative caption per scene of ``index`` and the positives it is paired with.

    The negative is drawn uniformly among the scene's hard negatives of ``kinds``; when the
    scene's drawn caption (``rows``, ``meanings`` from :func:`draw_captions`) is a full one,
    the positive becomes the caption the negative rewrites, so that the pair differs only in
    the rewrite — NegCLIP's negatives are rewrites of the caption itself (Yuksekgonul et al.
    2023, §5). A partial caption keeps its row (its scene's negative then rewrites one of the
    scene's full captions).

    Returns:
        ``(hard_rows, rows)``: text-bank rows of the negatives (−1: the scene has none of
        ``kinds``) and of the positives. The random numbers drawn depend on neither ``kinds``
        nor the data.
    """
    hard = split.hard_negative_rows[index]
    draw = torch.rand(hard.shape, generator=generator)
    wanted = (hard >= 0) & torch.isin(split.hard_negative_kinds[index], _kind_ids(kinds))
    col = _column(draw, wanted)
    hard_rows = torch.where(wanted.gather(1, col), hard.gather(1, col), -1)[:, 0]
    source = split.hard_negative_sources[index].gather(1, col)[:, 0]
    full = (meanings < PARTIAL_MEANING_OFFSET) & (hard_rows >= 0) & (source >= 0)
    paired = split.caption_rows[index].gather(1, source.clamp_min(0)[:, None])[:, 0]
    return hard_rows, torch.where(full, paired, rows)


def _kind_ids(kinds: Sequence[str]) -> Tensor:
    return torch.tensor([PERTURBATIONS.index(k) for k in kinds], dtype=torch.long)


def outside_captions(
    split: SplitTensors, index: Tensor, count: int, generator: torch.Generator
) -> Tensor:
    """Text-bank rows of ``count`` full captions of scenes whose semantic id is not in the
    batch ``index`` (uniformly drawn): true of no scene of the batch."""
    ids = split.semantic_ids
    outside = torch.nonzero(~torch.isin(ids, ids[index]))[:, 0]
    if not len(outside):
        raise ValueError("every semantic id is in the batch: use a batch_size below the scenes")
    pick = outside[torch.randint(0, len(outside), (count,), generator=generator)]
    return split.caption_rows[pick, 0]
