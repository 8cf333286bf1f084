"""The shared pre-training stage: InfoNCE on the dual encoder, once per data build, cached.

NegCLIP (Yuksekgonul et al. 2023, §4) and BACL (arXiv:2511.08399, §4) fine-tune a CLIP that
already knows objects; a hard-negative method has nothing to work with while the towers are
still learning what a digit is. So, with ``pretrain.steps > 0``, the dual encoder (image tower
and both heads; the text tower stays frozen) first trains with plain InfoNCE on random batches,
and every method starts from that state. ``pretrain.negative_kinds`` adds NegCLIP-style hard
negatives of object-level kinds (a wrong digit, a wrong colour): the stage then teaches what the
objects are, as a pre-trained CLIP knows them, and leaves composition (binding attributes to
objects, relations) to the fine-tuning methods — the gap the ARO benchmark found in CLIP. The
stage depends only on the data, the dual encoder's initial weights and its own config — not on
the method or the run's seed — so its result is cached on disk (keyed by a fingerprint of all
of those) and shared by every run of a bench.

``pretrain.object_loss_weight > 0`` adds an object-grounded auxiliary loss (see
:mod:`hardneg.train.grounding`): the tower's patch tokens inside each object's box must tell
that object's digit and colour, as a supervised backbone's features do; a contrastive stage
alone never needs "which digit is where" (the bag of digits identifies a scene).

The stage trains on the training engine (:class:`~hardneg.train.loop.Engine`) with its own
recipe (:class:`StageRecipe`: random batches from the stage's generator), objective
(:class:`StageObjective`) and optimiser values (``pretrain.lr``, ``weight_decay``,
``max_grad_norm``, ``warmup_fraction``), in one process and without AMP: its result is the
same, bit for bit, as the stage's own loop gave before it moved onto the engine.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardneg.data.atomic_files import atomic_write
from hardneg.data.digitscenes.draws import draw_valid
from hardneg.data.fingerprint import content_fingerprint, module_fingerprint
from hardneg.eval.runner import SplitEvaluation
from hardneg.losses.infonce import InfoNCELoss
from hardneg.models.alignment import AlignmentModel
from hardneg.models.dual import DualEncoder
from hardneg.models.inputs import Images, Texts
from hardneg.train.batch import Batch, StepDraw
from hardneg.train.config import CrossModalTermsConfig, OptimConfig, PretrainConfig, TrainConfig
from hardneg.train.grounding import ObjectHeads, ObjectTargets, warp_boxes
from hardneg.train.loop import Engine
from hardneg.train.objective import Objective

PRETRAIN_VERSION = 1  # bump when the stage's computation changes, so old caches are not reused
#: config fields added after stages were cached: left out of the key at their defaults, so a
#: stage that leaves them there keeps the key (and the cache) it had before they existed
LATER_FIELDS = ("object_loss_weight", "weight_decay", "max_grad_norm", "warmup_fraction")


def trainable_state(dual: DualEncoder) -> dict[str, Tensor]:
    """The dual encoder's state without the frozen text tower (reloaded from its package)."""
    return {k: v for k, v in dual.state_dict().items() if not k.startswith("text_tower.")}


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


def pretrain_key(
    dual: DualEncoder, split: Any, bank: Any, config: PretrainConfig, negatives: Tensor
) -> str:
    """Fingerprint of everything the stage's result depends on: the dual encoder's initial
    weights (which also pin its architecture and the frozen text tower), the stage's config,
    and the training images, captions and hard negatives (``negatives``, from
    :func:`object_negative_rows`) themselves; with the object loss, the scenes' digits, colours
    and boxes too."""
    rows = torch.cat([split.caption_rows, negatives], dim=1).flatten().tolist()
    settings = dataclasses.asdict(config)
    defaults = {f.name: f.default for f in dataclasses.fields(PretrainConfig)}
    for name in LATER_FIELDS:  # (a config written before a field existed has none)
        value = settings.pop(name, defaults[name])
        if value != defaults[name]:
            settings[name] = value
    annotations = []
    if "object_loss_weight" in settings:
        s = split.scenes
        annotations = [np.asarray(s.digits), np.asarray(s.colours), np.asarray(s.boxes)]
    return content_fingerprint(
        PRETRAIN_VERSION,
        module_fingerprint(dual),
        settings,
        split.images,
        [bank.texts[r] if r >= 0 else "" for r in rows],
        *annotations,
    )


