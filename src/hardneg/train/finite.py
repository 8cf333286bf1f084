"""Name the input that made a loss non-finite (a NaN feature is not a learning-rate problem)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["non_finite_message"]


def non_finite_message(tensors: Mapping[str, Tensor | None]) -> str | None:
    """Describe the first tensor of ``tensors`` (in order) that holds a NaN or ±inf.

    Integer and bool tensors are always finite and ``None`` entries are skipped, so a caller
    can pass every input of a step as is.

    Args:
        tensors: name → tensor, e.g. ``{"images": x, "text_tokens": t, "logit_scale": s}``.

    Returns:
        e.g. ``"text_tokens has 1 non-finite value of 24 (first: nan at (1, 2, 0))"``, or
        None when every tensor is finite.

    Example:
        >>> non_finite_message({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")])})
        'b has 1 non-finite value of 2 (first: inf at (1,))'
    """
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if not isinstance(tensor, Tensor):
            raise ValueError(
                f"tensors must map names to tensors (or None); {name!r} is a "
                f"{type(tensor).__name__}"
            )
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        bad = ~torch.isfinite(tensor.detach())
        count = int(bad.sum())
        if count:
            first = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
            value = tensor.detach()[first].item()
            plural = "value" if count == 1 else "values"
            return (
                f"{name} has {count} non-finite {plural} of {tensor.numel()} "
                f"(first: {value} at {first})"
            )
    return None
