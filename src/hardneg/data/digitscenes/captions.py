"""What a DigitScenes scene says in words: paraphrased captions, partial captions and hard
negatives.

Captions are drawn from templates with paraphrase and word-order variety; every template slot
is one whitespace word, so a perturbed caption has the same words as its source caption except
at the perturbed slots — that word range is the hard negative's annotated mismatch span
(used by NegCLIP extra negatives, the compositional probe and AEL).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from hardneg.data.digitscenes.semantics import COLOURS, DIGIT_WORDS, RELATIONS, semantic_id

__all__ = [
    "MIN_TEMPLATES",
    "PERTURBATIONS",
    "HardNegative",
    "partial_captions",
    "scene_captions",
]

PERTURBATIONS: tuple[str, ...] = (
    "replace_digit",
    "change_colour",
    "swap_colours",
    "swap_digits",
    "flip_relation",
)

# Slots: c<k>/d<k> = colour/digit of object k in reading order; p0/p1 = the first/last
# position word; {FWD}/{BWD} = "X <rel> Y" phrase with X before/after Y in reading order.
_TEMPLATES: dict[int, tuple[str, ...]] = {
    2: (
        "a {c0} {d0} {FWD} a {c1} {d1}",
        "a {c1} {d1} {BWD} a {c0} {d0}",
        "{p0}: {c0} {d0}; {p1}: {c1} {d1}",
        "{c0} {d0} on the {p0} and {c1} {d1} on the {p1}",
        "on the {p1} a {c1} {d1}, on the {p0} a {c0} {d0}",
        "the {d0} on the {p0} is {c0} and the {d1} on the {p1} is {c1}",
        "there is a {c0} {d0} {FWD} a {c1} {d1}",
    ),
    3: (
        "a {c0} {d0} {FWD} a {c1} {d1} {FWD} a {c2} {d2}",
        "{p0}: {c0} {d0}; middle: {c1} {d1}; {p1}: {c2} {d2}",
        "from {p0} to {p1}: {c0} {d0}, {c1} {d1} and {c2} {d2}",
        "a {c0} {d0}, a {c1} {d1} and a {c2} {d2} from {p0} to {p1}",
        "{c2} {d2} on the {p1}, {c1} {d1} in the middle and {c0} {d0} on the {p0}",
        "the {d0} on the {p0} is {c0}, the {d1} in the middle is {c1} and the {d2} on the "
        "{p1} is {c2}",
    ),
}
_RELATION_PHRASES = (("to the {fwd} of", "to the {bwd} of"), ("{fwd}", "{bwd}"))
_AXIS_WORDS = (
    {"fwd": "left", "bwd": "right", "p0": "left", "p1": "right"},
    {"fwd": "above", "bwd": "below", "p0": "top", "p1": "bottom"},
)
_FLIPPED_AXIS_WORDS = tuple(
    {"fwd": w["bwd"], "bwd": w["fwd"], "p0": w["p1"], "p1": w["p0"]} for w in _AXIS_WORDS
)
_COMPILED: dict[tuple[int, int], tuple[str, ...]] = {
    (n, axis): tuple(
        t.replace("{FWD}", _RELATION_PHRASES[axis][0]).replace("{BWD}", _RELATION_PHRASES[axis][1])
        for t in templates
    )
    for n, templates in _TEMPLATES.items()
    for axis in range(len(RELATIONS))
}
MIN_TEMPLATES = min(len(t) for t in _TEMPLATES.values())
# captions of one object only ("a red 3"): true of every scene that holds that object
_PARTIAL_TEMPLATES: tuple[str, ...] = (
    "a {c} {d}",
    "there is a {c} {d}",
    "a {c} {d} is in the picture",
    "the scene shows a {c} {d}",
    "somewhere there is a {c} {d}",
)


@dataclass(frozen=True)
class HardNegative:
    """A caption that differs from a scene in exactly one annotated way.

    Attributes:
        caption: the negative caption (a source positive with some slot words replaced).
        kind: one of :data:`PERTURBATIONS`.
        span: ``(start, end)`` indices into ``caption.split()``, end exclusive: the smallest
            word range holding every word that differs from the source caption.
        box: ``(x0, y0, x1, y1)`` pixels, right/bottom exclusive: the union of the boxes of the
            objects whose (digit, colour) at their position differs from the scene.
        source: index of the positive caption (of the same scene) it was made from.
        semantic_id: semantics id of what the negative describes (never the scene's own).
    """

    caption: str
    kind: str
    span: tuple[int, int]
    box: tuple[int, int, int, int]
    source: int
    semantic_id: int


def partial_captions(
    digits: Sequence[int], colours: Sequence[int], rnd: random.Random
) -> list[str]:
    """One caption per object that names that object only, in the objects' order.

    A partial caption ("there is a red 3") is true of *every* scene holding a red 3, so it is a
    false negative of each such scene in a batch: the benchmark's realistic false negatives
    (web captions describe part of an image, so image–text pairs match many-to-many; FALCON,
    arXiv:2505.11192, motivation).
    Each draws a template and a digit style (numeral or word) from ``rnd``.

    Example:
        >>> partial_captions((3, 7), (0, 2), random.Random(0))
        ['the scene shows a red 3', 'the scene shows a blue seven']
    """
    out = []
    for d, c in zip(digits, colours):
        template = _PARTIAL_TEMPLATES[rnd.randrange(len(_PARTIAL_TEMPLATES))]
        digit = DIGIT_WORDS[d] if rnd.random() < 0.5 else str(d)
        out.append(template.format(c=COLOURS[c], d=digit))
    return out


def _slots(
    axis: int, digits: Sequence[int], colours: Sequence[int], words: bool, flipped: bool
) -> dict[str, str]:
    slots = dict((_FLIPPED_AXIS_WORDS if flipped else _AXIS_WORDS)[axis])
    for k, (d, c) in enumerate(zip(digits, colours)):
        slots[f"c{k}"] = COLOURS[c]
        slots[f"d{k}"] = DIGIT_WORDS[d] if words else str(d)
    return slots


def _perturb(
    kind: str,
    digits: tuple[int, ...],
    colours: tuple[int, ...],
    allowed: Sequence[bool],
    rnd: random.Random,
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """New (digits, colours) for a slot perturbation, or None if it cannot change the meaning."""
    n, n_col = len(digits), len(COLOURS)
    d, c = list(digits), list(colours)
    if kind == "replace_digit":
        k = rnd.randrange(n)
        options = [x for x in range(10) if x != d[k] and allowed[x * n_col + c[k]]]
        if not options:
            return None
        d[k] = rnd.choice(options)
    elif kind == "change_colour":
        k = rnd.randrange(n)
        options = [x for x in range(n_col) if x != c[k] and allowed[d[k] * n_col + x]]
        if not options:
            return None
        c[k] = rnd.choice(options)
    else:  # swap_colours / swap_digits: a pair whose swapped attributes differ
        attr = c if kind == "swap_colours" else d
        options = []
        for i in range(n):
            for j in range(i + 1, n):
                if attr[i] == attr[j]:
                    continue
                new_attr = list(attr)
                new_attr[i], new_attr[j] = attr[j], attr[i]
                new_d, new_c = (d, new_attr) if kind == "swap_colours" else (new_attr, c)
                if allowed[new_d[i] * n_col + new_c[i]] and allowed[new_d[j] * n_col + new_c[j]]:
                    options.append((new_d, new_c))
        if not options:
            return None
        d, c = rnd.choice(options)
    return tuple(d), tuple(c)


def _union_box(boxes: Sequence[Sequence[int]], which: Sequence[int]) -> tuple[int, int, int, int]:
    sel = [boxes[k] for k in which]
    return (
        min(b[0] for b in sel),
        min(b[1] for b in sel),
        max(b[2] for b in sel),
        max(b[3] for b in sel),
    )


def scene_captions(
    relation: str,
    digits: Sequence[int],
    colours: Sequence[int],
    boxes: Sequence[Sequence[int]],
    allowed: Sequence[bool],
    n_captions: int,
    rnd: random.Random,
) -> tuple[list[str], list[HardNegative]]:
    """Positive captions and one hard negative per applicable perturbation for one scene.

    Positives: ``n_captions`` distinct templates (paraphrases with different word orders),
    each with digits written as numerals or words at random. Hard negatives, in
    :data:`PERTURBATIONS` order, each re-rendered from a random positive's template:
    ``replace_digit`` / ``change_colour`` (one object), ``swap_colours`` / ``swap_digits`` (two
    objects whose swapped attributes differ), ``flip_relation`` (relation
    words reversed, i.e. the objects' order reversed; skipped when that order reads the same).
    A perturbation is skipped rather than produce a (digit, colour) combination outside
    ``allowed`` (held-out combinations stay out of the train/val/test text).

    Args:
        relation: ``"left_of"`` or ``"above"``.
        digits: digits of the objects in reading order.
        colours: colour indices of the objects.
        boxes: ``(x0, y0, x1, y1)`` box of each object.
        allowed: 60 flags, ``allowed[6·digit + colour]`` for each usable combination.
        n_captions: number of positive captions (≤ number of templates).
        rnd: the random stream (the caller owns seeding).

    Returns:
        ``(captions, hard_negatives)``.

    Example:
        >>> caps, negs = scene_captions("left_of", (3, 7), (0, 2), [(0, 0, 9, 9), (20, 0, 29, 9)],
        ...                             [True] * 60, 5, random.Random(0))
        >>> len(caps), [n.kind for n in negs]
        (5, ['replace_digit', 'change_colour', 'swap_colours', 'swap_digits', 'flip_relation'])
    """
    axis = RELATIONS.index(relation)
    digits, colours = tuple(digits), tuple(colours)
    templates = _COMPILED[(len(digits), axis)]
    if not 1 <= n_captions <= len(templates):
        raise ValueError(f"n_captions must be in [1, {len(templates)}], got {n_captions}")
    chosen = rnd.sample(range(len(templates)), n_captions)
    styles = [rnd.random() < 0.5 for _ in chosen]
    captions = [
        templates[t].format_map(_slots(axis, digits, colours, words, False))
        for t, words in zip(chosen, styles)
    ]
    negatives = []
    for kind in PERTURBATIONS:
        flipped = kind == "flip_relation"
        if flipped:
            if digits[0] == digits[-1] and colours[0] == colours[-1]:
                continue
            new_d, new_c = digits, colours
            meaning = (digits[::-1], colours[::-1])
        else:
            changed = _perturb(kind, digits, colours, allowed, rnd)
            if changed is None:
                continue
            new_d, new_c = meaning = changed
        source = rnd.randrange(n_captions)
        caption = templates[chosen[source]].format_map(
            _slots(axis, new_d, new_c, styles[source], flipped)
        )
        diff = [
            i for i, (a, b) in enumerate(zip(captions[source].split(), caption.split())) if a != b
        ]
        moved = [
            k
            for k in range(len(digits))
            if (meaning[0][k], meaning[1][k]) != (digits[k], colours[k])
        ]
        negatives.append(
            HardNegative(
                caption=caption,
                kind=kind,
                span=(diff[0], diff[-1] + 1),
                box=_union_box(boxes, moved),
                source=source,
                semantic_id=semantic_id(relation, *meaning),
            )
        )
    return captions, negatives
