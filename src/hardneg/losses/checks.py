"""Validation shared by every contrastive loss: inputs of a step and constructor arguments.

Every check raises :class:`ValueError` with a one-line message that names the offending
argument and says how to fix it, so a shape, device or configuration bug surfaces where it is
made instead of as a silent NaN (or a "math domain error") later.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """Return ``value`` as a float after checking it is a real number in the stated range.

    ``low``/``high`` bound the range (``low_open``/``high_open`` exclude the bound itself);
    NaN is always refused, ``±inf`` unless ``allow_inf``. Booleans and strings are refused
    even though Python would compare them.
    """
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or (high is None and not allow_inf) else "]"
    valid = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name} must be a number in {valid}, got {type(value).__name__} {value!r}"
        )
    number = float(value)
    finite = "" if allow_inf else "finite "
    if (
        math.isnan(number)
        or (not allow_inf and math.isinf(number))
        or (low is not None and (number < low or (low_open and number == low)))
        or (high is not None and (number > high or (high_open and number == high)))
    ):
        raise ValueError(f"{name} must be a {finite}number in {valid}, got {number}")
    return number


def check_int(name: str, value: object, *, low: int = 1) -> int:
    """Return ``value`` after checking it is an integer (not a bool or float) ``≥ low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}, got {type(value).__name__} {value!r}")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` after checking it is a bool (a string such as "no" would be truthy)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_embeddings(name: str, x: Tensor, *, min_rows: int = 1) -> None:
    """Check that ``x`` is a 2-D floating tensor with ≥ ``min_rows`` rows and ≥ 1 column."""
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
    if x.shape[1] == 0:
        raise ValueError(f"{name} has 0 columns; pass embeddings of dimension ≥ 1")


def check_finite(name: str, x: Tensor) -> None:
    """Check that ``x`` holds no NaN or inf (meta tensors have no values and pass)."""
    if x.device.type == "meta" or bool(torch.isfinite(x).all()):
        return
    bad = int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1).sum()) if x.dim() else 1
    raise ValueError(
        f"{name} contains NaN or inf in {bad} row(s); check the encoder output "
        "(learning rate, fp16 overflow) before the loss"
    )


def check_parameter(name: str, value: Tensor, meaning: str, device: torch.device) -> None:
    """Check that a learned scalar of a loss (``logit_scale``, ``logit_bias``) is finite and
    usable with inputs on ``device`` (there, or a CPU scalar)."""
    if value.device not in (device, torch.device("cpu")):
        raise ValueError(
            f"the loss's {name} is on {value.device} but image_emb is on {device}; move the "
            "loss with loss_fn.to(image_emb.device)"
        )
    if value.device.type != "meta" and not bool(torch.isfinite(value).all()):
        raise ValueError(
            f"{name} (the loss's learned {meaning}) is {value.detach().cpu().tolist()}: it "
            "diverged; lower the learning rate (or fix the temperature: learn_temperature=False)"
        )


def check_logit_range(scale: Tensor, embeddings: dict[str, Tensor]) -> None:
    """Refuse un-normalised embeddings whose logits ``scale·⟨u, v⟩`` could overflow.

    ``|scale·⟨u, v⟩| ≤ scale·M²`` with ``M`` the largest row norm (Cauchy–Schwarz), so the
    check costs O(B·d), not a pass over the logit matrix. Only needed with ``normalize=False``.
    """
    names = list(embeddings)
    tensors = list(embeddings.values())
    if tensors[0].device.type == "meta":
        return
    with torch.no_grad():
        norms = torch.stack([x.norm(dim=1).max() if len(x) else x.new_zeros(()) for x in tensors])
        top, scale = norms.max(), scale.detach()
        if bool(scale * top * top < torch.finfo(top.dtype).max):
            return
    name = names[int(norms.argmax())]
    raise ValueError(
        f"{name} has rows of norm up to {float(top):.3g}, so with normalize=False the logits "
        f"(scale {float(scale):.3g} × norm²) overflow {top.dtype}; pass unit-norm embeddings "
        "or use normalize=True"
    )


def check_device(name: str, x: Tensor, other_name: str, device: torch.device) -> None:
    """Check that ``x`` is on ``device``, the device of argument ``other_name``."""
    if x.device != device:
        raise ValueError(
            f"{name} is on {x.device} but {other_name} is on {device}; "
            f"move both to one device (e.g. {name}.to({other_name}.device))"
        )


def check_pair(image_emb: Tensor, text_emb: Tensor) -> None:
    """Check image/text embeddings: 2-D, one device, finite, same batch size ≥ 2, same width."""
    check_embeddings("image_emb", image_emb, min_rows=2)
    check_embeddings("text_emb", text_emb, min_rows=2)
    check_device("text_emb", text_emb, "image_emb", image_emb.device)
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
    check_finite("image_emb", image_emb)
    check_finite("text_emb", text_emb)


def check_ids(positive_ids: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
    """Validate ``positive_ids`` (length ``batch``, integers); return them as int64.

    A sequence or a CPU tensor is moved to ``device``; a tensor on another accelerator (or
    ``meta``) is refused rather than copied across devices.
    """
    if positive_ids is None:
        return None
    if isinstance(positive_ids, Tensor) and positive_ids.device not in (
        device,
        torch.device("cpu"),
    ):
        check_device("positive_ids", positive_ids, "image_emb", device)
    try:
        ids = torch.as_tensor(positive_ids)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"positive_ids must be a ({batch},) integer tensor or sequence, "
            f"got {type(positive_ids).__name__} ({err})"
        ) from None
    if ids.dim() != 1 or ids.shape[0] != batch:
        raise ValueError(
            f"positive_ids must have shape ({batch},) (one id per image-text pair), "
            f"got {tuple(ids.shape)}"
        )
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"positive_ids must be integers, got dtype {ids.dtype}")
    return ids.to(device=device, dtype=torch.long)


def check_extra(extra_text_emb: Tensor | None, text_emb: Tensor) -> Tensor | None:
    """Validate NegCLIP extra negatives, (B, K, d) or (M, d), and flatten them to (M, d)."""
    if extra_text_emb is None:
        return None
    if not isinstance(extra_text_emb, Tensor) or extra_text_emb.dim() not in (2, 3):
        shape = tuple(extra_text_emb.shape) if isinstance(extra_text_emb, Tensor) else None
        raise ValueError(
            f"extra_text_emb must be (B, K, d) or (M, d) hard-negative caption embeddings, "
            f"got {shape if shape is not None else type(extra_text_emb).__name__}"
        )
    flat = extra_text_emb.reshape(-1, extra_text_emb.shape[-1])
    dim = text_emb.shape[1]
    if flat.shape[1] != dim:
        raise ValueError(
            f"extra_text_emb has dimension {flat.shape[1]} but text_emb has {dim}; "
            "encode the hard-negative captions with the same text tower and projection"
        )
    check_embeddings("extra_text_emb", flat, min_rows=0)
    check_device("extra_text_emb", flat, "text_emb", text_emb.device)
    check_finite("extra_text_emb", flat)
    return flat
