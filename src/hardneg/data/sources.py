"""Real-data sources: check a run's data config cheaply (:func:`check_data_config`) and open a
karpathy, csv or hf source (:func:`open_source`); the specs are parsed by
:mod:`hardneg.data.specs`.

:func:`check_data_config` runs before any expensive work (no image is opened, no big file
read); :func:`open_source` returns an :class:`~hardneg.data.dataset.ImageCaptionDataset`
with ``negatives`` and ``describe()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hardneg.data.columns import negatives_cell
from hardneg.data.csv_source import CSVImageCaptions, check_csv_columns, csv_separator
from hardneg.data.dataset import ImageCaptionDataset
from hardneg.data.digitscenes import PRESETS
from hardneg.data.hf_source import HFImageCaptions, hf_layout
from hardneg.data.karpathy import KarpathyDataset, split_counts
from hardneg.data.specs import DataSpec, negative_column, parse_data_spec

__all__ = ["check_data_config", "open_source"]


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


def check_karpathy_test_split(path: str) -> None:
    """ValueError unless the Karpathy JSON holds the ``test`` split evaluated by default (a run
    would otherwise train fully, then fail)."""
    splits = sorted(split_counts(path))
    if "test" not in splits:
        raise ValueError(
            f"{path} has no 'test' split to evaluate on after training (splits: "
            f"{', '.join(splits) or 'none'}); set data.eval_dataset, e.g. "
            f"--set data.eval_dataset=karpathy:{path}:{splits[0] if splits else 'val'}"
        )


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
