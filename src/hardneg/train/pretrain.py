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
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from hardneg.data.atomic_files import atomic_write
from hardneg.data.digitscenes.draws import draw_valid
from hardneg.data.fingerprint import content_fingerprint, module_fingerprint
from hardneg.losses.infonce import InfoNCELoss
from hardneg.models.dual import DualEncoder
from hardneg.train.config import PretrainConfig
from hardneg.train.grounding import ObjectHeads, object_loss, object_patch_masks, warp_boxes
from hardneg.train.schedule import warmup_cosine

PRETRAIN_VERSION = 1  # bump when the stage's computation changes, so old caches are not reused


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
    annotations = []  # a stage without the object loss keeps the key it had before the loss
    weight = settings.pop("object_loss_weight", 0.0)
    if weight:
        settings["object_loss_weight"] = weight
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


def _train(
    dual: DualEncoder,
    split: Any,
    bank: Any,
    config: PretrainConfig,
    negatives: Tensor,
    progress: bool,
) -> dict[str, Any]:
    device = dual.device
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    loss_fn = InfoNCELoss().to(device)
    params = [p for p in dual.parameters() if p.requires_grad] + list(loss_fn.parameters())
    grounded = config.object_loss_weight > 0
    if grounded:  # created only then: a stage without it draws exactly what it drew before
        heads = ObjectHeads(dual.image_tower.token_dim).to(device)
        params += list(heads.parameters())
        digits, colours, boxes = (
            torch.as_tensor(np.asarray(getattr(split.scenes, a)))
            for a in ("digits", "colours", "boxes")
        )
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.05)
    warm = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warm, config.steps)
    )
    images, caption_rows = split.images, split.caption_rows
    image_size = (images.shape[-1], images.shape[-2])
    n, n_caps = caption_rows.shape
    batch = min(config.batch_size, n)
    losses: list[float] = []
    object_losses: list[float] = []
    start = time.perf_counter()
    dual.train()
    for _ in tqdm(range(config.steps), desc="pre-training", disable=not progress, leave=False):
        idx = torch.randperm(n, generator=gen)[:batch]
        rows = caption_rows[idx, torch.randint(0, n_caps, (batch,), generator=gen)]
        batch_images = images[idx].to(device).float().div_(255.0)
        theta = None
        if config.augment:
            theta = jitter_theta(batch, gen)
            batch_images = warp(batch_images, theta)
        image_emb, image_out = dual.encode_image(batch_images)
        text_emb, _ = dual.encode_text(bank.take(rows, device))
        extra = None
        if config.negative_kinds:
            picked = draw_valid(negatives[idx], gen)
            picked = picked[picked >= 0]
            extra = dual.embed_text(bank.take(picked, device)) if len(picked) else None
        loss = contrastive = loss_fn(image_emb, text_emb, extra_text_emb=extra)
        if grounded:
            present = digits[idx] >= 0
            batch_boxes = boxes[idx] if theta is None else warp_boxes(boxes[idx], theta, image_size)
            masks = object_patch_masks(batch_boxes, present, image_size, image_out.grid)
            aux = object_loss(heads, image_out.tokens, masks.to(device), digits[idx], colours[idx])
            loss = loss + config.object_loss_weight * aux
            object_losses.append(float(aux.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        schedule.step()
        losses.append(float(contrastive.detach()))
    dual.eval()
    result = {"state": trainable_state(dual), "loss": sum(losses[-10:]) / max(1, len(losses[-10:]))}
    if grounded:
        result["object_losses"] = object_losses
        result["s_per_step"] = (time.perf_counter() - start) / max(1, config.steps)
    return result
