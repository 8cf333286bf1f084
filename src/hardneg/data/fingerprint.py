"""Content fingerprints: SHA-256 of nested tensors, arrays, strings and numbers, and of a
module's weights (the keys of the on-disk caches)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["content_fingerprint", "module_fingerprint"]


def _update(h: Any, part: Any) -> None:
    if isinstance(part, Tensor):
        t = part.detach().cpu().contiguous()
        h.update(f"tensor{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(part, np.ndarray):
        a = np.ascontiguousarray(part)
        if a.dtype.hasobject:
            raise ValueError("cannot fingerprint an object array; pass a numeric or str array")
        h.update(f"array{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(part, bytes | bytearray):
        h.update(b"bytes%d:" % len(part))
        h.update(part)
    elif isinstance(part, str | int | float | bool) or part is None:
        text = repr(part).encode()
        h.update(b"scalar%d:" % len(text))
        h.update(text)
    elif isinstance(part, list | tuple):
        h.update(b"seq%d:" % len(part))
        for p in part:
            _update(h, p)
    elif isinstance(part, dict):
        h.update(b"dict%d:" % len(part))
        for key in sorted(part, key=repr):
            _update(h, key)
            _update(h, part[key])
    else:
        raise ValueError(
            f"cannot fingerprint a {type(part).__name__}; pass tensors, arrays, str, bytes, "
            "numbers, or lists/tuples/dicts of them"
        )


def content_fingerprint(*parts: Any) -> str:
    """SHA-256 (hex) of nested tensors / arrays / strings / numbers, including dtypes and shapes.

    Use it as the *data* part of a cache key (e.g. the caption texts or the split's images),
    or to combine fingerprints.

    Example:
        >>> content_fingerprint(["a red 3"], np.arange(3)) == content_fingerprint(
        ...     ["a red 3"], np.arange(3))
        True
        >>> content_fingerprint("a") == content_fingerprint(["a"])
        False
    """
    h = hashlib.sha256()
    _update(h, list(parts))
    return h.hexdigest()


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 (hex) of a module's class and every ``state_dict`` tensor (names, dtypes, values).

    Two modules share a fingerprint iff they have the same class and bit-identical weights and
    buffers, so features of a frozen tower are reused exactly as long as its weights are.

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> b.load_state_dict(a.state_dict())
        <All keys matched successfully>
        >>> module_fingerprint(a) == module_fingerprint(b)
        True
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    cls = type(module)
    return content_fingerprint(f"{cls.__module__}.{cls.__qualname__}", dict(module.state_dict()))
