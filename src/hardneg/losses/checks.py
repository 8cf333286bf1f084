"""Input validation shared by every contrastive loss.

Every check raises :class:`ValueError` whose message names the offending argument and says
how to fix it, so a shape or data bug surfaces at the loss call instead of as a silent NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_embeddings(name: str, x: Tensor, *, min_rows: int = 1) -> None:
    """Check that ``x`` is a finite 2-D floating tensor with at least ``min_rows`` rows."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        hint = " (add a batch dimension with .unsqueeze(0))" if x.dim() == 1 else ""
        raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if x.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {x.shape[0]} rows but a contrastive loss needs at least {min_rows} "
            "(one positive and one negative); use a larger batch"
        )
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(
            f"{name} contains NaN or inf in {bad} row(s); check the encoder output "
            "(learning rate, fp16 overflow) before the loss"
        )


def check_pair(image_emb: Tensor, text_emb: Tensor) -> None:
    """Check image/text embeddings: 2-D, finite, same batch size ≥ 2, same width."""
    check_embeddings("image_emb", image_emb, min_rows=2)
    check_embeddings("text_emb", text_emb, min_rows=2)
    if image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(
            f"image_emb has {image_emb.shape[0]} rows but text_emb has {text_emb.shape[0]}; "
            "pass one caption per image (row i of each is a positive pair)"
        )
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"image_emb has {image_emb.shape[1]} columns but text_emb has {text_emb.shape[1]}; "
            "project both to the same dimension"
        )


def check_ids(positive_ids: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
    """Validate ``positive_ids`` (length ``batch``, integers); return them as int64."""
    if positive_ids is None:
        return None
    ids = torch.as_tensor(positive_ids)
    if ids.dim() != 1 or ids.shape[0] != batch:
        raise ValueError(
            f"positive_ids must have shape ({batch},) (one id per image-text pair), "
            f"got {tuple(ids.shape)}"
        )
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"positive_ids must be integers, got dtype {ids.dtype}")
    return ids.to(device=device, dtype=torch.long)


def check_extra(extra_text_emb: Tensor | None, dim: int) -> Tensor | None:
    """Validate NegCLIP extra negatives, (B, K, d) or (M, d), and flatten them to (M, d)."""
    if extra_text_emb is None:
        return None
    if not isinstance(extra_text_emb, Tensor) or extra_text_emb.dim() not in (2, 3):
        shape = tuple(extra_text_emb.shape) if isinstance(extra_text_emb, Tensor) else None
        raise ValueError(
            f"extra_text_emb must be (B, K, d) or (M, d) hard-negative caption embeddings, "
            f"got {shape}"
        )
    flat = extra_text_emb.reshape(-1, extra_text_emb.shape[-1])
    if flat.shape[1] != dim:
        raise ValueError(
            f"extra_text_emb has dimension {flat.shape[1]} but text_emb has {dim}; "
            "encode the hard-negative captions with the same text tower and projection"
        )
    check_embeddings("extra_text_emb", flat, min_rows=0)
    return flat
