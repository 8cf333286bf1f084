"""On-disk feature cache for frozen towers (memory-mapped, keyed by dataset item).

Features of item ``i`` live in row ``i`` of a ``.npy`` memmap under
``<root>/<fingerprint(model, data)>/``; a second memmap flags the rows already computed, a third
holds a checksum (8-byte BLAKE2b) of each computed row, and a ``meta.json`` — written last,
atomically — says what the directory holds. Changing the model weights or the data changes the
fingerprint (a new directory, so the features are recomputed); a truncated/mismatching
directory is detected when opened and rebuilt, and rows whose bytes no longer match their
checksum (bit rot, a stray write) are recomputed. The checksums are verified once per process
per file version (size, mtime, inode), so reopening a verified cache costs nothing.

Concurrency: one writer per directory. Under DDP let rank 0 :meth:`FeatureCache.fill` the cache
before the other ranks open it (or give each rank its own ``root``).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hardneg.data.atomic_files import atomic_write, remove_stale_temps
from hardneg.data.checksums import mark_verified, row_digests, verified_in_process
from hardneg.data.fingerprint import content_fingerprint, module_fingerprint

__all__ = ["FeatureCache", "content_fingerprint", "module_fingerprint"]

_FORMAT_VERSION = 2  # 2: per-row checksums
_FEATURES, _FILLED, _DIGESTS, _META = "features.npy", "filled.npy", "digests.npy", "meta.json"


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
    when ``meta.json`` is missing or disagrees with the arguments, or when a file is truncated;
    rows that fail their checksum are marked missing (recomputed on demand) with a warning.

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
        self._digests: np.memmap
        remove_stale_temps(self.directory)
        if not self._open():
            self._create()

    @property
    def _files(self) -> list[Path]:
        return [self.directory / name for name in (_FEATURES, _FILLED, _DIGESTS)]

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
            digests = _open_npy(self.directory / _DIGESTS, (self.n_items,), np.dtype(np.uint64))
        except (OSError, ValueError, EOFError) as err:
            warnings.warn(
                f"feature cache {self.directory} is corrupt or stale ({err}); rebuilding it",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        self._features, self._filled, self._digests = features, filled, digests
        if not verified_in_process(self._files):
            self._verify()
        return True

    def _verify(self) -> None:
        """Unflag rows whose flag is not 0/1 or whose bytes do not match their checksum."""
        flags = np.asarray(self._filled).view(np.uint8)
        invalid = np.flatnonzero(flags > 1)
        filled = np.flatnonzero(flags == 1)
        corrupt = [
            chunk[row_digests(self._features[chunk]) != self._digests[chunk]]
            for chunk in np.array_split(filled, max(1, len(filled) // 4096))
        ]
        corrupt = np.concatenate(corrupt) if corrupt else filled[:0]
        problems = []
        if invalid.size:
            problems.append(f"{_FILLED} rows {invalid[:10].tolist()} hold invalid flags")
        if corrupt.size:
            problems.append(
                f"{_FEATURES} rows {corrupt[:10].tolist()}"
                f"{' …' if corrupt.size > 10 else ''} do not match their checksums ({_DIGESTS})"
            )
        if problems:
            warnings.warn(
                f"feature cache {self.directory}: {'; '.join(problems)} (corrupt); "
                f"recomputing those {invalid.size + corrupt.size} rows",
                RuntimeWarning,
                stacklevel=4,
            )
            self._filled[np.concatenate([invalid, corrupt])] = False
            self._filled.flush()
            self._write_meta(complete=False)
        mark_verified(self._files)

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
        self._digests = np.lib.format.open_memmap(
            self.directory / _DIGESTS, mode="w+", dtype=np.uint64, shape=(self.n_items,)
        )
        for memmap in (self._features, self._filled, self._digests):
            memmap.flush()
        self._write_meta(complete=False)
        mark_verified(self._files)

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
        values = values.astype(self.dtype, copy=False)
        self._features[idx] = values
        self._features.flush()  # rows and checksums first, then their flags: a crash never
        self._digests[idx] = row_digests(values)  # flags garbage
        self._digests.flush()
        self._filled[idx] = True
        self._filled.flush()
        mark_verified(self._files)  # our own writes need no re-verification
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
