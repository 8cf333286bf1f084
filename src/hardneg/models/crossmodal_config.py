"""Configuration of the cross-modal transformer (:class:`CrossModalConfig`): sizes, heads,
ITM pooling and the MLM vocabulary, checked when built."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CrossModalConfig"]

_ITM_POOLS = ("cls", "mean")


@dataclass
class CrossModalConfig:
    """Configuration of :class:`CrossModalTransformer`.

    Args:
        text_dim: size ``D_t`` of the text input vectors (the tower's
            ``input_embedding_dim``, 384 for MiniLM).
        image_dim: size ``D_v`` of the image patch tokens.
        d_model: transformer width (128–256).
        num_layers: number of layers (4 in BACL).
        num_heads: attention heads; must divide ``d_model``.
        mlp_ratio: MLP hidden size relative to ``d_model``.
        dropout: dropout on attention probabilities (after they are recorded) and residuals.
        vocab_size: MLM output size (the text tokenizer's vocabulary).
        max_text_len: longest caption in tokens (size of the learned text positions).
        itm_pool: ``"cls"`` (first token, [CLS]/SOT) or ``"mean"`` (masked mean) for ITM.
        special_token_ids: ids never chosen as MLM targets (the tower's ``special_token_ids``).
        mask_prob: default probability of masking a token for MLM.
        mlm_vocab: token ids the MLM head scores (its softmax runs over these only, e.g. the
            word pieces a closed corpus uses); ``()`` = the whole vocabulary. A target outside
            it is an error.

    Example:
        >>> CrossModalConfig(text_dim=384, image_dim=128).d_model
        128
    """

    text_dim: int = 384
    image_dim: int = 128
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    vocab_size: int = 30522
    max_text_len: int = 64
    itm_pool: str = "cls"
    special_token_ids: tuple[int, ...] = ()
    mask_prob: float = 0.15
    mlm_vocab: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}"
            )
        if self.itm_pool not in _ITM_POOLS:
            raise ValueError(f"itm_pool must be one of {_ITM_POOLS}, got {self.itm_pool!r}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        for name in ("text_dim", "image_dim", "num_layers", "vocab_size", "max_text_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        self.special_token_ids = tuple(int(i) for i in self.special_token_ids)
        self.mlm_vocab = tuple(int(i) for i in self.mlm_vocab)
        bad = [i for i in self.mlm_vocab if not 0 <= i < self.vocab_size]
        if bad or len(set(self.mlm_vocab)) != len(self.mlm_vocab):
            raise ValueError(
                f"mlm_vocab must hold distinct token ids in [0, vocab_size={self.vocab_size}), "
                f"bad: {bad[:5] or 'duplicates'}"
            )
