"""Check a whole :class:`~hardneg.train.config.TrainConfig` before any data or model is built.

Each value's type, choices and range are declared once, with its field
(:func:`~hardneg.train.settings.setting`), and checked by
:func:`~hardneg.train.settings.check_settings`; here: that, then combinations of settings (the
models' own configurations built from them included), then the data spec and the model spec (no
file is read beyond a stat, nothing is downloaded or encoded). Every problem is a one-line
``ValueError`` (``FileNotFoundError`` for a missing path) naming the dotted key and the fix, so
``hardneg train`` fails within seconds instead of after loading data.

Example:
    >>> cfg = resolve_config("bacl", {"optim": {"lr": "3e-4"}})
    >>> cfg.optim.lr, cfg.miner.name
    (0.0003, 'bns')
    >>> resolve_config("infonce", {"steps": 0})
    Traceback (most recent call last):
    ValueError: steps must be ≥ 1, got 0; e.g. --set steps=300
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any

from hardneg.data.digitscenes.captions import PERTURBATIONS
from hardneg.data.sources import check_data_config, check_karpathy_test_split
from hardneg.losses.infonce import InfoNCELoss
from hardneg.miners import BNSConfig
from hardneg.models.crossmodal_config import CrossModalConfig
from hardneg.models.heads import AttentionPoolHead
from hardneg.models.image import ImageTowerConfig
from hardneg.models.specs import parse_model_spec
from hardneg.train.builders import hardness_sampler_config
from hardneg.train.config import (
    ModelConfig,
    TrainConfig,
    config_from_dict,
    merge,
)
from hardneg.train.methods import LOSSES, METHODS, method_overrides
from hardneg.train.settings import (
    check_settings,
    derived_fields,
    derived_kwargs,
)

__all__ = ["INFONCE_FORM_LOSSES", "resolve_config", "validate_config"]

#: Loss names whose class is an :class:`~hardneg.losses.InfoNCELoss` (a softmax denominator
#: that ``miner.denominator='weighted'`` can reweight).
INFONCE_FORM_LOSSES: tuple[str, ...] = tuple(
    sorted(name for name, cls in LOSSES.items() if issubclass(cls, InfoNCELoss))
)
# attention heads of the pooling head the trainer builds (its default): widths must divide by it
_POOL_HEADS: int = inspect.signature(AttentionPoolHead).parameters["num_heads"].default
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_config(method: str, values: dict[str, Any] | None = None) -> TrainConfig:
    """The method's preset, then ``values`` on top; type-checked and validated.

    Example:
        >>> resolve_config("falcon", {"steps": 10}).batch_sampler.mode
        'falcon'
    """
    values = values or {}
    method_overrides(method)  # unknown method: the list of methods, before any other check
    config = config_from_dict(merge(method_overrides(method), {**values, "method": method}))
    validate_config(config)
    return config


def _check_run(cfg: TrainConfig) -> None:
    if not _DEVICE.fullmatch(cfg.device):
        raise ValueError(f"device={cfg.device!r} is unknown; use auto, cpu, cuda or cuda:N")
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device={cfg.device!r} but CUDA is not available; use device=cpu")
    if not cfg.out_dir:
        raise ValueError("out_dir is empty; e.g. --out runs/train")


def _check_optim(cfg: TrainConfig) -> None:
    o = cfg.optim
    if cfg.batch_size % o.grad_accum:
        raise ValueError(
            f"batch_size={cfg.batch_size} is not divisible by optim.grad_accum={o.grad_accum}"
        )
    if cfg.batch_size // o.grad_accum < 2:
        raise ValueError(
            f"batch_size={cfg.batch_size} / optim.grad_accum={o.grad_accum} leaves micro-batches "
            "of 1 (no in-batch negative); use a smaller optim.grad_accum"
        )


def _check_model(cfg: TrainConfig) -> None:
    m = cfg.model
    for target in (ImageTowerConfig, CrossModalConfig):  # their own checks of what model sets
        try:
            target(**derived_kwargs(m, target))
        except ValueError as err:
            given = [
                f"model.{own}={getattr(m, own)}"
                for own in derived_fields(ModelConfig, target).values()
            ]
            raise ValueError(f"{', '.join(given)} give a bad {target.__name__}: {err}") from None
    if m.head == "attention" and m.head_width % _POOL_HEADS:
        raise ValueError(
            f"model.head_width={m.head_width} must be divisible by the attention head's "
            f"{_POOL_HEADS} heads; e.g. --set model.head_width=128"
        )
    if m.crossmodal_input == "heads" and m.head != "attention":
        raise ValueError(
            "model.crossmodal_input=heads reads the attention heads' token states, but "
            f"model.head={m.head!r}; use --set model.head=attention (or crossmodal_input=tokens)"
        )
    if m.spec == "builtin" and m.freeze_dual_encoder and not cfg.pretrain.steps:
        raise ValueError(
            "model.freeze_dual_encoder needs pretrain.steps > 0 (a frozen dual encoder that was "
            "never trained would stay random)"
        )
    if m.spec == "builtin" and m.freeze_image_tower and not cfg.pretrain.steps:
        raise ValueError(
            "model.freeze_image_tower needs pretrain.steps > 0 (a frozen tower that was never "
            "trained would stay random)"
        )


def _check_data(cfg: TrainConfig) -> None:
    d = cfg.data
    if not d.hard_negative_kinds:
        raise ValueError(
            "data.hard_negative_kinds is empty; name at least one of "
            f"{list(PERTURBATIONS)}, e.g. [swap_colours,swap_digits,flip_relation]"
        )
    partial = d.false_negative_percent > 0 and d.false_negative_source == "partial"
    if partial and d.positives == "semantic":
        raise ValueError(
            "data.positives='semantic' cannot mark partial captions' matches as positives; use "
            "data.positives='scene' with data.false_negative_percent > 0"
        )
    if d.text_model is not None:
        from pathlib import Path

        from hardneg.models.minilm import _check_checkpoint_dir

        _check_checkpoint_dir(Path(d.text_model), "data.text_model")


def _check_losses(cfg: TrainConfig) -> None:
    try:  # cheap (a temperature parameter): bad kwargs fail here, not after data loading
        LOSSES[cfg.loss.name](**cfg.loss.kwargs)
    except TypeError as err:
        raise ValueError(f"loss.kwargs for loss.name={cfg.loss.name!r}: {err}") from None
    except ValueError as err:
        raise ValueError(f"loss.kwargs: {err}") from None


def _check_miner(cfg: TrainConfig) -> None:
    m = cfg.miner
    try:  # the miner's own checks of the values miner.* sets
        BNSConfig(**derived_kwargs(m, BNSConfig))
    except ValueError as err:
        raise ValueError(str(err).replace("BNSConfig.", "miner.")) from None
    if m.name != "bns":
        return
    # a batch with fewer than k negatives per anchor is mined with k clipped (one warning)
    if cfg.loss.kwargs.get("chunk_size"):
        raise ValueError("loss.kwargs.chunk_size cannot be combined with the BNS miner")
    if m.denominator == "weighted" and cfg.loss.name not in INFONCE_FORM_LOSSES:
        raise ValueError(
            f"miner.denominator='weighted' needs an InfoNCE-form loss "
            f"({', '.join(INFONCE_FORM_LOSSES)}), got loss.name={cfg.loss.name!r}; use "
            "denominator='selected'"
        )


def _check_rerank(cfg: TrainConfig) -> None:
    if not cfg.crossmodal.rerank_weight:
        return
    if cfg.miner.name != "bns":
        raise ValueError(
            "crossmodal.rerank_weight scores each anchor's positive against the miner's picks; "
            "set miner.name=bns (miner.selection=uniform for uniformly random picks)"
        )
    if cfg.optim.gradcache_chunk:
        raise ValueError(
            "crossmodal.rerank_weight cannot be combined with optim.gradcache_chunk (the "
            "re-ranking loss is not chunked); set optim.gradcache_chunk=0"
        )
    if cfg.data.hard_negative_captions:
        raise ValueError(
            "crossmodal.rerank_weight scores the dataset's captions only; set "
            "data.hard_negative_captions=false"
        )


def _check_sampler(cfg: TrainConfig) -> None:
    s = cfg.batch_sampler
    try:  # the sampler's own checks (progressive direction, search space ≥ a batch)
        hardness_sampler_config(cfg, sys.maxsize)
    except ValueError as err:
        raise ValueError(f"sampler.{err}") from None
    if s.mode in ("falcon", "batch_level") and cfg.crossmodal.mlm_weight <= 0:
        raise ValueError("FALCON's reward is the MLM-loss gain: set crossmodal.mlm_weight > 0")


def _check_specs(cfg: TrainConfig) -> None:
    """The data and model specs (paths exist, names parse); nothing is loaded. The
    pre-training stage and the false-negative knob belong to the DigitScenes recipe
    (DigitScenes data with the builtin model)."""
    data = check_data_config(cfg.data)
    if cfg.data.eval_dataset is None and data.kind == "karpathy" and data.path is not None:
        check_karpathy_test_split(data.path)  # evaluated after training: check it now
    model = parse_model_spec(cfg.model.spec, cfg.model.pretrained, key="model.spec")
    if data.kind == "wds" and cfg.batch_sampler.mode != "random":
        raise ValueError(
            f"batch_sampler.mode={cfg.batch_sampler.mode!r} needs random access to the items "
            "(its search spaces index the whole dataset); a wds stream has none: use a map-style "
            "source "
            "(karpathy / csv / hf) or batch_sampler.mode=random"
        )
    if data.kind == "digitscenes" and model.kind == "builtin":
        return
    if cfg.data.hard_negative_captions and cfg.data.negatives == "none":
        raise ValueError(
            f"data.negatives='none' gives no hard-negative captions but method {cfg.method!r} "
            "sets data.hard_negative_captions=true (NegCLIP extras); use data.negatives=perturb "
            "or column:NAME"
        )
    if cfg.pretrain.steps:
        raise ValueError(
            f"pretrain.steps={cfg.pretrain.steps} with data.dataset={cfg.data.dataset!r}: the "
            "pre-training stage is the DigitScenes recipe's; use --set pretrain.steps=0"
        )
    if cfg.data.false_negative_percent:
        raise ValueError(
            "data.false_negative_percent needs DigitScenes with model.spec=builtin (exact "
            "semantics); use --set data.false_negative_percent=0"
        )
    if cfg.model.freeze_dual_encoder:
        raise ValueError(
            "model.freeze_dual_encoder (BACL's re-ranker on a frozen dual encoder) needs "
            "DigitScenes with model.spec=builtin; on your own data use --method bacl_dual"
        )
    if cfg.model.crossmodal_input == "heads":
        dual = f"{cfg.method}_dual"
        fix = (
            f"use --method {dual} (hardneg's dual-encoder variant)"
            if dual in METHODS
            else "use --set model.crossmodal_input=tokens"
        )
        raise ValueError(
            "model.crossmodal_input=heads (ALBEF's fusion over the attention heads, which "
            f"method {cfg.method!r} trains) needs DigitScenes with model.spec=builtin; {fix}"
        )
    if cfg.model.mlm_vocab == "corpus":
        raise ValueError(
            "model.mlm_vocab='corpus' needs DigitScenes with model.spec=builtin (its captions "
            "are known before training); use --set model.mlm_vocab=full"
        )


def validate_config(cfg: TrainConfig) -> None:
    """Reject a bad configuration with a one-line message naming the key and the fix.

    Cheap (no data, no model weights): call it before building anything. Raises
    ``ValueError`` (``FileNotFoundError`` for a missing path of the data or model spec).
    """
    method_overrides(cfg.method)
    check_settings(cfg)
    for check in (
        _check_run,
        _check_optim,
        _check_model,
        _check_data,
        _check_losses,
        _check_miner,
        _check_rerank,
        _check_sampler,
        _check_specs,
    ):
        check(cfg)