def pretrain_dual_encoder(
    dual: DualEncoder,
    split: Any,
    bank: Any,
    config: PretrainConfig,
    cache_dir: str | Path | None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``dual`` with InfoNCE for ``config.steps`` (or load the cached result) in place.

    Args:
        dual: a freshly built dual encoder (built from ``config.seed``).
        split: the training :class:`~hardneg.data.digitscenes.tensors.SplitTensors` (images,
            caption rows, hard negatives); one caption per image is drawn per step.
        bank: the :class:`~hardneg.data.digitscenes.textbank.TextBank` of the frozen text tower.
        config: the stage's settings.
        cache_dir: where ``pretrain/<key>.pt`` is kept (None: no cache).
        progress: show a progress bar.

    Returns:
        ``{"state": trainable state, "loss": last-10-step mean InfoNCE loss, "cached": bool}``;
        with ``config.object_loss_weight > 0`` also ``"object_losses"``: the auxiliary CE
        (digit + colour, unweighted) of every step, and ``"s_per_step"``.
        The global random state is the same afterwards as before (the stage draws from its own
        seed), so a run is identical whether the stage was computed or read from the cache.
    """
    if not config.object_loss_weight >= 0:
        raise ValueError(
            f"pretrain.object_loss_weight must be >= 0, got {config.object_loss_weight}; "
            "use 0 for no object loss or e.g. 1.0"
        )
    negatives = object_negative_rows(split, bank, tuple(config.negative_kinds))
    key = pretrain_key(dual, split, bank, config, negatives)
    path = None if cache_dir is None else Path(cache_dir) / "pretrain" / f"{key}.pt"
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        dual.load_state_dict(saved["state"], strict=False)
        return {**saved, "cached": True}
    with torch.random.fork_rng(devices=[]):  # the run's own random stream is left untouched
        result = _train(dual, split, bank, config, negatives, progress)
    if path is not None:
        atomic_write(path, lambda f: torch.save(result, f))
    return {**result, "cached": False}


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


def stage_config(config: PretrainConfig, batch: int, out_dir: str, progress: bool) -> TrainConfig:
    """The engine's configuration of the stage: ``config``'s steps and optimiser values, no
    AMP (the cache key does not say whether it ran), logs into ``out_dir``, no checkpoints."""
    return TrainConfig(
        method="pre-training",
        batch_size=batch,
        steps=config.steps,
        seed=config.seed,
        amp=False,
        log_every=max(1, config.steps),
        checkpoint_every=0,
        out_dir=out_dir,
        progress=progress,
        optim=OptimConfig(
            lr=config.lr,
            weight_decay=config.weight_decay,
            warmup_steps=max(1, int(config.steps * config.warmup_fraction)),
            max_grad_norm=config.max_grad_norm,
        ),
    )


def _train(
    dual: DualEncoder,
    split: Any,
    bank: Any,
    config: PretrainConfig,
    negatives: Tensor,
    progress: bool,
) -> dict[str, Any]:
    """The stage on :class:`~hardneg.train.loop.Engine` (one process)."""
    torch.manual_seed(config.seed)
    contrastive = InfoNCELoss().to(dual.device)
    heads = None
    if config.object_loss_weight > 0:  # created only then: without it the draws are as before
        heads = ObjectHeads(dual.image_tower.token_dim).to(dual.device)
    objective = StageObjective(
        StageLoss(contrastive, heads),
        CrossModalTermsConfig(itm_weight=0.0, mlm_weight=0.0),
        object_weight=config.object_loss_weight,
    )
    recipe = StageRecipe(dual, split, bank, config, negatives)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        cfg = stage_config(config, recipe.batch_sampler.batch, out, progress)
        history = Engine(cfg, recipe, 0, 1, dual.device, objective).fit()
    dual.eval()
    losses = [logs["contrastive"] for logs in history]
    result = {"state": trainable_state(dual), "loss": sum(losses[-10:]) / max(1, len(losses[-10:]))}
    if heads is not None:
        result["object_losses"] = [logs["object_loss"] for logs in history]
        result["s_per_step"] = (time.perf_counter() - start) / max(1, config.steps)
    return result
