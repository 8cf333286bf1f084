"""Compositional probes on real images: (image, true caption, hard negative, kind) rows.

The ARO / SugarCrepe layout (Yuksekgonul et al. 2023, "When and why vision-language models
behave like bags-of-words", §3; Hsieh et al. 2023, "SugarCrepe", §3): a JSON list of rows ::

    [{"image": "images/0.png", "caption": "a red cube left of a blue ball",
      "negative": "a blue cube left of a red ball", "kind": "swap_attributes"}, ...]

``kind`` is optional (default ``"all"``). SugarCrepe's key names (``filename``, ``caption`` /
``pos``, ``negative_caption`` / ``neg``) and ARO's (``image_path``, ``true_caption``,
``false_caption``) are read too, as is SugarCrepe's top level ``{id: row}`` object. Relative
image paths resolve against ``image_root`` or else the JSON's folder. A probe succeeds when
the model scores the caption above the negative
(:func:`hardneg.eval.compositional.compositional_accuracy`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from hardneg.data.images import read_image

__all__ = ["CompositionalProbes", "load_compositional"]

_KEYS: dict[str, tuple[str, ...]] = {
    "image": ("image", "filename", "image_path"),
    "caption": ("caption", "pos", "true_caption"),
    "negative": ("negative", "neg", "negative_caption", "false_caption"),
}


class CompositionalProbes:
    """Loaded probe rows: :attr:`captions`, :attr:`negatives`, :attr:`kinds` and lazy images.

    Attributes:
        paths: image file of each row.
        captions: true caption of each row.
        negatives: hard-negative caption of each row.
        kinds: perturbation kind of each row (``"all"`` when the file gives none).
        image_size: side of the square tensors :meth:`load_image` returns.
    """

    def __init__(
        self,
        paths: list[Path],
        captions: list[str],
        negatives: list[str],
        kinds: list[str],
        image_size: int,
        where: str,
    ) -> None:
        self.paths, self.captions, self.negatives, self.kinds = paths, captions, negatives, kinds
        self.image_size, self.where = image_size, where

    def __len__(self) -> int:
        return len(self.captions)

    def load_image(self, index: int) -> Tensor:
        """Row ``index``'s image, resized and center-cropped to (3, image_size, image_size)."""
        return read_image(self.paths[index], self.image_size, f"{self.where} row {index}")


def _field(row: dict[str, Any], name: str, where: str) -> str:
    key = next((k for k in _KEYS[name] if k in row), None)
    if key is None:
        raise KeyError(
            f"{where} has no {name} key (any of {', '.join(_KEYS[name])}); rows need image, "
            "caption and negative (kind optional)"
        )
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: key {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def load_compositional(
    path: str | os.PathLike, image_root: str | os.PathLike | None, image_size: int
) -> CompositionalProbes:
    """Read a compositional-probe JSON (see the module docstring) and check its image files.

    Args:
        path: the JSON file (a list of rows, or an ``{id: row}`` object).
        image_root: folder relative image paths resolve against (None: the JSON's folder).
        image_size: output side of :meth:`CompositionalProbes.load_image`.

    Raises:
        FileNotFoundError: the JSON, ``image_root`` or an image file (names the row).
        KeyError / ValueError: a row lacks a key or holds a bad value (names row and key).

    Example:
        >>> probes = load_compositional("aro_relation.json", "images/", 224)  # doctest: +SKIP
        >>> probes.captions[0], probes.negatives[0], probes.kinds[0]  # doctest: +SKIP
    """
    path = Path(path)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not path.is_file():
        raise FileNotFoundError(f"compositional probe file {path} does not exist")
    root = path.parent if image_root is None else Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"image_root {root} of {path.name} is not a directory")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    rows = list(rows.values()) if isinstance(rows, dict) else rows
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path} must hold a non-empty list of probe rows")
    paths, captions, negatives, kinds = [], [], [], []
    for number, row in enumerate(rows):
        where = f"{path} row {number}"
        if not isinstance(row, dict):
            raise ValueError(f"{where} is a {type(row).__name__}, not an object")
        image = root / _field(row, "image", where)
        if not os.path.isfile(image):
            raise FileNotFoundError(f"{where}: image file {image} does not exist (root {root})")
        paths.append(image)
        captions.append(_field(row, "caption", where))
        negatives.append(_field(row, "negative", where))
        kind = row.get("kind", "all")
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"{where}: key 'kind' must be a non-empty string, got {kind!r}")
        kinds.append(kind)
    return CompositionalProbes(paths, captions, negatives, kinds, image_size, str(path))
