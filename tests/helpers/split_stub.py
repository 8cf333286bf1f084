"""A hand-built DigitScenes split and a stub model whose embeddings are fixed vectors, for the
split evaluator's tests (``hardneg.eval.runner``): expected rankings are computed by brute force
from :data:`IMAGES`, :data:`TEXTS` and :func:`true_of`.

Scenes: 0 = red 3 | 1 = red 3, blue 5 | 2 = green 7 (COLOURS: red 0, green 1, blue 2). Bank rows
0–2 are the full captions of scenes 0–2, row 3 is "a red 3" (written for scene 0), row 4 is
"a blue 5" (written for scene 1).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from hardneg.data.digitscenes.tensors import SplitTensors
from hardneg.models.outputs import ImageOutput

DIGITS = [[3, -1, -1], [3, 5, -1], [7, -1, -1]]
COLOURS = [[0, -1, -1], [0, 2, -1], [1, -1, -1]]
IMAGES = torch.eye(3)
TEXTS = torch.tensor(
    [[0.9, 0.0, 0.1], [0.6, 0.5, 0.0], [0.0, 0.2, 0.9], [0.7, 0.7, 0.0], [0.0, 0.8, 0.3]]
)
OBJECT_OF_PARTIAL = {3: (3, 0), 4: (5, 2)}  # row → (digit, colour)


def true_of(scene: int, row: int) -> bool:
    """Independent relevance: full captions by scene, partial ones by the object named."""
    if row < 3:
        return row == scene
    return OBJECT_OF_PARTIAL[row] in set(zip(DIGITS[scene], COLOURS[scene], strict=True))


class StubDual:
    def __init__(self) -> None:
        self.text_head = torch.nn.Identity()

    def embed_text(self, text):
        return text  # the stub bank's rows are the embeddings

    def encode_image(self, images: torch.Tensor):
        index = images[:, 0, 0, 0].mul(255).round().long()  # the pixel stores the scene index
        emb = IMAGES[index]
        return emb, ImageOutput(emb[:, None, :], emb, (1, 1))


class StubModel(torch.nn.Module):
    """``match`` runs ``crossmodal`` (None: no cross-modal head) on (text, image tokens)."""

    def __init__(self, crossmodal=None) -> None:
        super().__init__()
        self.dual = StubDual()
        self.crossmodal = crossmodal

    def encode_images(self, images):
        return self.dual.encode_image(images.pixels)

    def match(self, text, image: ImageOutput):
        return self.crossmodal(text, image.tokens)


def stub_split() -> SplitTensors:
    n = len(DIGITS)
    scenes = SimpleNamespace(
        digits=np.array(DIGITS), colours=np.array(COLOURS), hard_negatives=[[] for _ in range(n)]
    )
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 2, 2)
    return SplitTensors(
        images=images.contiguous(),
        caption_rows=torch.arange(n)[:, None],
        semantic_ids=torch.tensor([10, 11, 12]),
        hard_negative_rows=torch.full((n, 1), -1),
        scenes=scenes,
        partial_rows=torch.tensor([[3, -1], [-1, 4], [-1, -1]]),  # column j: object j
    )


def stub_bank(pooled: torch.Tensor = TEXTS, **extra) -> SimpleNamespace:
    """A text bank whose rows are the embeddings ``pooled``."""
    return SimpleNamespace(pooled=pooled, take=lambda rows, device: pooled[rows], **extra)
