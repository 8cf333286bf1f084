"""open_clip's CSV / TSV image–caption layout as an image–caption dataset.

The layout (open_clip's ``--csv-img-key filepath --csv-caption-key title``): one row per
(image, caption) pair, a header naming the columns::

    filepath,title
    images/0.jpg,a red square left of a blue circle
    images/0.jpg,a blue circle right of a red square
    images/1.jpg,a dog on a sofa

Rows with the same image path are ONE item whose captions are positives of each other; the
item's position is its semantics id. See ``docs/data.md``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from torch import Tensor

from hardneg.data.columns import caption_cell, group_rows, negatives_cell
from hardneg.data.dataset import ImageCaptionDataset
from hardneg.data.images import read_image

__all__ = ["CSVImageCaptions", "check_csv_columns", "csv_separator"]


def csv_separator(path: str | os.PathLike) -> str:
    """``"\\t"`` for a ``.tsv`` file, ``","`` for a ``.csv`` file; ValueError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".tsv"):
        raise ValueError(
            f"csv source {path} must end in .csv (comma-separated) or .tsv (tab-separated), "
            f"got suffix {suffix!r}; rename it or pass separator="
        )
    return "\t" if suffix == ".tsv" else ","


@contextmanager
def _open_text(path: Path) -> Iterator:
    """``path`` opened as UTF-8 text (a BOM is skipped); a file in another encoding or a quote
    left open is a ``ValueError`` naming the file and the fix."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            yield handle
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None
    except csv.Error as err:
        raise ValueError(f"{path} is not valid csv ({err}); check its quotes") from None


def _rows(reader: csv.DictReader, path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``(where, row)`` of each data row; a field spanning lines (a quote left open, which
    swallows the following rows into one cell) is a ``ValueError`` naming its first line."""
    _ = reader.fieldnames  # reads the header
    start = reader.line_num + 1
    rows = iter(reader)
    while True:
        where = f"{path} line {start}"
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as err:
            raise ValueError(
                f"{where}: not valid csv from here ({err}): a quote left open?; close the "
                'quote, or write a quote inside a field as ""'
            ) from None
        if reader.line_num != start:
            raise ValueError(
                f"{where}: a quoted field runs over lines {start}–{reader.line_num} (a quote "
                'left open?); close the quote, or write a quote inside a field as ""'
            )
        start = reader.line_num + 1
        yield where, row


_FIXES = {
    "img": "pass the image-path column with --csv-img-key COLUMN (data.csv_img_key)",
    "caption": "pass the caption column with --csv-caption-key COLUMN (data.csv_caption_key)",
    "negative": "fix data.negatives=column:NAME",
}


def check_csv_columns(
    path: str | os.PathLike,
    img_key: str,
    caption_key: str,
    negative_key: str | None = None,
    separator: str | None = None,
) -> None:
    """KeyError unless the header of ``path`` has the given columns (reads the first line only).

    The message names the missing column, the columns there are and the flag that sets it.
    """
    separator = csv_separator(path) if separator is None else separator
    with _open_text(Path(path)) as handle:
        columns = next(csv.reader(handle, delimiter=separator, strict=True), [])
    for key, role in ((img_key, "img"), (caption_key, "caption"), (negative_key, "negative")):
        if key is not None and key not in columns:
            raise KeyError(
                f"{path} has no column {key!r} (columns: {', '.join(columns) or 'none'}); "
                f"{_FIXES[role]}"
            )


class CSVImageCaptions(ImageCaptionDataset):
    """Images and captions listed in a CSV / TSV file (open_clip's column layout).

    Args:
        path: the ``.csv`` or ``.tsv`` file.
        image_root: folder relative image paths resolve against (None: the file's folder).
        img_key: column of image paths.
        caption_key: column of captions.
        separator: field separator (None: from the suffix, ``,`` for .csv, tab for .tsv).
        image_size: output side (short side resized, then center crop).
        negative_key: optional column of hard-negative captions (``|``-separated); sets
            :attr:`negatives` (None without it).

    Raises:
        FileNotFoundError: the file, ``image_root`` or an image (message names row and path).
        KeyError: a column is missing (message names it and the flags that set it).
        ValueError: bad suffix / size, an empty caption or image path, a quote left open (names
            the line), a file that is not UTF-8.

    Example:
        >>> ds = CSVImageCaptions("train.csv", image_size=224)  # doctest: +SKIP
        >>> ds.describe()  # doctest: +SKIP
        'csv train.csv: 1000 images, 5000 captions'
    """

    def __init__(
        self,
        path: str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        img_key: str = "filepath",
        caption_key: str = "title",
        separator: str | None = None,
        image_size: int = 224,
        negative_key: str | None = None,
    ) -> None:
        super().__init__()
        path = Path(path)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        separator = csv_separator(path) if separator is None else separator
        if not path.is_file():
            raise FileNotFoundError(f"csv source {path} does not exist; check the csv:PATH spec")
        root = path.parent if image_root is None else Path(image_root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"image_root {root} is not a directory; pass the folder the paths in {path.name} "
                "are relative to (--images DIR, data.images)"
            )
        check_csv_columns(path, img_key, caption_key, negative_key, separator)
        with _open_text(path) as handle:
            reader = csv.DictReader(handle, delimiter=separator, strict=True)
            keys, captions, negatives = [], [], [] if negative_key else None
            for where, row in _rows(reader, path):
                image = (row[img_key] or "").strip()
                if not image:
                    raise ValueError(f"{where}: column {img_key!r} is empty; give an image path")
                keys.append(image)
                captions.append(caption_cell(row[caption_key], where, caption_key))
                if negatives is not None:
                    negatives.append(negatives_cell(row[negative_key], where, negative_key))
                full = root / image
                if not os.path.isfile(full):
                    raise FileNotFoundError(
                        f"{where}: image file {full} does not exist (image root {root}); fix the "
                        f"{img_key!r} column or pass --images DIR"
                    )
        if not keys:
            raise ValueError(f"{path} has a header but no rows; add image/caption rows")
        grouped = group_rows(keys, captions, negatives)
        self.path, self.image_root, self.image_size = path, root, image_size
        self.paths = [root / keys[rows[0]] for rows in grouped.rows]
        self.captions, self.negatives = grouped.captions, grouped.negatives
        self.semantic_ids = np.arange(len(self.paths), dtype=np.int64)
        self.source = f"csv {path}"

    def load_image(self, index: int) -> Tensor:
        """Image ``index`` resized and center-cropped to (3, image_size, image_size) in [0, 1]."""
        return read_image(self.paths[index], self.image_size, f"{self.path.name} item {index}")
