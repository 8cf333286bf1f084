"""Training: :class:`Trainer` (the engine on the recipe a config names), its config
(:class:`~hardneg.train.config.TrainConfig`, :func:`resolve_config`) and :func:`train_and_evaluate`.

The names are imported on first use, so importing one submodule (e.g. the config) does not load
the whole engine.

Example:
    >>> from hardneg.train import Trainer, resolve_config
    >>> cfg = resolve_config("bacl", {"steps": 10})  # doctest: +SKIP
    >>> Trainer(cfg).fit()  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hardneg.train.config import TrainConfig
    from hardneg.train.run import train_and_evaluate
    from hardneg.train.trainer import Trainer
    from hardneg.train.validate import resolve_config, validate_config

_WHERE = {
    "Trainer": "hardneg.train.trainer",
    "TrainConfig": "hardneg.train.config",
    "resolve_config": "hardneg.train.validate",
    "validate_config": "hardneg.train.validate",
    "train_and_evaluate": "hardneg.train.run",
}

__all__ = [
    "TrainConfig",
    "Trainer",
    "resolve_config",
    "train_and_evaluate",
    "validate_config",
]
assert sorted(__all__) == sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'hardneg.train' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
