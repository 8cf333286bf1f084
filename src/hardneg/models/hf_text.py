"""The tokenizer half of the Hugging Face backed text towers (:class:`HFTextTower`): a fast
tokenizer's ids, padding and token → word map, shared by MiniLM and the transformers CLIP
adapter."""

from __future__ import annotations

import bisect
import re
from typing import Any

from torch import Tensor

from hardneg.models.text import TextTower, check_texts

__all__ = ["HFTextTower", "check_tokenizer_settings", "word_ids_from_offsets"]

_PADDING = ("longest", "max_length")


def word_ids_from_offsets(
    text: str, offsets: list[tuple[int, int]], special: list[int] | None = None
) -> list[int | None]:
    """Map each token to the index of the whitespace word (``text.split()``) it starts in.

    Args:
        text: the raw caption.
        offsets: per-token character span ``(start, end)`` into ``text`` (a fast tokenizer's
            ``offset_mapping``); empty spans (special tokens, padding) map to None.
        special: optional per-token 1/0 flags (``special_tokens_mask``); flagged tokens map to
            None whatever their span.

    Returns:
        one entry per token: the word index, or None for special/padding tokens.

    Example:
        >>> word_ids_from_offsets("a red 3,", [(0, 0), (0, 1), (2, 5), (6, 7), (7, 8), (0, 0)])
        [None, 0, 1, 2, 2, None]
    """
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    starts = [s for s, _ in spans]
    out: list[int | None] = []
    for k, (start, end) in enumerate(offsets):
        if end <= start or (special is not None and special[k]):
            out.append(None)
            continue
        word = bisect.bisect_right(starts, start) - 1
        out.append(word if word >= 0 and start < spans[word][1] else None)
    return out


class HFTextTower(TextTower):
    """Tokenizer half of a text tower backed by a Hugging Face *fast* tokenizer.

    Subclasses set ``self.tokenizer``, ``self.max_length`` and ``self.padding``
    (``"longest"``: pad to the longest caption of the batch; ``"max_length"``: always pad to
    ``max_length``, giving fixed shapes for feature caches).
    """

    tokenizer: Any
    max_length: int
    padding: str

    def _encode(self, texts: list[str], **extra: bool) -> Any:
        return self.tokenizer(
            texts,
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            **extra,
        )

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        enc = self._encode(check_texts(texts))
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def word_ids(self, texts: list[str]) -> list[list[int | None]]:
        texts = check_texts(texts)
        enc = self._encode(texts, return_offsets_mapping=True, return_special_tokens_mask=True)
        return [
            word_ids_from_offsets(text, offsets.tolist(), special.tolist())
            for text, offsets, special in zip(
                texts, enc["offset_mapping"], enc["special_tokens_mask"]
            )
        ]

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def mask_token_id(self) -> int | None:
        return self.tokenizer.mask_token_id

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.tokenizer.all_special_ids)))


def check_tokenizer_settings(tokenizer: Any, max_length: int, padding: str) -> None:
    """Validate the tokenizer options shared by the Hugging Face backed towers."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; word_ids needs offsets. "
            "Load it with AutoTokenizer.from_pretrained(path, use_fast=True)"
        )
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (room for special tokens), got {max_length}")
    if padding not in _PADDING:
        raise ValueError(f"padding must be one of {_PADDING}, got {padding!r}")
