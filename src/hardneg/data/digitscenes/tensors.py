"""A DigitScenes split as in-memory tensors: :class:`SplitTensors` and :func:`split_tensors`.

Scenes are small (48×48), so every split lives in memory as uint8 tensors and a batch is an
index lookup — no DataLoader workers needed on a 2-core machine. Captions are rows of a
:class:`~hardneg.data.digitscenes.textbank.TextBank` of frozen text-tower features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hardneg.data.digitscenes.captions import PERTURBATIONS
from hardneg.data.digitscenes.scenes import SceneSplit
from hardneg.data.digitscenes.semantics import COLOURS, N_SEMANTIC_IDS
from hardneg.data.digitscenes.textbank import TextBank
from hardneg.models.inputs import Images
from hardneg.models.outputs import ImageOutput

__all__ = ["PARTIAL_MEANING_OFFSET", "SplitTensors", "split_tensors"]

# meaning ids of captions that describe one object only ("a red 3"): offset + digit·6 + colour
PARTIAL_MEANING_OFFSET = N_SEMANTIC_IDS


@dataclass
class SplitTensors:
    """One split: images (N, 3, H, W) uint8, caption rows (N, C), semantic ids (N,), hard
    negative caption rows (N, K) (−1 = none), and the :class:`SceneSplit` annotations.

    ``hard_negative_kinds`` (N, K) index
    :data:`~hardneg.data.digitscenes.captions.PERTURBATIONS` (−1 = none) and
    ``hard_negative_sources`` (N, K) name the caption column each hard negative perturbs.

    ``partial_rows`` (N, P) are the text-bank rows of captions that describe only one object of
    the scene (−1 = none; P = 0 when the build has none): they are true of every scene that
    holds that object, so they are the benchmark's false negatives. :meth:`relevance` says
    exactly which caption meanings are true of which scenes.
    """

    images: Tensor
    caption_rows: Tensor
    semantic_ids: Tensor
    hard_negative_rows: Tensor
    scenes: SceneSplit
    partial_rows: Tensor | None = None
    hard_negative_kinds: Tensor | None = None
    hard_negative_sources: Tensor | None = None
    #: features of a frozen image tower (set by the trainer), used instead of the images
    image_features: ImageOutput | None = None

    def __post_init__(self) -> None:
        if self.partial_rows is None:
            self.partial_rows = torch.full((len(self), 0), -1, dtype=torch.long)
        for name in ("hard_negative_kinds", "hard_negative_sources"):
            if getattr(self, name) is None:  # unknown: no kind, no caption to pair with
                setattr(self, name, torch.full_like(self.hard_negative_rows, -1))
        digits = torch.from_numpy(np.asarray(self.scenes.digits, dtype=np.int64))
        colours = torch.from_numpy(np.asarray(self.scenes.colours, dtype=np.int64))
        # (N, 3) object codes digit·6 + colour, −1 for absent objects
        self.object_codes = torch.where(digits >= 0, digits * len(COLOURS) + colours, -1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def caption_meanings(self) -> Tensor:
        """(N, C + P) meaning id of every caption slot: full captions carry the scene's
        semantic id, partial ones ``PARTIAL_MEANING_OFFSET + object code`` (−1 = no caption)."""
        full = self.semantic_ids[:, None].expand_as(self.caption_rows)
        assert self.partial_rows is not None
        p = self.partial_rows.shape[1]
        partial = PARTIAL_MEANING_OFFSET + self.object_codes[:, :p]
        partial = torch.where(self.partial_rows >= 0, partial, -1)
        return torch.cat([full, partial], dim=1)

    def relevance(self, scenes: Tensor, meanings: Tensor) -> Tensor:
        """``(len(scenes), len(meanings))`` bool: caption meaning ``m`` is true of scene ``s``
        (same canonical description, or the one object a partial caption names is in it)."""
        scenes, meanings = scenes.long().cpu(), meanings.long().cpu()
        full = self.semantic_ids[scenes][:, None] == meanings[None, :]
        codes = self.object_codes[scenes]  # (n, 3)
        part = meanings - PARTIAL_MEANING_OFFSET
        hit = (codes[:, :, None] == part[None, None, :]).any(dim=1) & (part >= 0)[None, :]
        return full | hit

    def image_batch(self, index: Tensor, device: torch.device | str) -> Tensor:
        """Float images in [0, 1] of the given scenes."""
        return self.images[index].to(device, non_blocking=True).float().div_(255.0)

    def images_of(self, index: Tensor, device: torch.device | str) -> Images:
        """The given scenes as a model reads them: the frozen tower's cached features when the
        split holds them, else the images."""
        feats = self.image_features
        if feats is None:
            return Images(pixels=self.image_batch(index, device))
        return Images(
            features=ImageOutput(
                feats.tokens[index].to(device), feats.pooled[index].to(device), feats.grid
            )
        )


def split_tensors(split: SceneSplit, bank: TextBank) -> SplitTensors:
    """``split`` as :class:`SplitTensors` whose caption rows index ``bank``."""
    # train's partial captions are encoded only when training draws them; every other caption
    # must be in the bank (a KeyError names the missing one)
    lenient = split.name == "train"
    images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2).contiguous()
    n_caps = max(len(c) for c in split.captions)
    caption_rows = torch.stack([bank.rows((caps * n_caps)[:n_caps]) for caps in split.captions])
    partial = torch.full((len(split), split.digits.shape[1]), -1, dtype=torch.long)
    for i, caps in enumerate(split.partial_captions):
        for k, caption in enumerate(caps):  # column k = object k
            partial[i, k] = bank.index.get(caption, -1) if lenient else bank.rows([caption])[0]
    k = max((len(h) for h in split.hard_negatives), default=0)
    hard = torch.full((len(split), max(k, 1)), -1, dtype=torch.long)
    kinds, sources = hard.clone(), hard.clone()
    for i, negs in enumerate(split.hard_negatives):
        known = [h for h in negs if h.caption in bank.index]
        if known:
            hard[i, : len(known)] = bank.rows([h.caption for h in known])
            kinds[i, : len(known)] = torch.tensor([PERTURBATIONS.index(h.kind) for h in known])
            sources[i, : len(known)] = torch.tensor([h.source for h in known])
    return SplitTensors(
        images=images,
        caption_rows=caption_rows,
        semantic_ids=torch.from_numpy(np.asarray(split.semantic_ids, dtype=np.int64)),
        hard_negative_rows=hard,
        scenes=split,
        partial_rows=partial,
        hard_negative_kinds=kinds,
        hard_negative_sources=sources,
    )
