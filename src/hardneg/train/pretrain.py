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
recipe, batches, loss and objective (:mod:`hardneg.train.stage`: random batches from the
stage's generator) and optimiser values (``pretrain.lr``, ``weight_decay``, ``max_grad_norm``,
``warmup_fraction``), in one process and without AMP: its result is the same, bit for bit, as
the stage's own loop gave before it moved onto the engine.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hardneg.data.atomic_files import atomic_write
from hardneg.data.fingerprint import content_fingerprint, module_fingerprint
from hardneg.losses.infonce import InfoNCELoss
from hardneg.models.dual import DualEncoder
from hardneg.train.config import CrossModalTermsConfig, OptimConfig, PretrainConfig, TrainConfig
from hardneg.train.grounding import ObjectHeads
from hardneg.train.loop import Engine
from hardneg.train.stage import StageLoss, StageObjective, StageRecipe, object_negative_rows

PRETRAIN_VERSION = 1  # bump when the stage's computation changes, so old caches are not reused
#: config fields added after stages were cached: left out of the key at their defaults, so a
#: stage that leaves them there keeps the key (and the cache) it had before they existed
LATER_FIELDS = ("object_loss_weight", "weight_decay", "max_grad_norm", "warmup_fraction")


def trainable_state(dual: DualEncoder) -> dict[str, Tensor]:
    """The dual encoder's state without the frozen text tower (reloaded from its package)."""
    return {k: v for k, v in dual.state_dict().items() if not k.startswith("text_tower.")}


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
    settings.pop("fusion_steps", None)  # the fusion stage's, run after this one (its own cache)
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
