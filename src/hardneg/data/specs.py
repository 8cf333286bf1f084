"""Data specs (``hardneg train --data SPEC``, ``DataConfig.dataset``): :func:`parse_data_spec`
turns one into a :class:`DataSpec` without touching the disk.

Specs (see ``docs/data.md``):

- ``digitscenes[:PRESET]`` — the built-in benchmark (loaded by the trainer);
- ``karpathy:PATH.json[:train|val|test|restval]`` — COCO / Flickr30k Karpathy JSON, images
  under ``data.images``;
- ``csv:PATH.csv`` / ``csv:PATH.tsv`` — open_clip's CSV layout (``data.csv_img_key`` /
  ``data.csv_caption_key``);
- ``hf:PATH[:SPLIT]`` — a ``datasets`` ``save_to_disk`` folder or an ``imagefolder``;
- ``wds:PATTERN`` — webdataset shards (:mod:`hardneg.data.wds_source`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardneg.data.karpathy import KARPATHY_SPLITS

__all__ = [
    "DATA_KINDS",
    "SPEC_FORMS",
    "DataSpec",
    "default_eval_spec",
    "negative_column",
    "parse_data_spec",
]

DATA_KINDS: tuple[str, ...] = ("digitscenes", "karpathy", "csv", "hf", "wds")
SPEC_FORMS = (
    "digitscenes[:PRESET], karpathy:PATH.json[:train|val|test|restval], csv:PATH.csv, "
    "csv:PATH.tsv, hf:PATH[:SPLIT], wds:PATTERN"
)
_NAME = re.compile(r"[A-Za-z_][\w.-]*")


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec.

    Attributes:
        kind: ``"digitscenes"``, ``"karpathy"``, ``"csv"`` or ``"hf"``.
        path: the file / folder of a karpathy, csv or hf source (None for digitscenes).
        split: the karpathy / hf split named in the spec (None: the source's default).
        preset: the DigitScenes preset named in the spec (None: ``data.preset``).
    """

    kind: str
    path: str | None = None
    split: str | None = None
    preset: str | None = None


def parse_data_spec(spec: str, key: str = "data.dataset") -> DataSpec:
    """Parse ``digitscenes[:PRESET]``, ``karpathy:PATH.json[:SPLIT]``, ``csv:PATH``, ``hf:PATH``.

    Only the first ``:`` separates the kind, and only a trailing ``:SPLIT`` is a split, so
    Windows paths (``karpathy:C:\\coco\\dataset_coco.json:test``) parse. Syntax only: nothing
    is read from disk.

    Raises:
        ValueError: unknown kind, missing or badly suffixed path, unknown karpathy split; the
            message names ``key``, the value and the valid forms.

    Example:
        >>> parse_data_spec("karpathy:data/dataset_coco.json:test")
        DataSpec(kind='karpathy', path='data/dataset_coco.json', split='test', preset=None)
        >>> parse_data_spec("digitscenes:tiny").preset
        'tiny'
    """

    def bad(reason: str) -> ValueError:
        return ValueError(f"{key}={spec!r}: {reason}; valid forms: {SPEC_FORMS}")

    if not isinstance(spec, str) or not spec.strip():
        raise bad("the data spec is empty")
    kind, colon, rest = spec.strip().partition(":")
    if kind not in DATA_KINDS:
        raise bad(f"unknown kind {kind!r} (kinds: {', '.join(DATA_KINDS)})")
    if kind == "digitscenes":
        if colon and not _NAME.fullmatch(rest):
            raise bad(f"{rest!r} is not a DigitScenes preset name")
        return DataSpec(kind, preset=rest or None)
    if not rest:
        raise bad(f"{kind} needs a path after '{kind}:'")
    path, split = rest, None
    head, inner, tail = rest.rpartition(":")
    if kind == "karpathy":
        if inner and tail in KARPATHY_SPLITS:
            path, split = head, tail
        elif inner and head.lower().endswith(".json"):
            raise bad(f"unknown karpathy split {tail!r} (splits: {', '.join(KARPATHY_SPLITS)})")
        if not path.lower().endswith(".json"):
            raise bad("a karpathy source is a .json file")
    elif kind == "hf":
        if inner and len(head) > 1 and _NAME.fullmatch(tail):  # len 1: a drive letter
            path, split = head, tail
    elif kind == "wds":
        return DataSpec(kind, path=rest)  # a brace pattern: checked by hardneg.data.wds_source
    elif not path.lower().endswith((".csv", ".tsv")):
        raise bad("a csv source is a .csv (comma) or .tsv (tab) file")
    return DataSpec(kind, path=path, split=split)


def negative_column(negatives: str) -> str | None:
    """The column of ``data.negatives="column:NAME"`` (None for ``perturb`` / ``none``).

    Raises:
        ValueError: any other value (message names ``data.negatives`` and the valid forms).
    """
    if negatives in ("perturb", "none"):
        return None
    prefix, _, name = str(negatives).partition(":")
    if prefix != "column" or not name.strip():
        raise ValueError(
            f"data.negatives={negatives!r}: must be 'perturb' (rule-based swaps), 'none' or "
            "'column:NAME' (a column of the source holding hard negatives)"
        )
    return name.strip()


def default_eval_spec(cfg: Any) -> str | None:
    """``data.eval_dataset``; else the ``test`` split of a karpathy source, or of an hf
    ``DatasetDict`` saved with one (trained on another split); None otherwise.

    Example:
        >>> from hardneg.train.config import DataConfig
        >>> default_eval_spec(DataConfig(dataset="karpathy:coco.json:train"))
        'karpathy:coco.json:test'
    """
    if cfg.eval_dataset is not None:
        return cfg.eval_dataset
    spec = parse_data_spec(cfg.dataset, "data.dataset")
    if spec.kind == "karpathy":
        return f"karpathy:{spec.path}:test"
    if spec.kind == "hf" and spec.split != "test" and saved_splits(spec.path) >= {"test"}:
        return f"hf:{spec.path}:test"
    return None


def saved_splits(path: str | None) -> set[str]:
    """The split names of an hf ``save_to_disk`` DatasetDict at ``path`` (empty otherwise)."""
    index = Path(path or "", "dataset_dict.json")
    if not index.is_file():
        return set()
    try:
        return set(json.loads(index.read_text()).get("splits", []))
    except (OSError, ValueError):
        return set()
