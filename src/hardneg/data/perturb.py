"""Rule-based hard-negative captions for real data: NegCLIP-style swaps, no parser, no network.

NegCLIP (Yuksekgonul et al. 2023, "When and why vision-language models behave like
bags-of-words", §5) adds, for every training caption, a negative caption with the same words
in a different order — swapped noun phrases, nouns, adjectives, … — so that a model which
ignores word order cannot tell it from the true one. Without a part-of-speech tagger we
approximate those swaps with small word lists:

- ``swap_attributes``: swap two different adjectives of one category (colours, sizes,
  materials, ages), "a red cube and a blue ball" → "a blue cube and a red ball";
- ``swap_nouns``: swap the first two different nouns of a built-in list of common COCO words
  ("a dog on a sofa" → "a sofa on a dog"); when the list finds fewer than two, swap the
  content words around a relation word or "and" / "of" / "with";
- ``relation``: replace one relation word by its opposite (left/right, above/below,
  on/under, in front of/behind, inside/outside, before/after, on top of/underneath,
  top/bottom), once per occurrence.

:func:`perturbations` lists every rewrite that applies, in that kind order (deterministic: the
caller draws one with its own generator); ``[]`` when none does. Each word keeps the case of
the position it lands in, punctuation stays put and "a"/"an" follow the new word.

Example:
    >>> for p in perturbations("A red cube left of a blue ball."):
    ...     print(f"{p.kind}: {p.caption}")
    swap_attributes: A blue cube left of a red ball.
    swap_nouns: A red ball left of a blue cube.
    relation: A red cube right of a blue ball.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ATTRIBUTES", "KINDS", "NOUNS", "RELATION_PAIRS", "Perturbation", "perturbations"]

KINDS: tuple[str, ...] = ("swap_attributes", "swap_nouns", "relation")

ATTRIBUTES: dict[str, frozenset[str]] = {
    "colour": frozenset(
        "red orange yellow green blue purple pink brown black white gray grey silver gold".split()
    ),
    "size": frozenset("small little tiny large big huge tall short long".split()),
    "material": frozenset("wooden metal metallic plastic".split()),
    "age": frozenset("old young new".split()),
}

NOUNS: frozenset[str] = frozenset(
    """person people man men woman women boy girl child children kid baby player
    bicycle bike car motorcycle airplane plane bus train truck boat bird cat dog horse sheep
    cow elephant bear zebra giraffe backpack umbrella handbag bag tie suitcase frisbee skis
    snowboard ball kite bat glove skateboard surfboard racket bottle glass cup fork knife spoon
    bowl plate banana apple sandwich broccoli carrot pizza donut cake chair couch sofa bed table
    toilet tv television laptop mouse remote keyboard phone microwave oven toaster sink
    refrigerator fridge book clock vase scissors toothbrush street road field grass beach water
    ocean snow sky tree building house room kitchen bathroom window door wall floor food hat
    shirt shelf desk counter bench sign fence box square circle triangle star cube sphere""".split()
)

RELATION_PAIRS: tuple[tuple[str, str], ...] = (
    ("in front of", "behind"),
    ("on top of", "underneath"),
    ("left", "right"),
    ("above", "below"),
    ("on", "under"),
    ("inside", "outside"),
    ("before", "after"),
    ("top", "bottom"),
)
_OPPOSITE = {a: b for pair in RELATION_PAIRS for a, b in (pair, pair[::-1])}
_PHRASES = sorted((tuple(p.split()) for p in _OPPOSITE), key=len, reverse=True)
_CONNECTORS = frozenset({"and", "of", "with"})
_FUNCTION_WORDS = frozenset(
    """a an the this that these those some its his her their there it is are was were be to of
    and or with by at one two three four five six seven eight nine ten several many few each
    very next""".split()
)
_ALL_ATTRIBUTES = frozenset().union(*ATTRIBUTES.values())
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_REACH = 4  # tokens the fallback looks past function words for a content word


@dataclass(frozen=True)
class Perturbation:
    """A hard-negative caption and the rule that made it (one of :data:`KINDS`)."""

    caption: str
    kind: str


def _match_case(word: str, template: str) -> str:
    if len(template) > 1 and template.isupper():
        return word.upper()
    return word[:1].upper() + word[1:] if template[:1].isupper() else word


def _is_noun(word: str) -> bool:
    return word in NOUNS or (word.endswith("s") and (word[:-1] in NOUNS or word[:-2] in NOUNS))


class _Caption:
    """A caption's word tokens and span rewrites that keep everything between them."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        self.words = [text[a:b] for a, b in self.spans]
        self.lower = [w.lower() for w in self.words]

    def rewrite(self, edits: dict[int, tuple[int, str]]) -> str:
        """Apply ``{first token: (end token, new text)}``; fix a/an before each edit."""
        edits = {i: (end, _match_case(new, self.words[i])) for i, (end, new) in edits.items()}
        for i, (_, new) in list(edits.items()):
            before = i - 1
            if before >= 0 and before not in edits and self.lower[before] in ("a", "an"):
                gap = self.text[self.spans[before][1] : self.spans[i][0]]
                if gap.isspace():
                    article = "an" if new[:1].lower() in "aeiou" else "a"
                    edits[before] = (i, _match_case(article, self.words[before]))
        out, cursor = [], 0
        for i in sorted(edits):
            end, new = edits[i]
            out += [self.text[cursor : self.spans[i][0]], new]
            cursor = self.spans[end - 1][1]
        return "".join([*out, self.text[cursor:]])

    def swap(self, i: int, j: int) -> str:
        return self.rewrite({i: (i + 1, self.lower[j]), j: (j + 1, self.lower[i])})

    def first_distinct_pair(self, keep) -> tuple[int, int] | None:
        """Token indices of the first two different words satisfying ``keep``."""
        hits = [i for i, w in enumerate(self.lower) if keep(w)]
        for j in hits[1:]:
            if self.lower[j] != self.lower[hits[0]]:
                return hits[0], j
        return None

    def relation_spans(self) -> list[tuple[int, int]]:
        """Non-overlapping (start, end) token spans of relation phrases, longest match first."""
        spans, i = [], 0
        while i < len(self.lower):
            phrase = next((p for p in _PHRASES if tuple(self.lower[i : i + len(p)]) == p), None)
            if phrase is None:
                i += 1
                continue
            spans.append((i, i + len(phrase)))
            i += len(phrase)
        return spans

    def content_word(self, start: int, step: int, skip: frozenset[int]) -> int | None:
        """Nearest token from ``start`` in direction ``step`` that is a content word."""
        for i in range(start, start + step * _REACH, step):
            if not 0 <= i < len(self.lower) or i in skip:
                return None
            word = self.lower[i]
            if word not in _FUNCTION_WORDS and word not in _ALL_ATTRIBUTES:
                return i
        return None


