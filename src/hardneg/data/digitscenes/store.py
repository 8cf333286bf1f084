"""The DigitScenes cache: each split of a build as one ``.npz`` file, generated when missing.

:func:`load_digitscenes` caches each split under a directory keyed by the config's
fingerprint, ``<cache_dir>/digitscenes-<fingerprint>/<split>.npz`` (written to a temp file and
atomically renamed); a corrupt or truncated file is regenerated with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hardneg.data.atomic_files import atomic_write
from hardneg.data.digitscenes.captions import HardNegative
from hardneg.data.digitscenes.config import (
    GENERATOR_VERSION,
    PRESETS,
    SPLITS,
    DigitScenesConfig,
    check_split,
)
from hardneg.data.digitscenes.generate import generate_split
from hardneg.data.digitscenes.scenes import SceneSplit

__all__ = ["default_cache_dir", "load_digitscenes", "read_split", "split_path"]

_ARRAYS = ("images", "semantic_ids", "digits", "colours", "boxes", "scan_indices")


def default_cache_dir() -> Path:
    """``$HARDNEG_CACHE_DIR`` if set, else ``~/.cache/hardneg``."""
    return Path(os.environ.get("HARDNEG_CACHE_DIR", Path.home() / ".cache" / "hardneg"))


def split_path(config: DigitScenesConfig, split: str, cache_dir: str | os.PathLike) -> Path:
    """Cache file of a split: ``<cache_dir>/digitscenes-<config fingerprint>/<split>.npz``."""
    return Path(cache_dir) / f"digitscenes-{config.fingerprint()}" / f"{check_split(split)}.npz"


def _write_split(split: SceneSplit, path: Path) -> None:
    meta = {
        "name": split.name,
        "captions": split.captions,
        "partial_captions": split.partial_captions,
        "relations": split.relations,
        "hard_negatives": [
            [[h.caption, h.kind, *h.span, *h.box, h.source, h.semantic_id] for h in negs]
            for negs in split.hard_negatives
        ],
    }
    meta_bytes = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays = {name: getattr(split, name) for name in _ARRAYS}
    atomic_write(path, lambda f: np.savez(f, meta_json=meta_bytes, **arrays))


def read_split(path: str | os.PathLike) -> SceneSplit:
    """Read a split written by :func:`load_digitscenes`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated or corrupt (message names it and says what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no DigitScenes split file at {path}; generate it first")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in _ARRAYS}
            meta = json.loads(data["meta_json"].tobytes().decode())
        negatives = [
            [
                HardNegative(
                    caption=r[0],
                    kind=r[1],
                    span=(r[2], r[3]),
                    box=(r[4], r[5], r[6], r[7]),
                    source=r[8],
                    semantic_id=r[9],
                )
                for r in negs
            ]
            for negs in meta["hard_negatives"]
        ]
        return SceneSplit(
            name=meta["name"],
            captions=meta["captions"],
            partial_captions=meta["partial_captions"],
            relations=meta["relations"],
            hard_negatives=negatives,
            **arrays,
        )
    except (
        zipfile.BadZipFile,
        OSError,
        EOFError,
        KeyError,
        ValueError,
        IndexError,
        TypeError,
    ) as err:
        raise ValueError(
            f"DigitScenes cache file {path} is corrupt or truncated ({type(err).__name__}: "
            f"{err}); delete it or call load_digitscenes(..., regenerate=True)"
        ) from err


def load_digitscenes(
    config: DigitScenesConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    splits: Iterable[str] = SPLITS,
    regenerate: bool = False,
) -> dict[str, SceneSplit]:
    """Load DigitScenes splits from the cache, generating (and caching) missing ones.

    A corrupt or truncated cache file is regenerated with a warning; ``regenerate=True``
    rebuilds every requested split. Files are written to a temp file and atomically renamed,
    so an interrupted run never leaves a half-written split.

    Args:
        config: the build (default ``PRESETS["quick"]``).
        cache_dir: cache root (default :func:`default_cache_dir`); the files go to
            ``<cache_dir>/digitscenes-<fingerprint>/``.
        splits: which splits to load.
        regenerate: ignore existing files.

    Returns:
        ``{split name: SceneSplit}``.

    Example:
        >>> import tempfile
        >>> from hardneg.data.digitscenes.config import DigitScenesConfig
        >>> cfg = DigitScenesConfig(n_train=8, n_val=2, n_test=2, n_test_novel=2)
        >>> data = load_digitscenes(cfg, tempfile.mkdtemp(), splits=["train", "test_novel"])
        >>> {k: len(v) for k, v in data.items()}
        {'train': 8, 'test_novel': 2}
    """
    config = PRESETS["quick"] if config is None else config
    if not isinstance(config, DigitScenesConfig):
        raise ValueError(
            f"config must be a DigitScenesConfig (or None for the quick preset), got "
            f"{type(config).__name__}; see hardneg.data.digitscenes.PRESETS"
        )
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    splits = [check_split(s) for s in ([splits] if isinstance(splits, str) else splits)]
    out: dict[str, SceneSplit] = {}
    for name in splits:
        path = split_path(config, name, cache_dir)
        if path.is_file() and not regenerate:
            try:
                out[name] = read_split(path)
                continue
            except ValueError as err:
                warnings.warn(f"{err}; regenerating it", RuntimeWarning, stacklevel=2)
        out[name] = generate_split(config, name)
        _write_split(out[name], path)
    config_file = cache_dir / f"digitscenes-{config.fingerprint()}" / "config.json"
    if out and not config_file.is_file():
        text = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(config)}, indent=2)
        atomic_write(config_file, lambda f: f.write(text.encode()))
    return out
