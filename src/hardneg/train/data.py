"""In-memory training/evaluation tensors for a DigitScenes run.

Scenes are small (48×48), so every split lives in memory as uint8 tensors and a batch is an
index lookup — no DataLoader workers needed on a 2-core machine. Captions are rows of a
:class:`~hardneg.train.textbank.TextBank` of frozen text-tower features.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from hardneg.data.digitscenes import PRESETS, SceneSplit, load_digitscenes
from hardneg.models.text import TextTower
from hardneg.train.config import DataConfig
from hardneg.train.textbank import TextBank, encode_bank


@dataclass
class SplitTensors:
    """One split: images (N, 3, H, W) uint8, caption rows (N, C), semantic ids (N,), hard
    negative caption rows (N, K) (−1 = none), and the :class:`SceneSplit` annotations."""

    images: Tensor
    caption_rows: Tensor
    semantic_ids: Tensor
    hard_negative_rows: Tensor
    scenes: SceneSplit

    def __len__(self) -> int:
        return self.images.shape[0]

    def image_batch(self, index: Tensor, device: torch.device | str) -> Tensor:
        """Float images in [0, 1] of the given scenes."""
        return self.images[index].to(device, non_blocking=True).float().div_(255.0)


def _split_tensors(split: SceneSplit, bank: TextBank) -> SplitTensors:
    images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2).contiguous()
    n_caps = max(len(c) for c in split.captions)
    caption_rows = torch.stack([bank.rows((caps * n_caps)[:n_caps]) for caps in split.captions])
    k = max((len(h) for h in split.hard_negatives), default=0)
    hard = torch.full((len(split), max(k, 1)), -1, dtype=torch.long)
    for i, negs in enumerate(split.hard_negatives):
        known = [h.caption for h in negs if h.caption in bank.index]
        if known:
            hard[i, : len(known)] = bank.rows(known)
    return SplitTensors(
        images=images,
        caption_rows=caption_rows,
        semantic_ids=torch.from_numpy(np.asarray(split.semantic_ids, dtype=np.int64)),
        hard_negative_rows=hard,
        scenes=split,
    )


def load_run_data(
    config: DataConfig,
    tower: TextTower,
    progress: bool = True,
    splits: tuple[str, ...] = ("train", "test", "test_novel"),
) -> tuple[TextBank, dict[str, SplitTensors]]:
    """Generate (or load) DigitScenes and encode the needed captions once with the frozen tower.

    Encoded: every caption of ``splits``, the hard-negative captions of the evaluation splits,
    and those of train only when ``config.hard_negative_captions`` (NegCLIP) asks for them.
    """
    if config.dataset != "digitscenes":
        raise ValueError(
            f"data.dataset={config.dataset!r} is not built in; the trainer ships DigitScenes "
            "(use hardneg.data.karpathy with your own loop for COCO/Flickr)"
        )
    if config.preset not in PRESETS:
        raise ValueError(f"data.preset={config.preset!r} unknown; choose one of {sorted(PRESETS)}")
    base = PRESETS[config.preset]
    scenes = load_digitscenes(
        replace(base, seed=config.seed), cache_dir=config.cache_dir, splits=splits
    )
    texts: list[str] = []
    for name, split in scenes.items():
        for caps in split.captions:
            texts.extend(caps)
        # hard-negative captions: probes of the evaluation splits, NegCLIP extras of train
        if name != "train" or config.hard_negative_captions or config.encode_all:
            for negs in split.hard_negatives:
                texts.extend(h.caption for h in negs)
    bank = encode_bank(tower, texts, config.max_text_len, config.cache_dir, progress=progress)
    return bank, {name: _split_tensors(split, bank) for name, split in scenes.items()}
