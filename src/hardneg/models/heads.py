"""Heads that map a tower's output into the shared embedding space: a projection of the pooled
vector (:class:`ProjectionHead`) or trainable token layers with attention pooling
(:class:`AttentionPoolHead`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    r"""Linear map or 2-layer MLP into the joint space; the output is NOT L2-normalised.

    ``hidden=None``: :math:`e = W x + b` (CLIP's projection, Radford et al. 2021 §2.4).
    ``hidden=h``: :math:`e = W_2\,\mathrm{GELU}(W_1 x + b_1) + b_2` (SimCLR-style MLP head,
    Chen et al. 2020 §2.1). The contrastive losses normalise, so the norm stays free here.

    Args:
        in_dim: size of the tower's pooled vector.
        out_dim: embedding size ``E``.
        hidden: hidden width of the MLP, or None for a single linear layer.
        dropout: dropout after the hidden activation (MLP only).

    Example:
        >>> import torch
        >>> head = ProjectionHead(384, 256, hidden=512)
        >>> head(torch.randn(4, 384)).shape
        torch.Size([4, 256])
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden", hidden)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive size, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim, self.out_dim = in_dim, out_dim
        if hidden is None:
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, out_dim),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Project ``x`` of shape ``(..., in_dim)`` to ``(..., out_dim)``."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"ProjectionHead expects {self.in_dim} input features, got {x.shape[-1]}; "
                "build it with in_dim equal to the tower's pooled_dim"
            )
        return self.net(x)


class AttentionPoolHead(nn.Module):
    r"""Trainable token layers, attention pooling, projection: ``(B, T, D)`` tokens → ``(B, E)``.

    .. math::
        h = \mathrm{Enc}_L(\mathrm{LN}(W_{in} x) + p),\qquad
        a = \mathrm{softmax}_t\big(q^\top h_t / \sqrt{w}\big),\qquad
        e = W_{out}\,\mathrm{LN}\Big(\sum_t a_t h_t\Big)

    ``Enc_L`` is ``num_layers`` pre-LN transformer encoder layers (Vaswani et al. 2017) over the
    real tokens (padding masked), ``p`` learned positions and ``q`` a learned query (attention
    pooling as in CLIP's ResNet towers, Radford et al. 2021 §2.4). Unlike a linear head on a
    mean-pooled vector, it can read word order and bind attributes to objects: "a red 3 left of a
    blue 7" and "a red 7 left of a blue 3" hold the same words, and a bag of words cannot tell
    them apart.

    Args:
        in_dim: token size of the tower.
        out_dim: embedding size ``E``.
        width: ``w``, the layers' width.
        num_layers: transformer layers ``L`` (0: attention pooling of the projected tokens).
        num_heads: attention heads (must divide ``width``).
        max_tokens: longest sequence (size of the learned positions).
        dropout: dropout inside the layers.

    Example:
        >>> import torch
        >>> head = AttentionPoolHead(384, 256, width=64, max_tokens=16)
        >>> mask = torch.ones(2, 10, dtype=torch.bool)
        >>> head(torch.randn(2, 10, 384), mask).shape
        torch.Size([2, 256])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int = 128,
        num_layers: int = 1,
        num_heads: int = 4,
        max_tokens: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("width", width)):
            if value < 1:
                raise ValueError(f"{name} must be a positive size, got {value}")
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.input = nn.Sequential(nn.Linear(in_dim, width), nn.LayerNorm(width))
        self.positions = nn.Parameter(torch.zeros(1, max_tokens, width))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, num_heads, 2 * width, dropout, activation="gelu", batch_first=True,
                norm_first=True,
            )
            for _ in range(num_layers)
        )  # fmt: skip
        self.query = nn.Parameter(torch.zeros(width))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)
        nn.init.normal_(self.positions, std=0.02)
        nn.init.normal_(self.query, std=0.02)

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Embed ``tokens (B, T, in_dim)``; ``mask (B, T)`` True for real tokens (None: all)."""
        return self.pool(self.states(tokens, mask), mask)

    def states(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """The token states ``h`` ``(B, T, width)`` before pooling (what an ALBEF-style
        cross-modal transformer reads: they depend on every parameter before the pooling)."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.in_dim:
            raise ValueError(
                f"AttentionPoolHead expects (B, T, {self.in_dim}) tokens, got "
                f"{tuple(tokens.shape)}; build it with in_dim equal to the tower's token_dim"
            )
        if tokens.shape[1] > self.positions.shape[1]:
            raise ValueError(
                f"{tokens.shape[1]} tokens but max_tokens is {self.positions.shape[1]}; raise it"
            )
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        h = self.input(tokens) + self.positions[:, : tokens.shape[1]]
        padding = ~mask
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=padding)
        return h

    def pool(self, states: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention pooling and projection of :meth:`states` ``(B, T, width)`` → ``(B, E)``."""
        scores = (states @ self.query) / states.shape[-1] ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=1)
        return self.out(self.norm((weights.unsqueeze(-1) * states).sum(dim=1)))
