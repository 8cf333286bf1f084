"""On-disk feature cache for frozen towers (ARCHITECTURE.md: "optional FeatureCache for frozen
towers (memmap, keyed by dataset item)").

Features of item ``i`` live in row ``i`` of a ``.npy`` memmap under
``<root>/<fingerprint(model, data)>/``; a second memmap flags the rows already computed, and a
``meta.json`` — written last, atomically — says what the directory holds. Changing the model
weights or the data changes the fingerprint (a new directory, so the features are recomputed);
a truncated/corrupt/mismatching directory is detected when opened and rebuilt.

Concurrency: one writer per directory. Under DDP let rank 0 :meth:`FeatureCache.fill` the cache
before the other ranks open it (or give each rank its own ``root``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hardneg.data.atomic_files import atomic_write

__all__ = ["FeatureCache", "content_fingerprint", "module_fingerprint"]

_FORMAT_VERSION = 1
_FEATURES, _FILLED, _META = "features.npy", "filled.npy", "meta.json"


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

    Use it as the *data* fingerprint of a :class:`FeatureCache` (e.g. the caption texts or the
    split's images), or to combine fingerprints.

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


def _open_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
    """Open a ``.npy`` memmap read-write after checking its header and exact file size.

    (``open_memmap(mode="r+")`` would silently zero-extend a truncated file.)
    """
    with open(path, "rb") as f:
        fmt = np.lib.format
        if fmt.read_magic(f) == (1, 0):
            header = fmt.read_array_header_1_0(f)  # (shape, fortran_order, dtype)
        else:
            header = fmt.read_array_header_2_0(f)
        offset = f.tell()
    if header[0] != shape or header[2] != dtype or header[1]:
        raise ValueError(f"{path.name} holds {header[0]} {header[2]}, expected {shape} {dtype}")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size != expected:
        raise ValueError(f"{path.name} has {path.stat().st_size} bytes, expected {expected}")
    return np.lib.format.open_memmap(path, mode="r+")


class FeatureCache:
    """Per-item features of a frozen tower, memory-mapped on disk and computed once.

    Args:
        root: parent directory of all caches.
        model_fingerprint: identifies the tower (e.g. :func:`module_fingerprint`).
        data_fingerprint: identifies the items (e.g. :func:`content_fingerprint` of the
            captions, or a user key that changes whenever the data does).
        n_items: number of items; item indices are ``0 … n_items-1``.
        shape: per-item feature shape, e.g. ``(384,)`` or ``(max_tokens, 384)``.
        dtype: storage dtype (numpy), e.g. ``np.float32`` or ``np.float16``.

    The directory is ``root / fingerprint``, a hash of both fingerprints. It is (re)built empty
    when ``meta.json`` is missing or disagrees with the arguments, or when a file is truncated.

    Example:
        >>> import tempfile
        >>> cache = FeatureCache(tempfile.mkdtemp(), "model-a", "data-1", n_items=4, shape=(2,))
        >>> def tower(idx):  # stands in for a frozen encoder
        ...     return torch.from_numpy(idx).float()[:, None] * torch.tensor([1.0, 0.0])
        >>> cache.get_or_compute([3, 1], tower)
        tensor([[3., 0.],
                [1., 0.]])
        >>> cache.n_filled
        2
    """

    def __init__(
        self,
        root: str | os.PathLike,
        model_fingerprint: str,
        data_fingerprint: str,
        n_items: int,
        shape: Sequence[int],
        dtype: Any = np.float32,
    ) -> None:
        for name, fp in (
            ("model_fingerprint", model_fingerprint),
            ("data_fingerprint", data_fingerprint),
        ):
            if not isinstance(fp, str) or not fp:
                raise ValueError(f"{name} must be a non-empty str (e.g. module_fingerprint(...))")
        if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
            raise ValueError(f"n_items must be an int ≥ 1, got {n_items!r}")
        shape = tuple(shape)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}")
        self.dtype = np.dtype(dtype)
        self.n_items, self.shape = n_items, shape
        self.meta = {
            "version": _FORMAT_VERSION,
            "model_fingerprint": model_fingerprint,
            "data_fingerprint": data_fingerprint,
            "n_items": n_items,
            "shape": list(shape),
            "dtype": self.dtype.str,
        }
        key = content_fingerprint(model_fingerprint, data_fingerprint)[:20]
        self.directory = Path(root) / key
        self._features: np.memmap
        self._filled: np.memmap
        if not self._open():
            self._create()

    # ------------------------------------------------------------------ storage
    def _open(self) -> bool:
        meta_path = self.directory / _META
        if not meta_path.is_file():
            if self.directory.exists():
                warnings.warn(
                    f"feature cache {self.directory} has no {_META} (interrupted build); "
                    "rebuilding it",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return False
        try:
            meta = json.loads(meta_path.read_text())
            meta.pop("complete", None)
            if meta != self.meta:
                raise ValueError(f"{_META} describes a different cache: {meta}")
            features = _open_npy(
                self.directory / _FEATURES, (self.n_items, *self.shape), self.dtype
            )
            filled = _open_npy(self.directory / _FILLED, (self.n_items,), np.dtype(np.bool_))
        except (OSError, ValueError, EOFError) as err:
            warnings.warn(
                f"feature cache {self.directory} is corrupt or stale ({err}); rebuilding it",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        self._features, self._filled = features, filled
        return True

    def _create(self) -> None:
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        self._features = np.lib.format.open_memmap(
            self.directory / _FEATURES,
            mode="w+",
            dtype=self.dtype,
            shape=(self.n_items, *self.shape),
        )
        self._filled = np.lib.format.open_memmap(
            self.directory / _FILLED, mode="w+", dtype=np.bool_, shape=(self.n_items,)
        )
        self._features.flush()
        self._filled.flush()
        self._write_meta(complete=False)

    def _write_meta(self, complete: bool) -> None:
        text = json.dumps({**self.meta, "complete": complete}, indent=2)
        atomic_write(self.directory / _META, lambda f: f.write(text.encode()))

    # ------------------------------------------------------------------ API
    @property
    def n_filled(self) -> int:
        """Number of items already computed."""
        return int(self._filled.sum())

    @property
    def complete(self) -> bool:
        """True once every item is computed."""
        return self.n_filled == self.n_items

    def _indices(self, indices: Any) -> np.ndarray:
        if isinstance(indices, Tensor):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"indices must be a 1-D sequence of ints, got shape {idx.shape}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_items):
            raise ValueError(
                f"indices must lie in [0, {self.n_items}) (the cache's n_items), got "
                f"[{idx.min()}, {idx.max()}]"
            )
        return idx

    def get(self, indices: Sequence[int] | np.ndarray | Tensor) -> Tensor:
        """Cached features of ``indices`` as a CPU tensor; KeyError if any is not computed."""
        idx = self._indices(indices)
        missing = idx[~self._filled[idx]]
        if missing.size:
            raise KeyError(
                f"items {missing[:5].tolist()} are not in the feature cache {self.directory}; "
                "use get_or_compute(indices, compute_fn) or fill(compute_fn)"
            )
        return torch.from_numpy(np.asarray(self._features[idx]))

    def _store(self, idx: np.ndarray, compute_fn: Callable[[np.ndarray], Any]) -> None:
        values = compute_fn(idx)
        if isinstance(values, Tensor):
            values = values.detach().cpu().numpy()
        values = np.asarray(values)
        if values.shape != (len(idx), *self.shape):
            raise ValueError(
                f"compute_fn returned shape {values.shape} for {len(idx)} items; expected "
                f"{(len(idx), *self.shape)} (n, *shape of the cache)"
            )
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            raise ValueError(
                f"compute_fn returned non-finite features for items {idx[:5].tolist()}…; "
                "fix the tower (nothing was cached)"
            )
        self._features[idx] = values.astype(self.dtype, copy=False)
        self._features.flush()  # rows first, then their flags: a crash never flags garbage
        self._filled[idx] = True
        self._filled.flush()
        if self.complete:
            self._write_meta(complete=True)

    def get_or_compute(
        self, indices: Sequence[int] | np.ndarray | Tensor, compute_fn: Callable[[np.ndarray], Any]
    ) -> Tensor:
        """Features of ``indices``; the missing ones are computed once and cached.

        Args:
            indices: item indices (repeats allowed).
            compute_fn: called with the sorted unique missing indices (int64 array); returns
                a tensor or array of shape ``(len(missing), *shape)``.

        Returns:
            (len(indices), *shape) CPU tensor in the cache dtype.
        """
        idx = self._indices(indices)
        missing = np.unique(idx[~self._filled[idx]])
        if missing.size:
            self._store(missing, compute_fn)
        return self.get(idx)

    def fill(
        self,
        compute_fn: Callable[[np.ndarray], Any],
        batch_size: int = 256,
        progress: bool = True,
    ) -> np.ndarray:
        """Compute every missing item in batches of ``batch_size``; return all features.

        Resumable: rows computed before an interruption are kept.

        Returns:
            read-only (n_items, *shape) memmap of the features.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int ≥ 1, got {batch_size!r}")
        missing = np.flatnonzero(~self._filled[:])
        batches = [missing[i : i + batch_size] for i in range(0, len(missing), batch_size)]
        if batches and progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"caching features ({self.directory.name})")
        for batch in batches:
            self._store(batch, compute_fn)
        return np.lib.format.open_memmap(self.directory / _FEATURES, mode="r")
