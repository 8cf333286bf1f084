"""Projection heads that map a tower's pooled vector into the shared embedding space."""

from __future__ import annotations

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
