"""Recipes: a data source and its model, for the training engine (:mod:`hardneg.train.loop`).

- :class:`~hardneg.train.recipes.digitscenes.DigitScenesRecipe`: DigitScenes, builtin model;
- :class:`~hardneg.train.recipes.files.FilesRecipe`: Karpathy / CSV / HF sources (and
  DigitScenes) with an open_clip, HF CLIP or builtin model;
- :class:`~hardneg.train.recipes.stream.StreamRecipe`: webdataset shards, streamed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import Tensor

from hardneg.eval.runner import SplitEvaluation
from hardneg.models.alignment import AlignmentModel
from hardneg.train.batch import Batch, StepDraw

__all__ = ["BatchSampler", "Recipe"]


class BatchSampler(Protocol):
    """What the loop needs from a batch sampler: the global batches (item indices) of an epoch,
    statistics of the last one, and its resumable state. The engine builds a
    :class:`~hardneg.samplers.HardnessBatchSampler` unless the recipe brings its own."""

    #: numeric figures describing the batch yielded last (logged as ``batch_<key>``)
    last_batch_stats: dict[str, Any]

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (its order, its search spaces)."""

    def __len__(self) -> int:
        """Global batches in an epoch."""

    def __iter__(self) -> Iterator[list[int]]:
        """The epoch's global batches of item indices."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Recipe(Protocol):
    """What the loop and :mod:`hardneg.train.run` need from a data source and its model (see
    ``hardneg.train.recipes``)."""

    model: AlignmentModel
    #: the checkpoint's initial logit scale (exp), or None for the loss's default temperature
    logit_scale: float | None
    #: the recipe's own batch sampler (a stream brings its batches), or None: the engine
    #: indexes the map-style data with the sampler ``sampler`` configures
    batch_sampler: BatchSampler | None
    #: no weight decay on gains, biases, norms and the temperature (open_clip's fine-tuning
    #: rule), else every parameter is decayed
    exclude_from_decay: bool

    def train_size(self) -> int:
        """Number of training items (images) the batch sampler indexes."""

    def semantic_ids(self) -> np.ndarray | None:
        """Per training item, an id that items of one meaning share (the batch sampler's
        false-negative diagnostics), or None when the data does not know meanings."""

    def draw(self, index: Tensor, step: int) -> StepDraw:
        """The random choices of one step for the global batch ``index``."""

    def batch(self, draw: StepDraw, part: slice, rank: int, world: int) -> Batch:
        """Micro-batch ``part`` of ``draw``, with this rank's shard loaded on the device."""

    def embed_untrained(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised (image, text) embeddings of items an epoch never trained (no grad)."""

    def evaluate(
        self, spec: str | None = None, compositional: str | None = None
    ) -> dict[str, SplitEvaluation]:
        """Every metric on the evaluation splits, or on the data spec ``spec`` with the
        compositional probes JSON ``compositional`` (recipes of real data)."""

    def export(self, out_dir: Path, logit_scale: float) -> Path | None:
        """Save the trained model in its own library's format with ``logit_scale`` written
        back; the path written, or None when the checkpoint is the only format."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
