"""The ``hardneg data`` sub-commands: generate and inspect DigitScenes.

The CLI parses arguments and calls these functions; they print a short report and return a
JSON-serialisable summary dict.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from hardneg.data.digitscenes import (
    PERTURBATIONS,
    PRESETS,
    SPLITS,
    SceneSplit,
    load_digitscenes,
    read_split,
    split_path,
)
from hardneg.data.digitscenes.contact_sheet import write_contact_sheet

__all__ = ["generate", "inspect", "split_summary"]


def split_summary(split: SceneSplit) -> dict:
    """Counts of a split: scenes, unique semantics ids, objects and hard negatives per kind.

    Example:
        >>> from hardneg.data.digitscenes import DigitScenesConfig, generate_split
        >>> cfg = DigitScenesConfig(n_train=6, n_val=1, n_test=1, n_test_novel=1)
        >>> split_summary(generate_split(cfg, "train"))["scenes"]
        6
    """
    kinds = Counter(neg.kind for negs in split.hard_negatives for neg in negs)
    n_objects = Counter(split.n_objects.tolist())
    return {
        "split": split.name,
        "scenes": len(split),
        "unique_semantic_ids": len(np.unique(split.semantic_ids)),
        "image_shape": list(split.images.shape[1:]),
        "scenes_with_2_objects": int(n_objects.get(2, 0)),
        "scenes_with_3_objects": int(n_objects.get(3, 0)),
        "captions_per_scene": len(split.captions[0]) if len(split) else 0,
        "hard_negatives": {kind: int(kinds.get(kind, 0)) for kind in PERTURBATIONS},
    }


def _print_table(rows: list[dict]) -> None:
    columns = ["split", "scenes", "unique_semantic_ids", *PERTURBATIONS]
    table = [[str(r[c]) if c in r else str(r["hard_negatives"][c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[k]) for t in table)) for k, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))


def generate(out_dir: str, preset: str = "quick", seed: int = 0) -> dict:
    """Generate and cache every DigitScenes split of a preset, and write a contact sheet.

    Args:
        out_dir: cache root; files go to ``<out_dir>/digitscenes-<fingerprint>/``.
        preset: a key of :data:`~hardneg.data.digitscenes.PRESETS` (``tiny``, ``quick``,
            ``full``).
        seed: generation seed.

    Returns:
        ``{"preset", "config", "directory", "seconds", "contact_sheet",
        "splits": {name: {**split_summary, "path"}}}``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = dataclasses.replace(PRESETS[preset], seed=seed)
    start = time.perf_counter()
    splits = load_digitscenes(config, out_dir)
    seconds = time.perf_counter() - start
    directory = split_path(config, "train", out_dir).parent
    sheet = write_contact_sheet(splits["train"], directory / "contact_sheet.png")
    summary = {
        "preset": preset,
        "config": dataclasses.asdict(config),
        "directory": str(directory),
        "seconds": round(seconds, 2),
        "contact_sheet": str(sheet),
        "splits": {
            name: {**split_summary(s), "path": str(split_path(config, name, out_dir))}
            for name, s in splits.items()
        },
    }
    _print_table(list(summary["splits"].values()))
    print(f"wrote {directory} in {seconds:.1f}s; contact sheet {sheet}")
    return summary


def _find_split_file(cache_or_out_dir: Path, split: str) -> Path:
    if (cache_or_out_dir / f"{split}.npz").is_file():
        return cache_or_out_dir / f"{split}.npz"
    candidates = sorted(cache_or_out_dir.glob(f"digitscenes-*/{split}.npz"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FileNotFoundError(
            f"no DigitScenes {split}.npz in {cache_or_out_dir} or its digitscenes-*/ folders; "
            "run `hardneg data generate` first"
        )
    raise ValueError(
        f"{cache_or_out_dir} holds several DigitScenes builds "
        f"({', '.join(str(c.parent.name) for c in candidates)}); pass one of those folders"
    )


def inspect(cache_or_out_dir: str, split: str = "train", n: int = 16) -> dict:
    """Print a summary table of a cached split and write its contact sheet next to it.

    Args:
        cache_or_out_dir: a ``digitscenes-<fingerprint>`` folder, or the ``out_dir`` given to
            :func:`generate` if it holds exactly one build.
        split: one of :data:`~hardneg.data.digitscenes.SPLITS`.
        n: scenes on the contact sheet.

    Returns:
        :func:`split_summary` plus ``"path"``, ``"contact_sheet"`` and, when present,
        ``"config"``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(SPLITS)}")
    root = Path(cache_or_out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; pass the generate out_dir")
    path = _find_split_file(root, split)
    scenes = read_split(path)
    sheet = write_contact_sheet(scenes, path.parent / f"contact_sheet_{split}.png", n=n)
    summary = {**split_summary(scenes), "path": str(path), "contact_sheet": str(sheet)}
    config_file = path.parent / "config.json"
    if config_file.is_file():
        summary["config"] = json.loads(config_file.read_text())
    _print_table([summary])
    print(f"contact sheet: {sheet}")
    return summary
