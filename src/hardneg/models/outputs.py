"""The two output records every encoder returns, so the trainer never asks which tower it holds.

- :class:`TextOutput`: per-token states, padding mask, pooled sentence vector, token ids.
- :class:`ImageOutput`: per-patch tokens, pooled image vector, patch grid.

Both are plain dataclasses of tensors with shape checks, ``to(device)`` (for cached features)
and ``select(index)`` (row gathering, e.g. to pair captions with negative images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class TextOutput:
    """What a text tower returns for a batch of B captions padded to length L.

    Args:
        tokens: ``(B, L, D_t)`` last-layer token states (padding positions included).
        mask: ``(B, L)`` bool, True for real tokens (special tokens such as [CLS]/[SEP]
            count as real), False for padding.
        pooled: ``(B, D_t')`` sentence vector (mean over real tokens for MiniLM, the projected
            EOS state for CLIP towers); ``D_t'`` may differ from ``D_t``.
        input_ids: ``(B, L)`` token ids (MLM labels and special-token lookup).

    Example:
        >>> import torch
        >>> out = TextOutput(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool),
        ...                  torch.zeros(2, 4), torch.zeros(2, 3, dtype=torch.long))
        >>> out.select(torch.tensor([1, 1, 0])).tokens.shape
        torch.Size([3, 3, 4])
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor
    input_ids: Tensor

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3:
            raise ValueError(f"tokens must be (B, L, D), got shape {tuple(self.tokens.shape)}")
        batch, length = self.tokens.shape[:2]
        if tuple(self.mask.shape) != (batch, length) or self.mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor of shape {(batch, length)} (True = real token), "
                f"got {self.mask.dtype} {tuple(self.mask.shape)}; use attention_mask.bool()"
            )
        if tuple(self.input_ids.shape) != (batch, length):
            raise ValueError(
                f"input_ids must have shape {(batch, length)}, got {tuple(self.input_ids.shape)}"
            )
        if self.pooled.dim() != 2 or self.pooled.shape[0] != batch:
            raise ValueError(f"pooled must be (B={batch}, D), got {tuple(self.pooled.shape)}")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> TextOutput:
        """Move every tensor to ``device`` (e.g. cached CPU features to the model's GPU)."""
        return TextOutput(
            self.tokens.to(device),
            self.mask.to(device),
            self.pooled.to(device),
            self.input_ids.to(device),
        )

    def select(self, index: Tensor) -> TextOutput:
        """Rows ``index`` (a LongTensor of batch positions, repeats allowed)."""
        return TextOutput(
            self.tokens[index], self.mask[index], self.pooled[index], self.input_ids[index]
        )

    def pad_to(self, length: int) -> TextOutput:
        """The captions padded to ``length`` tokens (padding: zero states, mask False, id 0)."""
        pad = length - self.mask.shape[1]
        if pad < 0:
            raise ValueError(f"cannot pad {self.mask.shape[1]} tokens to {length}")
        return TextOutput(
            F.pad(self.tokens, (0, 0, 0, pad)),
            F.pad(self.mask, (0, pad), value=False),
            self.pooled,
            F.pad(self.input_ids, (0, pad)),
        )

    @staticmethod
    def cat(outputs: list[TextOutput]) -> TextOutput:
        """The rows of ``outputs`` in order, padded to the longest."""
        length = max(o.mask.shape[1] for o in outputs)
        padded = [o.pad_to(length) for o in outputs]
        return TextOutput(
            torch.cat([o.tokens for o in padded]),
            torch.cat([o.mask for o in padded]),
            torch.cat([o.pooled for o in padded]),
            torch.cat([o.input_ids for o in padded]),
        )


@dataclass
class ImageOutput:
    """What an image tower returns for B images.

    Args:
        tokens: ``(B, P, D_v)`` patch tokens in row-major order over ``grid``.
        pooled: ``(B, D_v')`` image vector (mean of tokens, a CLS token, or CLIP's projected CLS).
        grid: ``(h, w)`` patch grid with ``h * w == P``: token ``k`` covers row ``k // w``,
            column ``k % w`` of the image (used to map attention to image regions).

    Example:
        >>> import torch
        >>> ImageOutput(torch.zeros(2, 36, 8), torch.zeros(2, 8), (6, 6)).tokens.shape
        torch.Size([2, 36, 8])
    """

    tokens: Tensor
    pooled: Tensor
    grid: tuple[int, int]

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3:
            raise ValueError(f"tokens must be (B, P, D), got shape {tuple(self.tokens.shape)}")
        batch, patches = self.tokens.shape[:2]
        if len(self.grid) != 2 or self.grid[0] * self.grid[1] != patches:
            raise ValueError(
                f"grid {tuple(self.grid)} does not tile the {patches} patch tokens; "
                "pass (rows, cols) with rows * cols == P"
            )
        if self.pooled.dim() != 2 or self.pooled.shape[0] != batch:
            raise ValueError(f"pooled must be (B={batch}, D), got {tuple(self.pooled.shape)}")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> ImageOutput:
        """Move every tensor to ``device``."""
        return ImageOutput(self.tokens.to(device), self.pooled.to(device), self.grid)

    def select(self, index: Tensor) -> ImageOutput:
        """Rows ``index`` (a LongTensor of batch positions, repeats allowed)."""
        return ImageOutput(self.tokens[index], self.pooled[index], self.grid)

    @staticmethod
    def cat(outputs: list[ImageOutput]) -> ImageOutput:
        """The rows of ``outputs`` (one grid) in order, as one output."""
        return ImageOutput(
            torch.cat([o.tokens for o in outputs]),
            torch.cat([o.pooled for o in outputs]),
            outputs[0].grid,
        )
