"""An independent parser of DigitScenes captions (test helper): caption → (relation, objects)."""

from __future__ import annotations

import re

COLOUR_NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan"]
NUMBER = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
NUMBER.update({str(i): i for i in range(10)})

# ----------------------------------------------------------------------------- parser
_C = "(red|green|blue|yellow|magenta|cyan)"
_D = r"(\d|zero|one|two|three|four|five|six|seven|eight|nine)"
OBJECT = f"{_C} {_D}"
_POS = "(left|right|top|bottom)"
_FIRST = {"left": "left_of", "top": "above"}  # position word that comes first in reading order
_LAST = {"right": "left_of", "bottom": "above"}


def obj(colour: str, digit: str) -> tuple[int, int]:
    """(digit, colour index) of a colour word and a digit word or numeral."""
    return NUMBER[digit], COLOUR_NAMES.index(colour)


def _by_position(pairs: list[tuple[str, tuple[int, int]]]):
    """[(position word, object)] → (relation, objects in reading order)."""
    first = [o for p, o in pairs if p in _FIRST]
    middle = [o for p, o in pairs if p == "middle"]
    last = [o for p, o in pairs if p in _LAST]
    words = {p for p, _ in pairs} - {"middle"}
    relations = {_FIRST.get(p) or _LAST[p] for p in words}
    assert len(first) == 1 and len(last) == 1 and len(relations) == 1, pairs
    return relations.pop(), tuple(first + middle + last)


def _along(first: str, second: str, objs: list[tuple[int, int]]):
    """Objects listed ``from first to second``."""
    assert {first, second} in ({"left", "right"}, {"top", "bottom"}), (first, second)
    relation = _FIRST.get(first) or _LAST[first]
    return relation, tuple(objs if first in _FIRST else objs[::-1])


def parse(caption: str):
    """Caption → (relation, ((digit, colour), ...) in reading order); fails if unparseable."""
    t = " ".join(re.sub(r"[,;:]", " ", caption).split())
    rel = "(to the (?:left|right) of|above|below)"
    if m := re.fullmatch(f"(?:there is )?a {OBJECT} {rel} a {OBJECT}", t):
        a, r, b = obj(m[1], m[2]), m[3], obj(m[4], m[5])
        forward = "left" in r or r == "above"
        return ("left_of" if "of" in r else "above"), ((a, b) if forward else (b, a))
    if m := re.fullmatch(f"a {OBJECT} {rel} a {OBJECT} {rel} a {OBJECT}", t):
        objs = [obj(m[1], m[2]), obj(m[4], m[5]), obj(m[7], m[8])]
        assert m[3] == m[6], t
        forward = "left" in m[3] or m[3] == "above"
        return ("left_of" if "of" in m[3] else "above"), tuple(objs if forward else objs[::-1])
    if m := re.fullmatch(f"{_POS} {OBJECT} {_POS} {OBJECT}", t):
        return _by_position([(m[1], obj(m[2], m[3])), (m[4], obj(m[5], m[6]))])
    if m := re.fullmatch(f"{_POS} {OBJECT} middle {OBJECT} {_POS} {OBJECT}", t):
        return _by_position(
            [(m[1], obj(m[2], m[3])), ("middle", obj(m[4], m[5])), (m[6], obj(m[7], m[8]))]
        )
    if m := re.fullmatch(f"{OBJECT} on the {_POS} and {OBJECT} on the {_POS}", t):
        return _by_position([(m[3], obj(m[1], m[2])), (m[6], obj(m[4], m[5]))])
    if m := re.fullmatch(f"on the {_POS} a {OBJECT} on the {_POS} a {OBJECT}", t):
        return _by_position([(m[1], obj(m[2], m[3])), (m[4], obj(m[5], m[6]))])
    if m := re.fullmatch(f"the {_D} on the {_POS} is {_C} and the {_D} on the {_POS} is {_C}", t):
        return _by_position([(m[2], obj(m[3], m[1])), (m[5], obj(m[6], m[4]))])
    if m := re.fullmatch(f"from {_POS} to {_POS} {OBJECT} {OBJECT} and {OBJECT}", t):
        objs = [obj(m[3], m[4]), obj(m[5], m[6]), obj(m[7], m[8])]
        return _along(m[1], m[2], objs)
    if m := re.fullmatch(f"a {OBJECT} a {OBJECT} and a {OBJECT} from {_POS} to {_POS}", t):
        objs = [obj(m[1], m[2]), obj(m[3], m[4]), obj(m[5], m[6])]
        return _along(m[7], m[8], objs)
    middle = f"{OBJECT} on the {_POS} {OBJECT} in the middle and {OBJECT} on the {_POS}"
    if m := re.fullmatch(middle, t):
        return _by_position(
            [(m[3], obj(m[1], m[2])), ("middle", obj(m[4], m[5])), (m[8], obj(m[6], m[7]))]
        )
    if m := re.fullmatch(
        f"the {_D} on the {_POS} is {_C} the {_D} in the middle is {_C} "
        f"and the {_D} on the {_POS} is {_C}",
        t,
    ):
        return _by_position(
            [(m[2], obj(m[3], m[1])), ("middle", obj(m[5], m[4])), (m[7], obj(m[8], m[6]))]
        )
    raise AssertionError(f"unparseable caption: {caption!r}")


def annotation(split, i):
    """(relation, objects) straight from the split's arrays."""
    k = int((split.digits[i] >= 0).sum())
    objs = tuple((int(d), int(c)) for d, c in zip(split.digits[i, :k], split.colours[i, :k]))
    return split.relations[i], objs
