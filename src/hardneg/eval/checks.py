"""Input validation shared by the evaluation metrics.

Every check raises :class:`ValueError` whose message names the offending argument and says how
to fix it, so a bad input fails at the metric call instead of producing a silent NaN or a
wrong number.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def as_tensor(name: str, x: Tensor | Sequence, device: torch.device | None = None) -> Tensor:
    """Return ``x`` as a tensor (on ``device`` if given), raising ValueError if it cannot be."""
    try:
        t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"{name} must be a tensor or a (nested) sequence of numbers, got {type(x).__name__}"
        ) from err
    return t if device is None else t.to(device)


def check_finite(name: str, x: Tensor) -> None:
    """Check that the floating tensor ``x`` holds no NaN or inf.

    Checked in slices of about 2**20 elements along the first dimension: ``torch.isfinite``
    allocates temporaries larger than its input, which for a 100k×512 gallery would cost
    more memory than the chunked search itself.
    """
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    rows = max(1, 2**20 // max(1, x[0].numel())) if x.dim() and x.shape[0] else 1
    parts = x.split(rows) if x.dim() else [x]
    if not all(bool(torch.isfinite(part).all()) for part in parts):
        bad = sum(int((~torch.isfinite(part)).sum()) for part in parts)
        raise ValueError(
            f"{name} contains {bad} NaN/inf value(s); check the model output "
            "(fp16 overflow, divergent training) before evaluating"
        )


def check_matrix(name: str, x: Tensor) -> None:
    """Check that ``x`` is a finite 2-D floating tensor with at least one row."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        hint = " (add a batch dimension with .unsqueeze(0))" if x.dim() == 1 else ""
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(x.shape)}{hint}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one row")
    check_finite(name, x)


def check_ids(name: str, ids: Tensor | Sequence[int], length: int, device: torch.device) -> Tensor:
    """Validate 1-D integer semantic ids of length ``length``; return int64 ids on ``device``."""
    t = as_tensor(name, ids)
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(
            f"{name} must have shape ({length},) (one semantic id per row), got {tuple(t.shape)}"
        )
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer semantic ids, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.long)


def check_mask(name: str, mask: Tensor | Sequence, shape: tuple[int, ...]) -> Tensor:
    """Validate a boolean mask of exactly ``shape`` and return it as a bool tensor."""
    m = as_tensor(name, mask)
    if m.dtype != torch.bool:
        raise ValueError(f"{name} must be a boolean mask, got dtype {m.dtype}; use mask.bool()")
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(m.shape)}")
    return m
