"""Checksums of cache files, verified once per process per file version.

A cache file is re-hashed only when it changed since this process last verified or wrote it
(its inode, size or modification time differ), so memory-mapped caches opened many times
per process are hashed once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["file_sha256", "mark_verified", "verified_in_process"]

# files verified (or written) by this process → their (inode, size, mtime) at that time
_VERIFIED: dict[tuple[str, ...], tuple[tuple[int, int, int], ...]] = {}


def _key(paths: Sequence[str | os.PathLike]) -> tuple[str, ...]:
    return tuple(str(Path(p).resolve()) for p in paths)


def _signature(paths: Sequence[str | os.PathLike]) -> tuple[tuple[int, int, int], ...]:
    stats = [os.stat(p) for p in paths]
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


def verified_in_process(paths: Sequence[str | os.PathLike]) -> bool:
    """True when ``paths`` were verified (or written) by this process and are unchanged since."""
    try:
        return _VERIFIED.get(_key(paths)) == _signature(paths)
    except OSError:
        return False


def mark_verified(paths: Sequence[str | os.PathLike]) -> None:
    """Record that ``paths``, as they are now, hold verified content."""
    _VERIFIED[_key(paths)] = _signature(paths)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 (hex) of a file's bytes, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
