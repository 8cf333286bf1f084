"""Building blocks of the cross-modal transformer: multi-head attention that returns its
probabilities (:class:`Attention`), one pre-LN layer (:class:`CrossModalLayer`) and the weight
initialisation (:func:`init_weights`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hardneg.models.crossmodal_config import CrossModalConfig

__all__ = ["Attention", "CrossModalLayer", "init_weights"]


class Attention(nn.Module):
    r"""Multi-head scaled dot-product attention that returns its probabilities.

    :math:`A = \mathrm{softmax}(Q K^\top / \sqrt{d_h})` per head (Vaswani et al. 2017 §3.2),
    computed in (at least) fp32; masked keys get the dtype's lowest value, so their weight is
    exactly 0 and a fully masked row stays finite. Output: ``Dropout(A) V`` → output projection.

    Args:
        d_model: model width; num_heads: heads (``d_h = d_model / num_heads``);
        dropout: dropout on ``A`` after it is returned.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, query: Tensor, memory: Tensor, key_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``query (B, T, d)`` attends to ``memory (B, S, d)``; ``key_mask (B, S)`` True = keep.

        Returns the output ``(B, T, d)`` and the probabilities ``(B, H, T, S)``.
        """
        q, k, v = (
            self._heads(self.query(query)),
            self._heads(self.key(memory)),
            self._heads(self.value(memory)),
        )
        scores = q @ k.transpose(-2, -1)
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * self.head_dim**-0.5
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)
        context = self.drop(probs).to(v.dtype) @ v
        context = context.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)
        return self.out(context), probs


class CrossModalLayer(nn.Module):
    """One pre-LN layer: text self-attention, text→image cross-attention, MLP."""

    def __init__(self, config: CrossModalConfig) -> None:
        super().__init__()
        d = config.d_model
        self.norm_self = nn.LayerNorm(d)
        self.self_attn = Attention(d, config.num_heads, config.dropout)
        self.norm_cross = nn.LayerNorm(d)
        self.cross_attn = Attention(d, config.num_heads, config.dropout)
        self.norm_mlp = nn.LayerNorm(d)
        hidden = int(d * config.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(hidden, d)
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self, x: Tensor, text_mask: Tensor, memory: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns the new states and the self- and cross-attention probabilities."""
        h = self.norm_self(x)
        update, self_probs = self.self_attn(h, h, text_mask)
        x = x + self.drop(update)
        update, cross_probs = self.cross_attn(self.norm_cross(x), memory)
        x = x + self.drop(update)
        x = x + self.drop(self.mlp(self.norm_mlp(x)))
        return x, self_probs, cross_probs


def init_weights(module: nn.Module) -> None:
    """BERT-style init: normal(0, 0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
