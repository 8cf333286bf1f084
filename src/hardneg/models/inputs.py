"""What an :class:`~hardneg.models.alignment.AlignmentModel` reads: images and captions, raw or
as a frozen tower's cached output (then only the heads run)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hardneg.models.outputs import ImageOutput, TextOutput


@dataclass
class Images:
    """A rank's images: ``pixels`` ``(r, 3, H, W)`` in [0, 1], or ``features`` (the output of
    a frozen image tower, computed once); exactly one is set."""

    pixels: Tensor | None = None
    features: ImageOutput | None = None

    def __post_init__(self) -> None:
        if (self.pixels is None) == (self.features is None):
            raise ValueError("Images needs exactly one of pixels and features")

    def __len__(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.features)

    def select(self, rows: slice) -> Images:
        """The images of ``rows`` (e.g. one GradCache chunk)."""
        if self.pixels is not None:
            return Images(pixels=self.pixels[rows])
        return Images(features=self.features.select(rows))


@dataclass
class Texts:
    """A rank's captions: ``states`` (a frozen text tower's cached output, ids and mask
    included), or ``input_ids`` / ``mask`` ``(r, L)`` for a text tower that runs every step."""

    input_ids: Tensor
    mask: Tensor
    states: TextOutput | None = None

    @classmethod
    def cached(cls, states: TextOutput) -> Texts:
        """Captions whose frozen-tower states are already computed."""
        return cls(states.input_ids, states.mask, states)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: slice) -> Texts:
        """The captions of ``rows``, padded as before (e.g. one GradCache chunk)."""
        states = None if self.states is None else self.states.select(rows)
        return Texts(self.input_ids[rows], self.mask[rows], states)

    def to(self, device: torch.device | str) -> Texts:
        """Token ids and mask on ``device`` (captions encoded there by a live tower)."""
        if self.states is not None:
            return Texts.cached(self.states.to(device))
        return Texts(self.input_ids.to(device), self.mask.to(device))
