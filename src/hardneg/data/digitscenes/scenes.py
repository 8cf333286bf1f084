"""A DigitScenes split in memory: :class:`SceneSplit` (images and annotations) and its
:class:`DigitScenesDataset` view as an :class:`~hardneg.data.dataset.ImageCaptionDataset`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hardneg.data.dataset import ImageCaptionDataset
from hardneg.data.digitscenes.captions import HardNegative

__all__ = ["DigitScenesDataset", "SceneSplit"]


@dataclass
class SceneSplit:
    """One generated DigitScenes split. Objects are in reading order; absent ones are -1.

    Attributes:
        name: split name (one of :data:`~hardneg.data.digitscenes.config.SPLITS`).
        images: (N, H, W, 3) uint8.
        captions: N lists of positive captions.
        partial_captions: N lists of one caption per object naming that object only, aligned
            with the objects (true of every scene holding it; see
            :func:`~hardneg.data.digitscenes.captions.partial_captions`).
        semantic_ids: (N,) int64; equal iff the canonical descriptions are equal.
        digits: (N, 3) int64 digit of each object.
        colours: (N, 3) int64 index into :data:`~hardneg.data.digitscenes.semantics.COLOURS`.
        boxes: (N, 3, 4) int64 ``(x0, y0, x1, y1)`` tight ink box, x1/y1 exclusive.
        relations: N relation names: ``"left_of"`` (objects left → right) or ``"above"``.
        hard_negatives: N lists of :class:`HardNegative`, in
            :data:`~hardneg.data.digitscenes.captions.PERTURBATIONS` order.
        scan_indices: (N, 3) int64 index of each object's scan in ``load_digits()``.
    """

    name: str
    images: np.ndarray
    captions: list[list[str]]
    partial_captions: list[list[str]]
    semantic_ids: np.ndarray
    digits: np.ndarray
    colours: np.ndarray
    boxes: np.ndarray
    relations: list[str]
    hard_negatives: list[list[HardNegative]]
    scan_indices: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be (N, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}"
            )
        sizes = {
            "captions": len(self.captions),
            "partial_captions": len(self.partial_captions),
            "semantic_ids": len(self.semantic_ids),
            "digits": len(self.digits),
            "colours": len(self.colours),
            "boxes": len(self.boxes),
            "relations": len(self.relations),
            "hard_negatives": len(self.hard_negatives),
            "scan_indices": len(self.scan_indices),
        }
        wrong = {k: v for k, v in sizes.items() if v != n}
        if wrong:
            raise ValueError(f"SceneSplit fields must all have {n} rows (images); got {wrong}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_objects(self) -> np.ndarray:
        """(N,) number of objects per scene."""
        return (self.digits >= 0).sum(axis=1)


class DigitScenesDataset(ImageCaptionDataset):
    """A :class:`SceneSplit` as an :class:`~hardneg.data.dataset.ImageCaptionDataset`.

    Items: ``{"image": (3, H, W) float in [0, 1], "captions": 5 positives, "semantic_id",
    "index"}``; hard negatives stay on :attr:`split` (``split.hard_negatives[index]``).

    Args:
        split: a generated or loaded split.
        transform: optional callable on the image tensor.

    Example:
        >>> from hardneg.data.digitscenes import DigitScenesConfig, generate_split
        >>> cfg = DigitScenesConfig(n_train=3, n_val=1, n_test=1, n_test_novel=1)
        >>> ds = DigitScenesDataset(generate_split(cfg, "train"))
        >>> tuple(ds[0]["image"].shape), len(ds)
        ((3, 48, 48), 3)
    """

    def __init__(
        self, split: SceneSplit, transform: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        super().__init__(transform)
        if not isinstance(split, SceneSplit):
            raise ValueError(
                f"split must be a SceneSplit (from load_digitscenes), got {type(split).__name__}"
            )
        self.split = split
        self.captions = split.captions
        self.semantic_ids = split.semantic_ids

    def load_image(self, index: int) -> Tensor:
        """Scene ``index`` as a float (3, H, W) tensor in [0, 1]."""
        return torch.from_numpy(self.split.images[index]).permute(2, 0, 1).float().div(255.0)
