"""Text towers: the shared text-encoder interface (:class:`TextTower`) and caption checks.

Every text tower is an ``nn.Module`` with

- ``tokenize(texts) -> dict`` (``input_ids``, ``attention_mask`` LongTensors, on CPU),
- ``forward(input_ids, attention_mask) -> TextOutput``,
- ``encode_text(texts) -> TextOutput`` (tokenises and runs on the module's device),
- ``word_ids(texts) -> list[list[int | None]]`` (token → index of the word in ``text.split()``),
- ``input_embedding() -> nn.Embedding`` and ``embed_tokens(input_ids)`` (the tower's own
  non-contextual token embeddings, the cross-modal head's text input),
- ``vocab_size``, ``mask_token_id``, ``pad_token_id``, ``special_token_ids``,
  ``token_dim`` (``D_t`` of the token states) and ``pooled_dim``.

:class:`TextTower` holds the parts that do not depend on the tokenizer;
:class:`~hardneg.models.hf_text.HFTextTower` the ones a Hugging Face fast tokenizer provides
(shared by MiniLM and the transformers CLIP adapter), and
:class:`~hardneg.models.minilm.MiniLMTextTower` is the benchmark's text encoder.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from hardneg.models.freeze import FreezableModule
from hardneg.models.outputs import TextOutput

__all__ = ["TextTower", "check_texts"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def check_texts(texts: Any, name: str = "texts") -> list[str]:
    """Return ``texts`` as a list of strings or raise a ValueError that says how to fix it."""
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a list of strings; wrap a single caption as [{name}]")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{name} is empty; pass at least one caption")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{name} must contain only strings, found {sorted(set(bad))}")
    return texts


class TextTower(FreezableModule, ABC):
    """Base of every text tower: device handling, ``encode_text`` and input validation.

    A frozen tower (no parameter requires grad) stays in eval mode under a parent's
    ``.train()`` (see :func:`~hardneg.models.freeze.freeze`).

    Subclasses implement :meth:`tokenize`, :meth:`forward`, :meth:`word_ids` and the
    vocabulary properties; ``token_dim``/``pooled_dim`` are plain ints set in ``__init__``.
    """

    token_dim: int
    pooled_dim: int

    @property
    def device(self) -> torch.device:
        """Device of the tower's parameters (CPU for a parameter-less tower)."""
        first = next(self.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    @abstractmethod
    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """``{"input_ids": (B, L), "attention_mask": (B, L)}`` LongTensors on CPU."""

    @abstractmethod
    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextOutput:
        """Encode tokenised captions into a :class:`TextOutput`."""

    @abstractmethod
    def word_ids(self, texts: list[str]) -> list[list[int | None]]:
        """Per caption and token (same length as ``tokenize``'s rows): index of the word in
        ``text.split()`` the token belongs to, None for special and padding tokens."""

    @abstractmethod
    def input_embedding(self) -> nn.Embedding:
        """The tower's token-embedding table (its input layer, before any attention)."""

    @property
    def input_embedding_dim(self) -> int:
        """Width of :meth:`embed_tokens`'s vectors."""
        return int(self.input_embedding().embedding_dim)

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """Non-contextual token embeddings ``(B, L, D_e)`` of ``input_ids`` (fp32).

        Each vector depends on its own token id only, so replacing one token (MLM masking)
        changes that position and nothing else; contextual last-layer states would carry the
        masked word into its neighbours. Runs without autograd when the table is frozen.
        """
        table = self.input_embedding()
        with torch.set_grad_enabled(torch.is_grad_enabled() and table.weight.requires_grad):
            return table(input_ids.to(table.weight.device)).float()

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids (size of the MLM output layer)."""

    @property
    @abstractmethod
    def mask_token_id(self) -> int | None:
        """Id of the tokenizer's mask token, None if it has none (CLIP BPE)."""

    @property
    @abstractmethod
    def pad_token_id(self) -> int:
        """Id used for padding positions."""

    @property
    @abstractmethod
    def special_token_ids(self) -> tuple[int, ...]:
        """Ids that are never MLM targets (CLS/SEP/PAD/..., SOT/EOT)."""

    def encode_text(self, texts: list[str]) -> TextOutput:
        """Tokenise ``texts`` and encode them on the tower's device.

        Example:
            >>> tower = MiniLMTextTower()  # doctest: +SKIP
            >>> tower.encode_text(["a red 3 left of a blue 7"]).pooled.shape  # doctest: +SKIP
            torch.Size([1, 384])
        """
        batch = self.tokenize(check_texts(texts))
        device = self.device
        return self(batch["input_ids"].to(device), batch["attention_mask"].to(device))
