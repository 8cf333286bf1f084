"""Recipes: a data source and its model, for the training engine (:mod:`hardneg.train.loop`).

- :class:`~hardneg.train.recipes.digitscenes.DigitScenesRecipe`: DigitScenes, builtin model;
- :class:`~hardneg.train.recipes.files.FilesRecipe`: Karpathy / CSV / HF sources (and
  DigitScenes) with an open_clip, HF CLIP or builtin model;
- :class:`~hardneg.train.recipes.stream.StreamRecipe`: webdataset shards, streamed.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor

from hardneg.models.alignment import AlignmentModel
from hardneg.train.batch import Batch, StepDraw

__all__ = ["Recipe"]


class Recipe(Protocol):
    """What the loop needs from a data source and its model (see ``hardneg.train.recipes``)."""

    model: AlignmentModel
    #: the checkpoint's initial logit scale (exp), or None for the loss's default temperature
    logit_scale: float | None

    def train_size(self) -> int:
        """Number of training items (images) the batch sampler indexes."""

    def draw(self, index: Tensor, step: int) -> StepDraw:
        """The random choices of one step for the global batch ``index``."""

    def batch(self, draw: StepDraw, part: slice, rank: int, world: int) -> Batch:
        """Micro-batch ``part`` of ``draw``, with this rank's shard loaded on the device."""

    def embed_untrained(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised (image, text) embeddings of items an epoch never trained (no grad)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
