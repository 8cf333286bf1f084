"""A Hugging Face ``datasets`` table on disk as an image–caption dataset (nothing downloaded).

Two layouts are read (see ``docs/data.md``):

- a ``save_to_disk`` directory of a ``Dataset`` or ``DatasetDict`` with an image column
  (``datasets.Image`` feature, or a string column of file paths) and a caption column;
- an ``imagefolder`` directory: image files and a ``metadata.csv`` / ``metadata.jsonl`` whose
  ``file_name`` column names them (loaded with the packaged ``imagefolder`` builder, offline).

A caption cell holds a string or a list of strings. Rows are grouped into one item per image
when the table says which file a row shows: a path column (``file_name``, ``filename``,
``filepath``, ``image_path``, ``path``) or images stored as file references (``imagefolder``);
rows with embedded image bytes are grouped when the bytes are identical (a table of one row per
caption), as otherwise an image would be its own in-batch negative. Images are decoded lazily,
in :meth:`HFImageCaptions.load_image`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from hardneg.data.columns import caption_cell, group_rows, negatives_cell
from hardneg.data.dataset import ImageCaptionDataset
from hardneg.data.images import read_image

__all__ = ["CAPTION_COLUMNS", "PATH_COLUMNS", "HFImageCaptions", "hf_layout"]

logger = logging.getLogger(__name__)

PATH_COLUMNS: tuple[str, ...] = ("file_name", "filename", "filepath", "image_path", "path")
#: caption column names tried, in this order, when none is given
CAPTION_COLUMNS: tuple[str, ...] = (
    "caption",
    "captions",
    "text",
    "sentence",
    "sentences",
    "title",
    "alt_text",
)
_SAVED_MARKERS = ("dataset_dict.json", "state.json")
_METADATA = ("metadata.csv", "metadata.jsonl")


def hf_layout(path: str | os.PathLike) -> str:
    """``"saved"`` (a ``save_to_disk`` directory) or ``"imagefolder"``; cheap file checks only.

    Raises:
        FileNotFoundError: ``path`` is not a directory.
        ValueError: it is neither layout (message says what each needs).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"hf source {path} is not a directory; pass a datasets save_to_disk folder or an "
            "imagefolder with metadata.csv / metadata.jsonl"
        )
    if any((path / marker).is_file() for marker in _SAVED_MARKERS):
        return "saved"
    patterns = [*_METADATA, *(f"*/{name}" for name in _METADATA)]  # top level or split folders
    if any(next(path.glob(pattern), None) is not None for pattern in patterns):
        return "imagefolder"
    raise ValueError(
        f"hf source {path} is neither a datasets save_to_disk folder (no dataset_dict.json / "
        "state.json) nor an imagefolder (no metadata.csv / metadata.jsonl); save it with "
        "Dataset.save_to_disk or add a metadata file with a file_name column"
    )


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as err:  # an optional dependency
        raise ImportError("hf sources need the `datasets` package; pip install datasets") from err
    return datasets


def _pick_split(table: Any, split: str | None, path: Path) -> Any:
    """A ``Dataset`` out of a loaded ``Dataset`` / ``DatasetDict``."""
    if not hasattr(table, "keys"):  # a single Dataset
        if split is not None:
            raise ValueError(
                f"hf source {path} is a single Dataset without splits; drop ':{split}' from "
                "the spec"
            )
        return table
    names = list(table.keys())
    if split is None:
        split = "train" if "train" in names else names[0] if len(names) == 1 else None
    if split not in names:
        wanted = "no split given" if split is None else f"split {split!r}"
        raise ValueError(
            f"hf source {path}: {wanted}, and the splits are {', '.join(names)}; write "
            "hf:PATH:SPLIT"
        )
    return table[split]


def _caption_column(table: Any, path: Path) -> str:
    """The first of :data:`CAPTION_COLUMNS` in ``table`` (logged); KeyError naming the fix."""
    found = next((name for name in CAPTION_COLUMNS if name in table.column_names), None)
    if found is None:
        raise KeyError(
            f"hf source {path} has none of the usual caption columns {list(CAPTION_COLUMNS)} "
            f"(columns: {', '.join(table.column_names)}); name it with --hf-caption-key COLUMN "
            "(data.hf_caption_key)"
        )
    logger.warning("hf source %s: captions from column %r (set data.hf_caption_key)", path, found)
    return found


def _pylist(table: Any, key: str) -> list[Any]:
    """One column as a Python list (through Arrow: images are not decoded)."""
    return table.select_columns([key]).with_format("arrow")[:].column(key).to_pylist()


