"""The pre-training stage's pieces on the training engine: its batches, recipe, loss and
objective (:mod:`hardneg.train.pretrain` runs them), and the stage's image jitter.

The stage draws random batches from its own generator (:class:`StageBatches`), serves them from
the DigitScenes split (:class:`StageRecipe`: images, cached caption states, NegCLIP-style
object-level hard negatives, the object boxes of the grounded loss), scores them with InfoNCE
(:class:`StageLoss`, which also owns the grounded loss's heads) and adds the object loss
(:class:`StageObjective`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardneg.data.digitscenes.draws import draw_valid
from hardneg.eval.runner import SplitEvaluation
from hardneg.losses.infonce import InfoNCELoss
from hardneg.models.alignment import AlignmentModel
from hardneg.models.dual import DualEncoder
from hardneg.models.inputs import Images, Texts
from hardneg.train.batch import Batch, StepDraw
from hardneg.train.config import PretrainConfig
from hardneg.train.grounding import ObjectHeads, ObjectTargets, warp_boxes
from hardneg.train.objective import Objective


def object_negative_rows(split: Any, bank: Any, kinds: tuple[str, ...]) -> Tensor:
    """(N, K) text-bank rows of each scene's hard-negative captions of the given ``kinds``
    (−1 = none): e.g. ``replace_digit`` / ``change_colour``, which name a wrong object."""
    per_scene = [
        [bank.index[h.caption] for h in negs if h.kind in kinds and h.caption in bank.index]
        for negs in split.scenes.hard_negatives
    ]
    if kinds and not any(per_scene):
        raise ValueError(
            f"no hard negative of kinds {list(kinds)} is in the text bank; encode the training "
            "split's hard negatives (data.encode_all)"
        )
    rows = torch.full((len(per_scene), max(1, max(map(len, per_scene), default=0))), -1)
    for i, found in enumerate(per_scene):
        rows[i, : len(found)] = torch.tensor(found, dtype=torch.long)
    return rows


def jitter_theta(batch: int, generator: torch.Generator, shift: float = 0.06) -> Tensor:
    """(B, 2, 3) random affine maps of :func:`jitter` (``F.affine_grid`` convention: output
    point → input point, in normalised coordinates)."""
    u = torch.rand(batch, 4, generator=generator) * 2 - 1
    angle, scale = u[:, 0] * math.radians(8), 1 + 0.08 * u[:, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack(
        [
            torch.stack([cos, -sin, u[:, 2] * 2 * shift], 1),
            torch.stack([sin, cos, u[:, 3] * 2 * shift], 1),
        ],
        1,
    )


def warp(images: Tensor, theta: Tensor) -> Tensor:
    """``images`` (B, C, H, W) resampled through the affine maps ``theta`` (B, 2, 3)."""
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


def jitter(images: Tensor, generator: torch.Generator, shift: float = 0.06) -> Tensor:
    """Random small affine jitter per image (translation ±``shift`` of the side, rotation ±8°,
    scale ±8 %): new instances of the same few hundred digit scans, so the stage learns digit
    shapes instead of memorising scenes; small enough to keep every spatial relation."""
    return warp(images, jitter_theta(images.shape[0], generator, shift))


class StageBatches:
    """The stage's batch sampler: each step, ``batch`` of the ``n`` items drawn without
    replacement from ``generator``, which the recipe's draws share (one random stream, read in
    a fixed order: the items, then their captions, jitter and hard negatives)."""

    def __init__(self, n: int, batch: int, generator: torch.Generator) -> None:
        self.n, self.batch, self.generator = n, batch, generator
        self.last_batch_stats: dict[str, Any] = {}

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: every step draws its items afresh."""

    def __len__(self) -> int:
        return max(1, self.n // self.batch)

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(len(self)):
            yield torch.randperm(self.n, generator=self.generator)[: self.batch].tolist()

    def state_dict(self) -> dict[str, Any]:
        return {}  # the shared generator is checkpointed by the recipe

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""


class StageRecipe:
    """The stage's data and model for :class:`~hardneg.train.loop.Engine`: random batches of
    the training split, one caption per image, with ``config.augment`` the images jittered,
    with ``config.negative_kinds`` the NegCLIP-style hard negatives of the images that have
    one, with ``config.object_loss_weight`` the objects' boxes and classes. One micro-batch per
    step in one process.

    Args:
        dual, split, bank, config, negatives: as :func:`pretrain_dual_encoder` has them.
    """

    logit_scale = None  # InfoNCE's own initial temperature
    exclude_from_decay = False  # every parameter decayed, as the stage always did

    def __init__(
        self,
        dual: DualEncoder,
        split: Any,
        bank: Any,
        config: PretrainConfig,
        negatives: Tensor,
    ) -> None:
        self.model = AlignmentModel(dual, None, reloaded_prefixes=("dual.text_tower.",))
        self.split, self.bank, self.config, self.negatives = split, bank, config, negatives
        self.device = dual.device
        self.generator = torch.Generator().manual_seed(config.seed)
        n = len(split.caption_rows)
        self.batch_sampler = StageBatches(n, min(config.batch_size, n), self.generator)
        self.image_size = (split.images.shape[-1], split.images.shape[-2])
        self.objects = None
        if config.object_loss_weight > 0:
            self.objects = [
                torch.as_tensor(np.asarray(getattr(split.scenes, a)))
                for a in ("digits", "colours", "boxes")
            ]

    def train_size(self) -> int:
        return self.batch_sampler.n

    def semantic_ids(self) -> None:
        """None: the batch diagnostics do not count meanings here."""
        return None

    def draw(self, index: Tensor, step: int) -> StepDraw:
        """A caption per image, the jitter and the hard negatives, from the stage's generator."""
        gen, captions = self.generator, self.split.caption_rows
        rows = captions[index, torch.randint(0, captions.shape[1], (len(index),), generator=gen)]
        theta = jitter_theta(len(index), gen) if self.config.augment else None
        picked = None
        if self.config.negative_kinds:
            picked = draw_valid(self.negatives[index], gen)
            picked = picked[picked >= 0]
        return StepDraw(index, payload={"rows": rows, "theta": theta, "picked": picked})

    def batch(self, draw: StepDraw, part: slice, rank: int, world: int) -> Batch:
        """The step's batch (``part`` is the whole of it: one micro-batch, one process)."""
        p, device, index = draw.payload, self.device, draw.index
        if (part.start or 0, part.stop, world) != (0, len(index), 1):
            raise ValueError("the pre-training stage runs one micro-batch in one process")
        images = self.split.images[index].to(device).float().div_(255.0)
        theta = p["theta"]
        if theta is not None:
            images = warp(images, theta)
        picked = p["picked"]
        hard = None
        if picked is not None and len(picked):
            hard = Texts.cached(self.bank.take(picked, device))
        objects = None
        if self.objects is not None:
            digits, colours, boxes = (a[index] for a in self.objects)
            if theta is not None:
                boxes = warp_boxes(boxes, theta, self.image_size)
            objects = ObjectTargets(boxes, digits >= 0, digits, colours, self.image_size)
        return Batch(
            index=index,
            local=index,
            ids=None,  # each image's drawn caption is its only positive
            images=Images(pixels=images),
            text=Texts.cached(self.bank.take(p["rows"], device)),
            mlm_chosen=None,
            mlm_targets=None,
            hard_text=hard,
            objects=objects,
        )

    def embed_untrained(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Never called: the stage's batches are random, with no embedding store to fill."""
        raise NotImplementedError("the pre-training stage has no embedding store")

    def evaluate(
        self, spec: str | None = None, compositional: str | None = None
    ) -> dict[str, SplitEvaluation]:
        """Nothing: the stage is judged by the methods that fine-tune from it."""
        return {}

    def export(self, out_dir: Path, logit_scale: float) -> None:
        """Nothing: the stage's result is the cached state :func:`pretrain_dual_encoder` keeps."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class StageLoss(nn.Module):
    """The stage's loss and its trained parameters: InfoNCE (its temperature) and, with the
    object loss, the object heads — one module, so that the optimiser holds them in the order
    the stage always had (the model's, the temperature, the heads)."""

    def __init__(self, contrastive: InfoNCELoss, heads: ObjectHeads | None) -> None:
        super().__init__()
        self.contrastive, self.heads = contrastive, heads

    def prepare(self, *args: Any) -> Any:
        """InfoNCE's :meth:`~hardneg.losses.base.ContrastiveLoss.prepare`."""
        return self.contrastive.prepare(*args)

    def loss(self, pairs: Any) -> Tensor:
        """InfoNCE's loss of prepared ``pairs``."""
        return self.contrastive.loss(pairs)

    def scale(self) -> Tensor:
        """InfoNCE's logit scale."""
        return self.contrastive.scale()


@dataclass
class StageObjective(Objective):
    """InfoNCE, plus ``object_weight`` × the object-grounded loss of the batch's objects
    (:meth:`~hardneg.train.grounding.ObjectTargets.loss`, logged as ``object_loss``) when the
    batch has them; ``loss_fn`` is a :class:`StageLoss`."""

    object_weight: float = 0.0

    def _extra_terms(self, model, c, text, image, batch: Batch) -> Tensor | None:
        if batch.objects is None:
            return None
        loss = batch.objects.loss(self.loss_fn.heads, image.tokens, image.grid)
        c.logs["object_loss"] = float(loss.detach())
        return self.object_weight * loss
