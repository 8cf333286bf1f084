"""Check a whole :class:`~hardneg.train.config.TrainConfig` before any data or model is built.

Types are checked when the config is built (:func:`~hardneg.train.config.config_from_dict`);
here: choices, numeric ranges and combinations, then the data spec and the model spec (no
file is read beyond a stat, nothing is downloaded or encoded). Every problem is a one-line
``ValueError`` (``FileNotFoundError`` for a missing path) naming the dotted key and the fix,
so ``hardneg train`` fails within seconds instead of after loading data.

Example:
    >>> cfg = resolve_config("bacl", {"optim": {"lr": "3e-4"}})
    >>> cfg.optim.lr, cfg.selector.name
    (0.0003, 'bns')
    >>> resolve_config("infonce", {"steps": 0})
    Traceback (most recent call last):
    ValueError: steps must be ≥ 1, got 0; e.g. --set steps=300
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from hardneg.data.digitscenes import PRESETS
from hardneg.data.digitscenes.captions import PERTURBATIONS
from hardneg.data.digitscenes.false_negatives import FALSE_NEGATIVE_SOURCES
from hardneg.data.sources import check_data_config
from hardneg.losses.infonce import InfoNCELoss
from hardneg.miners import CURRICULUM_PRESETS
from hardneg.models.heads import AttentionPoolHead
from hardneg.models.image import _ARCHS as IMAGE_ARCHS
from hardneg.models.image import ImageTowerConfig
from hardneg.models.specs import parse_model_spec
from hardneg.samplers import MODES
from hardneg.samplers.batch_config import PROGRESSIVE_DEFAULTS
from hardneg.train.config import TrainConfig, config_from_dict, merge
from hardneg.train.methods import LOSSES, method_overrides

__all__ = ["INFONCE_FORM_LOSSES", "resolve_config", "validate_config"]

#: Loss names whose class is an :class:`~hardneg.losses.InfoNCELoss` (a softmax denominator
#: that ``selector.denominator='weighted'`` can reweight).
INFONCE_FORM_LOSSES: tuple[str, ...] = tuple(
    sorted(name for name, cls in LOSSES.items() if issubclass(cls, InfoNCELoss))
)
_HEADS = ("linear", "attention")
# attention heads the trainer builds with (the defaults): widths must divide by them
_TOWER_HEADS: int = ImageTowerConfig.num_heads
_POOL_HEADS: int = inspect.signature(AttentionPoolHead).parameters["num_heads"].default
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_config(method: str, values: dict[str, Any] | None = None) -> TrainConfig:
    """The method's preset, then ``values`` on top; type-checked and validated.

    Example:
        >>> resolve_config("falcon", {"steps": 10}).sampler.mode
        'falcon'
    """
    values = values or {}
    method_overrides(method)  # unknown method: the list of methods, before any other check
    config = config_from_dict(merge(method_overrides(method), {**values, "method": method}))
    validate_config(config)
    return config


def _range(
    key: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    example: Any = None,
) -> None:
    """``low ≤ value ≤ high`` (``<`` on an open end), or a ``ValueError`` naming ``key``."""
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not (too_low or too_high):
        return
    if high is None:
        want = f"{'>' if low_open else '≥'} {low:g}"
    elif low is None:
        want = f"{'<' if high_open else '≤'} {high:g}"
    else:
        want = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    fix = f"; e.g. --set {key}={example}" if example is not None else ""
    raise ValueError(f"{key} must be {want}, got {value}{fix}")


def _choice(key: str, value: str, choices: Any) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is unknown; choose one of {sorted(choices)}")


def _check_run(cfg: TrainConfig) -> None:
    _range("steps", cfg.steps, 1, example=300)
    _range("batch_size", cfg.batch_size, 2, example=128)
    _range("log_every", cfg.log_every, 1, example=10)
    _range("checkpoint_every", cfg.checkpoint_every, 0, example="100 (0 = only at the end)")
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
    _choice("optim.name", o.name, ("adamw", "sgd"))
    _range("optim.lr", o.lr, 0, example="3e-4")  # 0: no update (a dry run)
    _range("optim.weight_decay", o.weight_decay, 0, example=0.05)
    _range("optim.warmup_steps", o.warmup_steps, 0, example=20)
    _range("optim.grad_accum", o.grad_accum, 1, example=1)
    _range("optim.gradcache_chunk", o.gradcache_chunk, 0, example="256 (0 = off)")
    if not o.max_grad_norm > 0:
        raise ValueError(
            f"optim.max_grad_norm must be > 0 (gradients are clipped to that norm), got "
            f"{o.max_grad_norm}; use a large value such as 1e9 to disable clipping"
        )
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
    if m.image_tower not in IMAGE_ARCHS:
        raise ValueError(
            f"model.image_tower={m.image_tower!r} is unknown; choose one of {sorted(IMAGE_ARCHS)} "
            "(the builtin towers; a CLIP checkpoint goes in --model open_clip:NAME or "
            "hf_clip:DIR)"
        )
    _choice("model.head", m.head, _HEADS)
    _choice("model.mlm_vocab", m.mlm_vocab, ("full", "corpus"))
    for name in (
        "image_width",
        "embed_dim",
        "head_width",
        "head_layers",
        "crossmodal_dim",
        "crossmodal_layers",
        "crossmodal_heads",
    ):
        _range(f"model.{name}", getattr(m, name), 1)
    if m.image_width % _TOWER_HEADS:
        raise ValueError(
            f"model.image_width={m.image_width} must be divisible by the image tower's "
            f"{_TOWER_HEADS} attention heads; e.g. --set model.image_width=128"
        )
    if m.head == "attention" and m.head_width % _POOL_HEADS:
        raise ValueError(
            f"model.head_width={m.head_width} must be divisible by the attention head's "
            f"{_POOL_HEADS} heads; e.g. --set model.head_width=128"
        )
    if m.crossmodal_dim % m.crossmodal_heads:
        raise ValueError(
            f"model.crossmodal_dim={m.crossmodal_dim} is not divisible by "
            f"model.crossmodal_heads={m.crossmodal_heads}; e.g. --set model.crossmodal_heads=4"
        )
    _range("model.dropout", m.dropout, 0, 1, high_open=True, example=0.1)
    builtin = m.spec == "builtin"
    if not builtin and cfg.pretrain.steps > 0:
        raise ValueError(
            f"pretrain.steps={cfg.pretrain.steps} with model.spec={m.spec!r}: the pre-training "
            "stage is the DigitScenes recipe's (builtin towers); use --set pretrain.steps=0"
        )
    if builtin and m.freeze_image_tower and not cfg.pretrain.steps:
        raise ValueError(
            "model.freeze_image_tower needs pretrain.steps > 0 (a frozen tower that was never "
            "trained would stay random)"
        )


def _check_data(cfg: TrainConfig) -> None:
    d = cfg.data
    _choice("data.preset", d.preset, PRESETS)
    _choice("data.positives", d.positives, ("scene", "semantic"))
    _range("data.max_text_len", d.max_text_len, 2, example=32)
    _check_kinds("data.hard_negative_kinds", d.hard_negative_kinds)
    if not d.hard_negative_kinds:
        raise ValueError(
            "data.hard_negative_kinds is empty; name at least one of "
            f"{list(PERTURBATIONS)}, e.g. [swap_colours,swap_digits,flip_relation]"
        )
    fn_percent = d.false_negative_percent
    if not 0.0 <= fn_percent < 100.0:
        raise ValueError(
            f"data.false_negative_percent must be a percentage in [0, 100) (1.0 = 1 % of the "
            f"in-batch pairs), got {fn_percent}"
        )
    _choice("data.false_negative_source", d.false_negative_source, FALSE_NEGATIVE_SOURCES)
    if isinstance(d.repeated_configs, bool) or not (
        isinstance(d.repeated_configs, int) and d.repeated_configs >= 1
    ):
        raise ValueError(f"data.repeated_configs must be an int ≥ 1, got {d.repeated_configs!r}")
    if fn_percent > 0 and d.positives == "semantic" and d.false_negative_source == "partial":
        raise ValueError(
            "data.positives='semantic' cannot mark partial captions' matches as positives; use "
            "data.positives='scene' with data.false_negative_percent > 0"
        )
    if fn_percent > 0 and d.dataset.split(":", 1)[0] != "digitscenes":
        raise ValueError(
            f"data.false_negative_percent={fn_percent} needs DigitScenes' exact semantics, but "
            f"data.dataset={d.dataset!r}; use --set data.false_negative_percent=0"
        )
    if d.text_model is not None:
        from pathlib import Path

        from hardneg.models.minilm import _check_checkpoint_dir

        _check_checkpoint_dir(Path(d.text_model), "data.text_model")


def _check_losses(cfg: TrainConfig) -> None:
    _choice("loss.name", cfg.loss.name, LOSSES)
    try:  # cheap (a temperature parameter): bad kwargs fail here, not after data loading
        LOSSES[cfg.loss.name](**cfg.loss.kwargs)
    except TypeError as err:
        raise ValueError(f"loss.kwargs for loss.name={cfg.loss.name!r}: {err}") from None
    except ValueError as err:
        raise ValueError(f"loss.kwargs: {err}") from None
    a = cfg.aux
    for name in ("cla_weight", "itm_weight", "mlm_weight"):
        if getattr(a, name) < 0:
            raise ValueError(f"aux.{name} must be ≥ 0 (a loss weight), got {getattr(a, name)}")
    _range("aux.cla_rho", a.cla_rho, 0, 1, low_open=True, example=0.1)
    _range("aux.cla_beta", a.cla_beta, 0, example=1.0)


def _check_selector(cfg: TrainConfig) -> None:
    s = cfg.selector
    _choice("selector.name", s.name, ("none", "bns"))
    _choice("selector.denominator", s.denominator, ("selected", "weighted"))
    _choice("selector.curriculum", s.curriculum, CURRICULUM_PRESETS)
    _range("selector.k", s.k, 1, example=16)
    _range("selector.tau_start", s.tau_start, 0, low_open=True, example=1.0)
    _range("selector.tau_end", s.tau_end, 0, low_open=True, example=0.1)
    if s.tau_end > s.tau_start:
        raise ValueError(
            f"selector.tau_end={s.tau_end} must be ≤ selector.tau_start={s.tau_start} (the "
            "Gumbel temperature anneals down); swap them"
        )
    _range("selector.entropy_weight", s.entropy_weight, 0, example=0.01)
    _range("selector.lr", s.lr, 0, low_open=True, example="1e-3")
    if s.name != "bns":
        return
    micro = cfg.batch_size // cfg.optim.grad_accum
    if not 1 <= s.k <= micro - 1:
        raise ValueError(
            f"selector.k={s.k} but each anchor has at most {micro - 1} in-batch "
            f"negatives (batch {micro}); use k between 1 and {micro - 1}"
        )
    if cfg.loss.kwargs.get("chunk_size"):
        raise ValueError("loss.kwargs.chunk_size cannot be combined with the BNS selector")
    if s.denominator == "weighted" and cfg.loss.name not in INFONCE_FORM_LOSSES:
        raise ValueError(
            f"selector.denominator='weighted' needs an InfoNCE-form loss "
            f"({', '.join(INFONCE_FORM_LOSSES)}), got loss.name={cfg.loss.name!r}; use "
            "denominator='selected'"
        )


def _check_sampler(cfg: TrainConfig) -> None:
    s = cfg.sampler
    _choice("sampler.mode", s.mode, MODES)
    for name in ("q", "q_start", "q_end"):
        _range(f"sampler.{name}", getattr(s, name), 0, 1, example=0.5)
    if s.mode in PROGRESSIVE_DEFAULTS:
        given = s.progressive_endpoints()
        start, end = (d if g is None else g for g, d in zip(given, PROGRESSIVE_DEFAULTS[s.mode]))
        hardening = s.mode == "progressive_hardening"
        if (end >= start) != hardening:
            raise ValueError(
                f"sampler.mode={s.mode!r} needs sampler.q_end {'≥' if hardening else '≤'} "
                f"sampler.q_start, got {start} → {end}; swap them or change the mode"
            )
    _range("sampler.search_space_batches", s.search_space_batches, 1, example=8)
    if s.search_space_size is not None and s.search_space_size < cfg.batch_size:
        raise ValueError(
            f"sampler.search_space_size={s.search_space_size} is smaller than batch_size="
            f"{cfg.batch_size}; use at least one batch, or null (search_space_batches × B)"
        )
    _range("sampler.falcon_m", s.falcon_m, 2, example=32)
    _range("sampler.falcon_lr", s.falcon_lr, 0, low_open=True, example="1e-2")
    _range("sampler.falcon_update_interval", s.falcon_update_interval, 1, example=40)
    _range("sampler.falcon_entropy_weight", s.falcon_entropy_weight, 0, example=0.01)
    if s.mode in ("falcon", "batch_level") and cfg.aux.mlm_weight <= 0:
        raise ValueError("FALCON's reward is the MLM-loss gain: set aux.mlm_weight > 0")


def _check_pretrain(cfg: TrainConfig) -> None:
    p = cfg.pretrain
    _range("pretrain.steps", p.steps, 0, example="0 (no stage)")
    _range("pretrain.batch_size", p.batch_size, 2, example=128)
    _range("pretrain.lr", p.lr, 0, low_open=True, example="2e-3")
    _range("pretrain.object_loss_weight", p.object_loss_weight, 0, example="1.0 (0 = off)")
    _check_kinds("pretrain.negative_kinds", p.negative_kinds)


def _check_kinds(key: str, kinds: list[str]) -> None:
    bad_kinds = sorted(set(kinds) - set(PERTURBATIONS))
    if bad_kinds:
        raise ValueError(f"{key} has unknown kinds {bad_kinds}; choose from {PERTURBATIONS}")


def _check_specs(cfg: TrainConfig) -> None:
    """The data and model specs (paths exist, names parse); nothing is loaded. The
    pre-training stage and the false-negative knob belong to the DigitScenes recipe
    (DigitScenes data with the builtin model)."""
    data = check_data_config(cfg.data)
    model = parse_model_spec(cfg.model.spec, cfg.model.pretrained, key="model.spec")
    _range("data.workers", cfg.data.workers, 0, example=4)
    if data.kind == "wds" and cfg.sampler.mode != "random":
        raise ValueError(
            f"sampler.mode={cfg.sampler.mode!r} needs random access to the items (its search "
            "spaces index the whole dataset); a wds stream has none: use a map-style source "
            "(karpathy / csv / hf) or sampler.mode=random"
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
    for check in (
        _check_run,
        _check_optim,
        _check_model,
        _check_data,
        _check_losses,
        _check_selector,
        _check_sampler,
        _check_pretrain,
        _check_specs,
    ):
        check(cfg)
