"""The engine's parts built from a :class:`~hardneg.train.config.TrainConfig`: the loss, the
negative miner, the batch sampler (random | GRIT | FALCON | …), the optimizer and the models'
own configurations (the settings declared ``sets=(Cls, name)`` pass on to ``Cls``)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch
from torch import nn

from hardneg.miners import BNSConfig, BoundaryAwareMiner
from hardneg.models.crossmodal import CrossModalTransformer
from hardneg.models.crossmodal_config import CrossModalConfig
from hardneg.models.image import ImageTowerConfig
from hardneg.models.text import TextTower
from hardneg.samplers import (
    FalconConfig,
    FalconPolicy,
    HardnessBatchSampler,
    HardnessSamplerConfig,
)
from hardneg.train.config import ModelConfig, TrainConfig
from hardneg.train.methods import LOSSES
from hardneg.train.settings import derived_kwargs


def build_loss(cfg: TrainConfig, logit_scale: float | None = None) -> nn.Module:
    """The contrastive loss of ``cfg.loss``; ``logit_scale`` (a checkpoint's ``exp`` scale)
    sets its initial temperature (for losses with one) unless ``loss.kwargs`` sets it."""
    cls, kwargs = LOSSES[cfg.loss.name], dict(cfg.loss.kwargs)
    # SigLIP starts from its own (t, b) = (10, −10): a CLIP's softmax scale is not a sigmoid's
    takes_temperature = "temperature" in inspect.signature(cls).parameters
    takes_temperature &= cfg.loss.name != "siglip"
    if logit_scale is not None and takes_temperature and "temperature" not in kwargs:
        kwargs["temperature"] = 1.0 / logit_scale
    return cls(**kwargs)


def build_miner(cfg: TrainConfig) -> BoundaryAwareMiner | None:
    """BACL's boundary-aware miner when ``miner.name == "bns"``, else None."""
    if cfg.miner.name != "bns":
        return None
    return BoundaryAwareMiner(BNSConfig(seed=cfg.seed, **derived_kwargs(cfg.miner, BNSConfig)))


def hardness_sampler_config(cfg: TrainConfig, n: int) -> HardnessSamplerConfig:
    """The batch sampler's configuration of ``cfg.batch_sampler`` over ``n`` training items (its
    ``ValueError`` names a ``batch_sampler`` key without the ``batch_sampler.`` prefix)."""
    s = cfg.batch_sampler
    q_start, q_end = s.progressive_endpoints()
    return HardnessSamplerConfig(
        batch_size=cfg.batch_size,
        search_space_size=min(n, s.search_space_size or s.search_space_batches * cfg.batch_size),
        q=s.q,
        q_start=q_start,
        q_end=q_end,
        total_epochs=max(1, math.ceil(cfg.steps * cfg.batch_size / n)),
        seed=cfg.seed,
        **derived_kwargs(s, HardnessSamplerConfig),
    )


def build_batch_sampler(
    cfg: TrainConfig, n: int, semantic_ids: np.ndarray | None = None
) -> HardnessBatchSampler:
    """The batch sampler of ``cfg.batch_sampler`` over ``n`` training items (FALCON's policy
    included for the ``falcon`` / ``batch_level`` modes; ``semantic_ids`` for its diagnostics).

    Raises:
        ValueError: fewer training items than ``batch_size`` (named, with the fix).
    """
    if n < cfg.batch_size:
        raise ValueError(
            f"the training data has {n} items (images), fewer than batch_size={cfg.batch_size}; "
            f"use more data or a smaller batch, e.g. --set batch_size={max(2, n)}"
        )
    s = cfg.batch_sampler
    policy = None
    if s.mode in ("falcon", "batch_level"):
        policy = FalconPolicy(
            FalconConfig(instance_level=s.mode == "falcon", **derived_kwargs(s, FalconConfig))
        )
    return HardnessBatchSampler(n, hardness_sampler_config(cfg, n), policy, semantic_ids)


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """open_clip's rule: gains, biases, norms and the logit scale are not weight-decayed."""
    return param.ndim < 2 or any(part in name for part in ("bn", "ln", "bias", "logit_scale"))


def build_optimizer(
    cfg: TrainConfig, named: list[tuple[str, nn.Parameter]], exclude_from_decay: bool = False
) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with momentum 0.9 over the trainable ``named`` parameters.

    ``exclude_from_decay``: no weight decay on gains, biases, norms and the temperature (as
    open_clip fine-tunes CLIP); the DigitScenes recipe decays every parameter (its benchmark's
    numbers were measured so)."""
    o = cfg.optim
    params = [p for _, p in named if p.requires_grad]
    groups: list[dict] = [{"params": params}]
    if exclude_from_decay:
        plain = [p for n, p in named if p.requires_grad and _no_decay(n, p)]
        decayed = [p for n, p in named if p.requires_grad and not _no_decay(n, p)]
        groups = [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=0.9, weight_decay=o.weight_decay)
    return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)


def image_tower_config(model: ModelConfig, image_size: int) -> ImageTowerConfig:
    """The builtin image tower's configuration: ``model``'s tower settings, ``image_size``
    pixels, the tower's own defaults for the rest.

    Example:
        >>> image_tower_config(ModelConfig(image_tower="vit"), 48).arch
        'vit'
    """
    return ImageTowerConfig(image_size=image_size, **derived_kwargs(model, ImageTowerConfig))


def build_crossmodal(
    model: ModelConfig,
    text_tower: TextTower,
    image_tower: nn.Module,
    max_text_len: int,
    mlm_vocab: tuple[int, ...] = (),
) -> CrossModalTransformer:
    """The cross-modal transformer of ``model``: it reads the text tower's input embeddings and
    the image tower's patch tokens (``crossmodal_input: tokens``) or the attention heads' token
    states (``heads``); its MLM head scores ``mlm_vocab`` (``()``: the whole vocabulary)."""
    heads = model.crossmodal_input == "heads"
    return CrossModalTransformer(
        CrossModalConfig(
            text_dim=model.head_width if heads else text_tower.input_embedding_dim,
            image_dim=model.head_width if heads else image_tower.token_dim,
            vocab_size=text_tower.vocab_size,
            max_text_len=max_text_len,
            special_token_ids=text_tower.special_token_ids,
            mlm_vocab=mlm_vocab,
            **derived_kwargs(model, CrossModalConfig),
        )
    )
