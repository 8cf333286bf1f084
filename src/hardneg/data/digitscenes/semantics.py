"""What a DigitScenes scene *means*: its colours, digits and relations, and the semantics id
that names each canonical description.

A scene's *canonical description* is its relation (``"left_of"``: objects listed left → right,
``"above"``: top → bottom) and its ordered (digit, colour) objects; two scenes have equal
semantics ids iff their canonical descriptions are equal.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "COLOURS",
    "DIGIT_WORDS",
    "N_COMBOS",
    "N_SEMANTIC_IDS",
    "RELATIONS",
    "describe_semantic_id",
    "semantic_id",
]

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")
DIGIT_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
RELATIONS: tuple[str, ...] = ("left_of", "above")
N_COMBOS = len(DIGIT_WORDS) * len(COLOURS)

# semantics id = offset of the (n objects, relation) block + mixed-radix code of the objects
_ID_BLOCKS = [(n, axis) for n in (2, 3) for axis in range(len(RELATIONS))]
_ID_OFFSET: dict[tuple[int, int], int] = {}
N_SEMANTIC_IDS = 0
for _block in _ID_BLOCKS:
    _ID_OFFSET[_block] = N_SEMANTIC_IDS
    N_SEMANTIC_IDS += N_COMBOS ** _block[0]
del _block


def semantic_id(relation: str, digits: Sequence[int], colours: Sequence[int]) -> int:
    """Integer id of a canonical scene description; equal iff the descriptions are equal.

    The id is ``offset(n, relation) + Σ_k combo_k · 60^(n-1-k)`` with ``combo_k = 6·digit_k +
    colour_k`` for objects in reading order: a bijection between descriptions and
    ``[0, 439200)``, identical in every split and run.

    Args:
        relation: ``"left_of"`` (objects listed left → right) or ``"above"`` (top → bottom).
        digits: 2 or 3 digits (0–9) in reading order.
        colours: matching colour indices into :data:`COLOURS`.

    Example:
        >>> semantic_id("left_of", (3, 7), (0, 2))  # red 3 left of blue 7
        1124
        >>> describe_semantic_id(1124)
        ('left_of', (3, 7), (0, 2))
    """
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    n = len(digits)
    if n not in (2, 3) or len(colours) != n:
        raise ValueError(
            f"a scene has 2 or 3 objects with one colour each; got {n} digits and "
            f"{len(colours)} colours"
        )
    code = 0
    for d, c in zip(digits, colours):
        if not (0 <= d < len(DIGIT_WORDS) and 0 <= c < len(COLOURS)):
            raise ValueError(f"digit {d} / colour {c} out of range (0–9 / 0–{len(COLOURS) - 1})")
        code = code * N_COMBOS + int(d) * len(COLOURS) + int(c)
    return _ID_OFFSET[(n, RELATIONS.index(relation))] + code


def describe_semantic_id(sid: int) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """Inverse of :func:`semantic_id`: ``(relation, digits, colours)`` of an id."""
    for n, axis in reversed(_ID_BLOCKS):
        offset = _ID_OFFSET[(n, axis)]
        if offset <= sid < offset + N_COMBOS**n:
            code, combos = sid - offset, []
            for _ in range(n):
                code, combo = divmod(code, N_COMBOS)
                combos.append(combo)
            combos.reverse()
            digits = tuple(c // len(COLOURS) for c in combos)
            return RELATIONS[axis], digits, tuple(c % len(COLOURS) for c in combos)
    raise ValueError(f"semantic id {sid} is outside [0, {N_SEMANTIC_IDS}), so it is not a scene id")
