"""Table rows → dataset items: caption / negative cells and the same-image grouping rule.

CSV and ``datasets`` sources are tables with one caption (or a list of them) per row. Rows
that name the same image file become ONE item whose captions are all positives of each other
(open_clip's CSV layout repeats the path once per caption); the item's position is its
semantics id. :func:`group_rows` applies that rule for both sources.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GroupedRows", "caption_cell", "group_rows", "negatives_cell"]


def caption_cell(value: Any, where: str, key: str) -> list[str]:
    """The captions of one cell: a non-empty string or a non-empty list of them.

    Example:
        >>> caption_cell(" a cat ", "row 1", "text"), caption_cell(["a", "b"], "row 2", "text")
        (['a cat'], ['a', 'b'])
    """
    values = value if isinstance(value, list | tuple) else [value]
    captions = []
    for item in values:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(
                f"{where}: column {key!r} must hold a non-empty caption string (or a list of "
                f"them), got {value!r}"
            )
        captions.append(item.strip())
    if not captions:
        raise ValueError(f"{where}: column {key!r} holds an empty list; give at least one caption")
    return captions


def negatives_cell(value: Any, where: str, key: str) -> list[str]:
    """Hard negatives of one cell: ``"a|b"`` (``|``-separated), a list of strings, or empty.

    Example:
        >>> negatives_cell("a dog | a cat", "row 1", "neg"), negatives_cell(None, "row 2", "neg")
        (['a dog', 'a cat'], [])
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split("|") if part.strip()]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise ValueError(
        f"{where}: column {key!r} must hold '|'-separated negative captions or a list of "
        f"strings, got {value!r}"
    )


@dataclass
class GroupedRows:
    """Items made from table rows, in order of first appearance.

    Attributes:
        rows: per item, the row indices it was made from (the first row holds its image).
        captions: per item, the captions of all its rows.
        negatives: per item, the distinct hard negatives of its rows (None: no negatives column).
    """

    rows: list[list[int]]
    captions: list[list[str]]
    negatives: list[list[str]] | None


def group_rows(
    keys: Sequence[Hashable] | None,
    captions: Sequence[list[str]],
    negatives: Sequence[list[str]] | None = None,
) -> GroupedRows:
    """Merge rows with equal ``keys`` (image paths) into one item; ``keys=None``: row = item.

    Example:
        >>> g = group_rows(["a.png", "b.png", "a.png"], [["x"], ["y"], ["z"]])
        >>> g.rows, g.captions
        ([[0, 2], [1]], [['x', 'z'], ['y']])
    """
    order: dict[Hashable, int] = {}
    grouped = GroupedRows([], [], None if negatives is None else [])
    for row, caps in enumerate(captions):
        key = row if keys is None else keys[row]
        item = order.setdefault(key, len(order))
        if item == len(grouped.rows):
            grouped.rows.append([])
            grouped.captions.append([])
            if grouped.negatives is not None:
                grouped.negatives.append([])
        grouped.rows[item].append(row)
        grouped.captions[item].extend(caps)
        if grouped.negatives is not None:
            merged = grouped.negatives[item]
            for negative in negatives[row]:
                if negative not in merged:
                    merged.append(negative)
    return grouped
