"""What one training step hands the objective, whatever the data and the encoders are.

- images and captions as :class:`~hardneg.models.inputs.Images` /
  :class:`~hardneg.models.inputs.Texts` (pixels or token ids, or a frozen tower's cache);
- :class:`StepDraw`: the random choices of one optimizer step for the whole global batch (which
  caption, which hard negative, which MLM targets), drawn once by the recipe so that every pass
  of the step reads the same draw (FALCON's reward measures the update and nothing else);
- :class:`Batch`: one micro-batch, with this rank's shard of it, ready for the objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hardneg.models.inputs import Images, Texts
from hardneg.train.grounding import ObjectTargets


@dataclass
class StepDraw:
    """The random choices of one optimizer step, for the whole global batch.

    Attributes:
        index: ``(G,)`` the global batch's item (image) indices, identical on every rank.
        fn_rate: % of the batch's ordered in-batch pairs that are false negatives (the drawn
            caption of one item is true of the other), when the data knows it; else None.
        payload: the recipe's own record of its draws (caption rows or tokens, hard
            negatives, MLM targets), read back by the recipe's :meth:`Recipe.batch`.
    """

    index: Tensor
    fn_rate: float | None = None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """One micro-batch as the objective sees it.

    Attributes:
        index: ``(g,)`` the global micro-batch's item indices (every rank the same).
        local: ``(r,)`` this rank's items (a shard of ``index``).
        ids: ``(r,)`` positive ids: two captions are positives of each other's images iff
            their ids are equal (item index by default: the image's own captions only); None:
            each image's drawn caption is its only positive (the loss's diagonal).
        images, text: this rank's images and one caption per image.
        hard_text: one hard-negative caption per image (NegCLIP extra negatives), or None.
        mlm_chosen: ``(r, L)`` bool MLM targets of ``text`` (None: no MLM term).
        mlm_targets: the MLM normaliser: the micro-batch's global number of targets ÷ world,
            so the mean over ranks is the single-process token mean (None: no MLM term).
        mlm_text: ``text`` with the targets replaced by the tokenizer's [MASK] before the
            text tower, already encoded (a recipe's cache; None: the model encodes them when
            its cross-modal head reads the heads' states, see ``AlignmentModel.mlm_loss``).
        relevance: ``(g, g)`` bool, ``relevance[i, j]`` = caption j is true of item i (the
            exact false negatives), when the data knows meanings; else None.
        objects: the images' objects (boxes, digits, colours) for an object-grounded loss
            (the pre-training stage's, :mod:`hardneg.train.grounding`), or None.
    """

    index: Tensor
    local: Tensor
    ids: Tensor | None
    images: Images
    text: Texts
    mlm_chosen: Tensor | None
    mlm_targets: Tensor | None
    hard_text: Texts | None = None
    mlm_text: Texts | None = None
    relevance: Tensor | None = None
    objects: ObjectTargets | None = None


def micro_slices(size: int, grad_accum: int) -> list[slice]:
    """The ``grad_accum`` equal parts of a global batch of ``size`` items."""
    part = size // grad_accum
    return [slice(start, start + part) for start in range(0, size, part)]


def mlm_normaliser(chosen: Tensor, world: int, device: torch.device | str) -> Tensor:
    """The global number of MLM targets of a micro-batch ÷ ``world`` (at least 1 / world)."""
    return chosen.sum().clamp_min(1).to(device) / world