class HFImageCaptions(ImageCaptionDataset):
    """Images and captions of a ``datasets`` table saved on disk (see the module docstring).

    Args:
        path: a ``save_to_disk`` directory or an ``imagefolder`` directory.
        image_key: image column (``datasets.Image`` or file-path strings, relative ones
            resolved against ``path``).
        caption_key: caption column (a string or a list of strings per row); None: the first
            of :data:`CAPTION_COLUMNS` the table has (logged).
        image_size: output side (short side resized, then center crop).
        negative_key: optional column of hard negatives (``|``-separated string or a list);
            sets :attr:`negatives` (None without it).
        split: the split of a ``DatasetDict`` (None: ``"train"``, or the only split).

    Raises:
        FileNotFoundError / ValueError: not a directory / neither layout, unknown split, an
            empty caption.
        KeyError: a column is missing (message names it, the columns and the flag).

    Example:
        >>> ds = HFImageCaptions("my_saved_dataset", image_size=224)  # doctest: +SKIP
        >>> ds.describe()  # doctest: +SKIP
        'hf my_saved_dataset (train): 500 images, 500 captions'
    """

    def __init__(
        self,
        path: str | os.PathLike,
        image_key: str = "image",
        caption_key: str | None = None,
        image_size: int = 224,
        negative_key: str | None = None,
        split: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        path = Path(path)
        layout = hf_layout(path)
        datasets = _import_datasets()
        if layout == "saved":
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        table = _pick_split(loaded, split, path)
        caption_key = caption_key or _caption_column(table, path)
        self._check_columns(table, path, image_key, caption_key, negative_key)
        feature = table.features[image_key]
        self._embedded = isinstance(feature, datasets.Image)
        if self._embedded:
            table = table.cast_column(image_key, datasets.Image(decode=False))
        where = f"hf source {path}"
        captions = [
            caption_cell(cell, f"{where} row {row}", caption_key)
            for row, cell in enumerate(_pylist(table, caption_key))
        ]
        negatives = None
        if negative_key is not None:
            negatives = [
                negatives_cell(cell, f"{where} row {row}", negative_key)
                for row, cell in enumerate(_pylist(table, negative_key))
            ]
        grouped = group_rows(self._group_keys(table, image_key), captions, negatives)
        self.path, self.image_key, self.image_size, self._table = path, image_key, image_size, table
        self.rows = [rows[0] for rows in grouped.rows]
        self.captions, self.negatives = grouped.captions, grouped.negatives
        self.semantic_ids = np.arange(len(self.rows), dtype=np.int64)
        self.source = f"hf {path}" + (f" ({table.split})" if table.split else "")

    @staticmethod
    def _check_columns(
        table: Any, path: Path, image_key: str, caption_key: str, negative_key: str | None
    ) -> None:
        columns = list(table.column_names)
        fixes = {
            image_key: "--hf-image-key COLUMN (data.hf_image_key)",
            caption_key: "--hf-caption-key COLUMN (data.hf_caption_key)",
        }
        if negative_key is not None:
            fixes[negative_key] = "data.negatives=column:NAME"
        for key, fix in fixes.items():
            if key not in columns:
                raise KeyError(
                    f"hf source {path} has no column {key!r} (columns: {', '.join(columns)}); "
                    f"pass the right name with {fix}"
                )
        if len(table) == 0:
            raise ValueError(f"hf source {path} has no rows")

    def _group_keys(self, table: Any, image_key: str) -> list[Any] | None:
        """Per-row image identity for :func:`group_rows`, or None (each row is one item)."""
        for column in PATH_COLUMNS:
            if column != image_key and column in table.column_names:
                return [str(value) for value in _pylist(table, column)]
        images = _pylist(table, image_key) if not self._embedded else None
        if images is not None:  # a column of file paths
            return [str(value) for value in images]
        import pyarrow.compute as pc  # installed with datasets

        refs = table.select_columns([image_key]).with_format("arrow")[:].column(image_key)
        if refs.null_count:
            return None
        if pc.struct_field(refs, "bytes").null_count == len(refs):
            return pc.struct_field(refs, "path").to_pylist()  # file references, not bytes
        # embedded bytes: byte-identical images are one picture (a table of one row per caption)
        cells = (
            cell.as_buffer() for chunk in pc.struct_field(refs, "bytes").chunks for cell in chunk
        )
        paths = pc.struct_field(refs, "path").to_pylist()
        return [
            path if data is None else hashlib.blake2b(data, digest_size=16).digest()
            for data, path in zip(cells, paths, strict=True)
        ]

    def load_image(self, index: int) -> Tensor:
        """Image ``index`` resized and center-cropped to (3, image_size, image_size) in [0, 1]."""
        row = self.rows[index]
        cell = self._table[row][self.image_key]
        where = f"{self.path} row {row}"
        if isinstance(cell, dict):
            if cell.get("bytes") is not None:
                return read_image(cell["bytes"], self.image_size, where)
            cell = cell.get("path")
        if not isinstance(cell, str) or not cell:
            raise ValueError(f"{where}: column {self.image_key!r} holds no image ({cell!r})")
        return read_image(self.path / cell, self.image_size, where)