def _swap_attributes(cap: _Caption) -> list[str]:
    pairs = [cap.first_distinct_pair(words.__contains__) for words in ATTRIBUTES.values()]
    return [cap.swap(*pair) for pair in pairs if pair is not None]


def _swap_nouns(cap: _Caption) -> list[str]:
    pair = cap.first_distinct_pair(_is_noun)
    if pair is not None:
        return [cap.swap(*pair)]
    relations = cap.relation_spans()
    in_relation = frozenset(i for a, b in relations for i in range(a, b))
    connectors = [(i, i + 1) for i, word in enumerate(cap.lower) if word in _CONNECTORS]
    anchors = sorted([*relations, *connectors])
    for start, end in anchors:
        left = cap.content_word(start - 1, -1, in_relation)
        right = cap.content_word(end, 1, in_relation)
        if left is not None and right is not None and cap.lower[left] != cap.lower[right]:
            return [cap.swap(left, right)]
    return []


def _flip_relations(cap: _Caption) -> list[str]:
    return [
        cap.rewrite({a: (b, _OPPOSITE[" ".join(cap.lower[a:b])])}) for a, b in cap.relation_spans()
    ]


def perturbations(caption: str) -> list[Perturbation]:
    """Every rule-based hard negative of ``caption``, in :data:`KINDS` order (see the module doc).

    Args:
        caption: an English caption.

    Returns:
        The distinct rewrites different from ``caption``; ``[]`` when no rule applies.

    Example:
        >>> perturbations("an orange cat and a red dog")[0]
        Perturbation(caption='a red cat and an orange dog', kind='swap_attributes')
        >>> perturbations("A photo.")
        []
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    cap = _Caption(caption)
    made = [
        *(Perturbation(text, "swap_attributes") for text in _swap_attributes(cap)),
        *(Perturbation(text, "swap_nouns") for text in _swap_nouns(cap)),
        *(Perturbation(text, "relation") for text in _flip_relations(cap)),
    ]
    seen = {caption}
    out = []
    for p in made:
        if p.caption not in seen:
            seen.add(p.caption)
            out.append(p)
    return out
