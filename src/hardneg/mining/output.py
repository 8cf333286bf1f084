"""Write mined hard negatives next to a source, in a form the trainer reads (``docs/data.md``).

- csv / tsv: a copy of the file with two added columns per row: the row's image's negative
  captions, ``|``-separated (what ``data.negatives=column:NAME`` reads), and a JSON list of
  the row's caption's negative image paths, written as the source's image column writes them;
- hf: a ``save_to_disk`` copy of the table with two added columns: a list of negative
  captions and a list of negative image *row indices* (an item's first row);
- karpathy: a sidecar JSONL, one line per image entry of the split, keyed by ``imgid``.

With scores, each column gets a ``NAME_scores`` sibling (JSON list / list of floats).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

from hardneg.data.atomic_files import atomic_write
from hardneg.data.columns import caption_cell, group_rows
from hardneg.data.csv_source import csv_separator
from hardneg.data.dataset import flatten_captions
from hardneg.mining.core import MinedDirection, MinedNegatives

__all__ = ["check_output", "column_names", "write_negatives"]


def _row_captions(grouped_rows: list[list[int]], cells: list[list[str]]) -> dict[int, list[int]]:
    """Per table row, the flat caption indices (flatten_captions order) of its captions."""
    out: dict[int, list[int]] = {}
    position = 0
    for rows in grouped_rows:
        for row in rows:
            out[row] = list(range(position, position + len(cells[row])))
            position += len(cells[row])
    return out


def _negatives(mined: MinedDirection, query: int) -> tuple[list[int], list[float]]:
    """The negatives of one query (padding dropped) and their scores ([] without scores)."""
    row = mined.indices[query].tolist()
    keep = [j for j, k in enumerate(row) if k >= 0]
    scores = [] if mined.scores is None else mined.scores[query].tolist()
    return [row[j] for j in keep], [scores[j] for j in keep] if scores else []


def _row_values(
    mined: MinedNegatives,
    texts: list[str],
    image_names: list[Any],
    item: int,
    captions: list[int],
) -> tuple[list[str], list[float], list[Any], list[float]]:
    """(negative captions, scores) of ``item``; (negative images, scores) of ``captions``,
    merged in caption order without repeats."""
    caption_ids, caption_scores = _negatives(mined.image_to_caption, item)
    images: list[Any] = []
    image_scores: list[float] = []
    for c in captions:
        indices, scores = _negatives(mined.caption_to_image, c)
        for j, i in enumerate(indices):
            if image_names[i] not in images:
                images.append(image_names[i])
                if scores:
                    image_scores.append(scores[j])
    return [texts[c] for c in caption_ids], caption_scores, images, image_scores


def column_names(caption_column: str, image_column: str, with_scores: bool) -> list[str]:
    """The columns (karpathy: keys) written: the two, plus their ``_scores`` siblings."""
    names = [caption_column, image_column]
    return names + [f"{n}_scores" for n in names] if with_scores else names


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return next(csv.reader(handle, delimiter=csv_separator(path)), [])


def check_output(dataset: Any, kind: str, out: str | Path, names: list[str]) -> None:
    """ValueError (naming the option and the fix) unless ``out`` suits a source of ``kind``
    and none of the columns ``names`` exists in the source already. Reads no image."""
    out = Path(out)
    suffixes = {"csv": (".csv", ".tsv"), "karpathy": (".jsonl",)}
    if kind in suffixes and out.suffix.lower() not in suffixes[kind]:
        raise ValueError(
            f"--out {out}: a {kind} source's negatives go to a {' or '.join(suffixes[kind])} "
            "file; name --out accordingly"
        )
    source = Path(dataset.path if kind != "karpathy" else dataset.json_path)
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the source itself; write the output to a new path")
    if kind == "hf" and out.exists() and not (out / "state.json").is_file():
        if not out.is_dir() or any(out.iterdir()):
            raise ValueError(
                f"--out {out} exists and is not a saved dataset; pass a new folder for the copy"
            )
    existing = {"csv": lambda: _csv_header(source), "hf": lambda: dataset._table.column_names}
    columns = existing.get(kind, list)()
    for name in names:
        if name in columns:
            raise ValueError(
                f"{source} already has a column {name!r}; pass another --caption-column / "
                "--image-column name"
            )


def _write_csv(dataset: Any, cfg: Any, mined: MinedNegatives, out: Path, names: list[str]) -> None:
    path = Path(dataset.path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=csv_separator(path))
        rows = list(reader)
        fields = list(reader.fieldnames or [])
    keys = [row[cfg.csv_img_key].strip() for row in rows]
    cells = [
        caption_cell(row[cfg.csv_caption_key], f"{path} row {r}", cfg.csv_caption_key)
        for r, row in enumerate(rows)
    ]
    grouped = group_rows(keys, cells)
    texts = flatten_captions(dataset).texts
    image_names = [keys[item_rows[0]] for item_rows in grouped.rows]
    row_captions = _row_captions(grouped.rows, cells)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields + names, delimiter=csv_separator(out))
    writer.writeheader()
    for item, item_rows in enumerate(grouped.rows):
        for r in item_rows:
            caps, cap_scores, images, image_scores = _row_values(
                mined, texts, image_names, item, row_captions[r]
            )
            bad = next((c for c in caps if "|" in c), None)
            if bad is not None:
                raise ValueError(
                    f"caption {bad!r} holds a '|', the separator of the {names[0]!r} column; "
                    "remove '|' from the source's captions to write csv output"
                )
            rows[r][names[0]], rows[r][names[1]] = "|".join(caps), json.dumps(images)
            if len(names) == 4:
                rows[r][names[2]], rows[r][names[3]] = (
                    json.dumps(cap_scores),
                    json.dumps(image_scores),
                )
    for row in rows:
        writer.writerow(row)
    atomic_write(out, lambda f: f.write(buffer.getvalue().encode("utf-8")))


def _write_hf(dataset: Any, cfg: Any, mined: MinedNegatives, out: Path, names: list[str]) -> None:
    from hardneg.data.hf_source import _caption_column, _pylist

    table = dataset._table
    caption_key = cfg.hf_caption_key or _caption_column(table, dataset.path)
    cells = [
        caption_cell(cell, f"hf source row {r}", caption_key)
        for r, cell in enumerate(_pylist(table, caption_key))
    ]
    grouped = group_rows(dataset._group_keys(table, dataset.image_key), cells)
    texts = flatten_captions(dataset).texts
    row_captions = _row_captions(grouped.rows, cells)
    columns: list[list[Any]] = [[None] * len(cells) for _ in names]
    for item, item_rows in enumerate(grouped.rows):
        for r in item_rows:
            values = _row_values(mined, texts, dataset.rows, item, row_captions[r])
            for column, value in zip(columns, (values[0], values[2], values[1], values[3])):
                column[r] = value
    for name, column in zip(names, columns, strict=True):
        table = table.add_column(name, column)
    if out.exists():  # a previous output (check_output refused anything else)
        shutil.rmtree(out)
    table.save_to_disk(str(out))


def _write_karpathy(dataset: Any, mined: MinedNegatives, out: Path, names: list[str]) -> None:
    flat = flatten_captions(dataset)
    root = Path(dataset.image_root)
    image_names = [str(Path(p).relative_to(root)) for p in dataset.paths]
    lines = []
    position = 0
    for item, captions in enumerate(dataset.captions):
        caption_ids, cap_scores = _negatives(mined.image_to_caption, item)
        caps = [flat.texts[c] for c in caption_ids]
        per_caption, per_caption_scores = [], []
        for c in range(position, position + len(captions)):
            indices, image_scores = _negatives(mined.caption_to_image, c)
            per_caption.append([image_names[i] for i in indices])
            per_caption_scores.append(image_scores)
        position += len(captions)
        record: dict[str, Any] = {
            "imgid": int(dataset.semantic_ids[item]),
            "image": image_names[item],
            names[0]: caps,
            names[1]: per_caption,
        }
        if len(names) == 4:
            record[names[2]], record[names[3]] = cap_scores, per_caption_scores
        lines.append(json.dumps(record))
    atomic_write(out, lambda f: f.write(("\n".join(lines) + "\n").encode("utf-8")))


def write_negatives(
    dataset: Any,
    kind: str,
    cfg: Any,
    mined: MinedNegatives,
    out: str | Path,
    caption_column: str = "hard_negatives",
    image_column: str = "hard_negative_images",
) -> Path:
    """Write ``mined`` (from the embeddings of ``dataset``, a source of kind ``kind`` opened
    with the ``DataConfig`` ``cfg``) to ``out`` in the layout of the module docstring.

    Raises:
        ValueError: an output column the source already has (names it and the flag to
            rename), a csv caption holding the ``|`` separator.
    """
    out = Path(out)
    names = column_names(caption_column, image_column, mined.image_to_caption.scores is not None)
    check_output(dataset, kind, out, names)
    if kind == "csv":
        _write_csv(dataset, cfg, mined, out, names)
    elif kind == "hf":
        _write_hf(dataset, cfg, mined, out, names)
    else:
        _write_karpathy(dataset, mined, out, names)
    return out
