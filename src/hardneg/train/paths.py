"""Every path of a config made absolute, so that a run directory can be used from anywhere.

A run stores its config (``config.json``, the checkpoint's ``config``); ``hardneg eval RUN`` and
a resume read the data, the model and the weights from it. Relative paths would resolve against
whatever directory those commands run in, so they are resolved once, when the run is
configured, against the directory the user typed them in.
"""

from __future__ import annotations

import os
from dataclasses import replace

from hardneg.data.specs import parse_data_spec
from hardneg.train.config import TrainConfig

__all__ = ["absolute_paths"]

_MODEL_KINDS_WITH_PATHS = ("hf_clip",)


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def _absolute_data_spec(spec: str | None) -> str | None:
    if spec is None:
        return None
    parsed = parse_data_spec(spec)
    if parsed.path is None or os.path.isabs(parsed.path):
        return spec
    kind, _, rest = spec.strip().partition(":")
    return f"{kind}:{rest.replace(parsed.path, _absolute(parsed.path), 1)}"


def _absolute_model_spec(spec: str) -> str:
    kind, colon, rest = spec.partition(":")
    is_path = kind in _MODEL_KINDS_WITH_PATHS or rest.endswith(".json")
    if not colon or not is_path or os.path.isabs(rest):
        return spec
    return f"{kind}:{_absolute(rest)}"


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with every file or folder it names made absolute (against the current
    directory): the data specs, the images folder, the cache, a local text model, the model spec
    and its weights, and the run directory.

    Example:
        >>> import os
        >>> cfg = absolute_paths(TrainConfig(out_dir="runs/x"))
        >>> cfg.out_dir == os.path.abspath("runs/x")
        True
    """
    data = replace(
        config.data,
        dataset=_absolute_data_spec(config.data.dataset),
        eval_dataset=_absolute_data_spec(config.data.eval_dataset),
        images=_absolute(config.data.images),
        cache_dir=_absolute(config.data.cache_dir),
        text_model=_absolute(config.data.text_model),
    )
    model = replace(
        config.model,
        spec=_absolute_model_spec(config.model.spec),
        pretrained=_absolute(config.model.pretrained),
    )
    return replace(config, data=data, model=model, out_dir=_absolute(config.out_dir))
