"""The small trainer configuration the trainer tests share (tiny DigitScenes, tiny towers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def trainer_values(tmp_path: Path, text_model: str, **over: Any) -> dict[str, Any]:
    """Config values for a fast run: tiny preset, 1-layer text model, small ViT and head.

    Keyword arguments override top-level keys; dict values are merged one level deep.
    """
    values: dict[str, Any] = {
        "steps": 6,
        "batch_size": 16,
        "checkpoint_every": 0,
        "progress": False,
        "log_every": 1,
        "out_dir": str(tmp_path / "run"),
        "data": {"preset": "tiny", "cache_dir": str(tmp_path / "cache"), "text_model": text_model},
        "model": {
            "image_tower": "vit",
            "image_width": 32,
            "embed_dim": 32,
            "crossmodal_dim": 32,
            "crossmodal_heads": 2,
            "dropout": 0.1,
        },
        "miner": {"k": 4},
        "optim": {"warmup_steps": 2},
    }
    for key, value in over.items():
        if isinstance(value, dict):
            values[key] = {**values.get(key, {}), **value}
        else:
            values[key] = value
    return values
