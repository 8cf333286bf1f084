"""The fusion group's shared stage: ALBEF on random batches, once per data build, cached.

GRIT-VLP and FALCON change how an ALBEF model's batches are built; their papers apply it to a
model whose ITM head is a matching model (re-ranking the ITC top-k improves retrieval). On
DigitScenes' CPU budget a cross-modal transformer trained from scratch for one run's 600 steps is
not one yet. With ``pretrain.fusion_steps > 0`` every fusion arm (``model.crossmodal_input:
heads``) therefore starts from one shared state: after the shared InfoNCE stage, the fusion
model trains ALBEF's objective (ITC + ITM + MLM, the run's weights) on random batches for
``fusion_steps`` steps from ``pretrain.seed``. The state depends only on the data, the model's
initial weights and that stage's settings — not on the method or the run's seed — so it is
cached (``<cache_dir>/fusion/<key>.pt``) and shared by every run of a bench. The arms then differ
only in the batches of their own ``steps``.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch

from hardneg.data.atomic_files import atomic_write
from hardneg.data.fingerprint import content_fingerprint, module_fingerprint
from hardneg.train.config import BatchSamplerConfig, LossConfig, MinerConfig, TrainConfig

__all__ = ["FUSION_STAGE_VERSION", "fusion_stage_config", "has_fusion_stage", "run_fusion_stage"]

FUSION_STAGE_VERSION = 1  # bump when the stage's computation changes


def has_fusion_stage(cfg: TrainConfig) -> bool:
    """Whether ``cfg``'s run starts from the fusion stage: ``pretrain.fusion_steps > 0`` and an
    ALBEF-style fusion model that trains its dual encoder (not BACL's re-ranker, whose dual
    encoder stays as the InfoNCE stage left it)."""
    m = cfg.model
    return (
        bool(cfg.pretrain.fusion_steps)
        and m.crossmodal_input == "heads"
        and not (m.freeze_dual_encoder)
    )


def fusion_stage_config(cfg: TrainConfig, out_dir: str) -> TrainConfig:
    """The stage's configuration: ``cfg``'s model, data, optimiser and cross-modal weights
    with InfoNCE, no miner, random batches, ``pretrain.fusion_steps`` steps from
    ``pretrain.seed``, no checkpoints, logs into ``out_dir``."""
    return dataclasses.replace(
        cfg,
        method="fusion-stage",
        steps=cfg.pretrain.fusion_steps,
        seed=cfg.pretrain.seed,
        loss=LossConfig(),
        miner=MinerConfig(),
        batch_sampler=BatchSamplerConfig(),
        checkpoint_every=0,
        log_every=max(1, cfg.pretrain.fusion_steps),
        out_dir=out_dir,
    )


def _key(model: torch.nn.Module, cfg: TrainConfig, images: torch.Tensor) -> str:
    settings = fusion_stage_config(cfg, "").to_dict()
    for volatile in ("out_dir", "progress", "device"):
        settings.pop(volatile, None)
    return content_fingerprint(FUSION_STAGE_VERSION, module_fingerprint(model), settings, images)


def run_fusion_stage(recipe: Any, progress: bool) -> dict[str, Any]:
    """Train (or load from the cache) the fusion stage in place on ``recipe.model``.

    Args:
        recipe: the run's :class:`~hardneg.train.recipes.digitscenes.DigitScenesRecipe`
            (its data, model and draws; its caption generator is restored afterwards).
        progress: show a progress bar.

    Returns:
        ``{"cached": bool, "loss": the stage's last logged loss or None}``. The global random
        state is the same afterwards as before.
    """
    from hardneg.train.loop import Engine  # (the loop imports the recipes' modules)

    cfg, model = recipe.cfg, recipe.model
    key = _key(model, cfg, recipe.train_split.images)
    cache = cfg.data.cache_dir
    path = None if cache is None else Path(cache) / "fusion" / f"{key}.pt"
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state"], strict=False)
        return {"cached": True, "loss": saved["loss"]}
    generator = recipe.caption_gen
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as out:
        stage = dataclasses.replace(fusion_stage_config(cfg, out), progress=progress)
        torch.manual_seed(stage.seed)
        # the recipe draws from the stage's seed (captions, MLM targets), not the run's
        recipe.cfg, recipe.caption_gen = stage, torch.Generator().manual_seed(stage.seed + 1)
        try:
            history = Engine(stage, recipe, 0, 1, recipe.device).fit()
        finally:
            recipe.cfg, recipe.caption_gen = cfg, generator
    loss = float(history[-1]["loss"]) if history else None
    if path is not None:
        state = {"state": model.trainable_state_dict(), "loss": loss}
        atomic_write(path, lambda f: torch.save(state, f))
    return {"cached": False, "loss": loss}
