"""``hardneg train --data SPEC``: parse a data spec, check it cheaply, open the real-data source.

Specs (``DataConfig.dataset``; see ``docs/data.md``):

- ``digitscenes[:PRESET]`` — the built-in benchmark (loaded by the trainer, not here);
- ``karpathy:PATH.json[:train|val|test|restval]`` — COCO / Flickr30k Karpathy JSON, images
  under ``data.images``;
- ``csv:PATH.csv`` / ``csv:PATH.tsv`` — open_clip's CSV layout (``data.csv_img_key`` /
  ``data.csv_caption_key``);
- ``hf:PATH[:SPLIT]`` — a ``datasets`` ``save_to_disk`` folder or an ``imagefolder``.

:func:`check_data_config` runs before any expensive work (no image is opened, no big file
read); :func:`open_source` returns an :class:`~hardneg.data.dataset.ImageCaptionDataset`
with ``negatives`` and ``describe()``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardneg.data.columns import negatives_cell
from hardneg.data.csv_source import CSVImageCaptions, check_csv_columns, csv_separator
from hardneg.data.dataset import ImageCaptionDataset
from hardneg.data.digitscenes import PRESETS
from hardneg.data.hf_source import HFImageCaptions, hf_layout
from hardneg.data.karpathy import KARPATHY_SPLITS, KarpathyDataset

__all__ = [
    "DATA_KINDS",
    "SPEC_FORMS",
    "DataSpec",
    "check_data_config",
    "default_eval_spec",
    "negative_column",
    "open_source",
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


def _check_images_dir(cfg: Any, key: str, spec: DataSpec, required: bool) -> None:
    if cfg.images is None and not required:
        return
    if cfg.images is None or not Path(cfg.images).is_dir():
        got = "is not set" if cfg.images is None else f"= {cfg.images!r} is not a directory"
        raise FileNotFoundError(
            f"data.images {got}; {key}={spec.kind}:{spec.path} needs the folder its image paths "
            "are relative to: pass --images DIR (data.images) with an existing folder"
        )


def _check_source(spec: DataSpec, cfg: Any, key: str) -> None:
    """Cheap checks of one parsed spec against the config (file existence, headers only)."""
    if spec.kind == "digitscenes":
        preset, where = (spec.preset, key) if spec.preset else (cfg.preset, "data.preset")
        if preset not in PRESETS:
            raise ValueError(
                f"{where}: unknown DigitScenes preset {preset!r}; presets: {', '.join(PRESETS)}"
            )
        if key == "data.dataset" and negative_column(cfg.negatives) is not None:
            raise ValueError(
                f"data.negatives={cfg.negatives!r}: digitscenes has no columns (its hard "
                "negatives are built in); use 'perturb' or 'none'"
            )
        return
    if spec.kind == "wds":
        from hardneg.data.wds_source import parse_wds

        parse_wds(f"wds:{spec.path}")  # brace expansion + every shard exists
        if key == "data.dataset" and negative_column(cfg.negatives) is not None:
            raise ValueError(
                f"data.negatives={cfg.negatives!r}: a wds stream has no columns; use 'perturb' "
                "or 'none'"
            )
        return
    path = Path(spec.path)
    if spec.kind == "hf":
        if not path.is_dir():
            raise FileNotFoundError(
                f"{key}: hf source {path} is not a directory; pass a datasets save_to_disk "
                "folder or an imagefolder with metadata.csv / metadata.jsonl"
            )
        try:
            hf_layout(path)
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from err
        return
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}: {spec.kind} file {path} does not exist; pass an existing file in "
            f"{spec.kind}:PATH"
        )
    _check_images_dir(cfg, key, spec, required=spec.kind == "karpathy")
    if spec.kind == "csv":
        check_csv_columns(
            path,
            cfg.csv_img_key,
            cfg.csv_caption_key,
            negative_column(cfg.negatives),
            csv_separator(path),
        )


def check_data_config(cfg: Any) -> DataSpec:
    """Validate a :class:`~hardneg.train.config.DataConfig` before any expensive work.

    Checks that ``data.dataset`` (and ``data.eval_dataset`` if set) parse, their files and
    folders exist (karpathy: ``data.images``), the DigitScenes preset is known, a csv header
    has the configured columns, and ``data.negatives`` is ``perturb``, ``none`` or
    ``column:NAME``. Opens no image and reads no more than a CSV header line.

    Returns:
        The parsed ``data.dataset`` spec.

    Raises:
        ValueError / FileNotFoundError / KeyError: one line naming the key and the fix.

    Example:
        >>> from hardneg.train.config import DataConfig
        >>> check_data_config(DataConfig(dataset="digitscenes:tiny")).preset
        'tiny'
    """
    negative_column(cfg.negatives)
    spec = parse_data_spec(cfg.dataset, "data.dataset")
    _check_source(spec, cfg, "data.dataset")
    if cfg.eval_dataset is not None:
        key = "data.eval_dataset"
        _check_source(parse_data_spec(cfg.eval_dataset, key), cfg, key)
    return spec


def default_eval_spec(cfg: Any) -> str | None:
    """``data.eval_dataset``, or for a karpathy source its ``test`` split; None otherwise.

    Example:
        >>> from hardneg.train.config import DataConfig
        >>> default_eval_spec(DataConfig(dataset="karpathy:coco.json:train"))
        'karpathy:coco.json:test'
    """
    if cfg.eval_dataset is not None:
        return cfg.eval_dataset
    spec = parse_data_spec(cfg.dataset, "data.dataset")
    return f"karpathy:{spec.path}:test" if spec.kind == "karpathy" else None


def _karpathy_negatives(dataset: KarpathyDataset, column: str) -> list[list[str]]:
    """Per image, the hard negatives under key ``column`` of its JSON entry."""
    entries = json.loads(dataset.json_path.read_text())["images"]
    chosen = [entries[position] for position in dataset.entry_positions]
    if not any(column in entry for entry in chosen):
        raise KeyError(
            f"{dataset.json_path}: no image entry has a {column!r} key; fix "
            "data.negatives=column:NAME (a key of each image entry)"
        )
    return [
        negatives_cell(entry.get(column), f"{dataset.json_path} entry #{position}", column)
        for entry, position in zip(chosen, dataset.entry_positions, strict=True)
    ]


def open_source(cfg: Any, image_size: int, spec: str | None = None) -> ImageCaptionDataset:
    """Open a karpathy, csv or hf source as an image–caption dataset.

    Args:
        cfg: the :class:`~hardneg.train.config.DataConfig` (column keys, images, negatives).
        image_size: side of the square images ``load_image`` returns.
        spec: the data spec to open (None: ``cfg.dataset``; e.g. ``cfg.eval_dataset``).

    Returns:
        A dataset with ``captions``, ``semantic_ids``, ``load_image(i)``, ``negatives``
        (per image, the ``column:NAME`` hard negatives, else None) and ``describe()``.

    Raises:
        ValueError: a digitscenes spec (built in: use :func:`hardneg.data.load_digitscenes`)
            or any error of :func:`check_data_config`.

    Example:
        >>> from hardneg.train.config import DataConfig
        >>> cfg = DataConfig(dataset="csv:train.csv", images="images/")
        >>> open_source(cfg, 224).describe()  # doctest: +SKIP
        'csv train.csv: 1000 images, 5000 captions'
    """
    text = cfg.dataset if spec is None else spec
    key = "data.dataset" if text == cfg.dataset else "data.eval_dataset"
    parsed = parse_data_spec(text, key)
    if parsed.kind == "digitscenes":
        raise ValueError(
            f"{key}={text!r}: digitscenes is built in; load it with "
            "hardneg.data.load_digitscenes, open_source reads karpathy / csv / hf sources"
        )
    column = negative_column(cfg.negatives)
    _check_source(parsed, cfg, key)
    if parsed.kind == "karpathy":
        split = parsed.split or "train"
        dataset = KarpathyDataset(parsed.path, cfg.images, split=split, image_size=image_size)
        dataset.negatives = None if column is None else _karpathy_negatives(dataset, column)
        dataset.source = f"karpathy {parsed.path} ({split})"
        return dataset
    if parsed.kind == "csv":
        return CSVImageCaptions(
            parsed.path,
            image_root=cfg.images,
            img_key=cfg.csv_img_key,
            caption_key=cfg.csv_caption_key,
            image_size=image_size,
            negative_key=column,
        )
    return HFImageCaptions(
        parsed.path,
        image_key=cfg.hf_image_key,
        caption_key=cfg.hf_caption_key,
        image_size=image_size,
        negative_key=column,
        split=parsed.split,
    )
