"""The image–caption dataset interface shared by DigitScenes and the Karpathy-JSON datasets.

Every dataset item is one image with all of its captions (multiple positives) and a
*semantics id*: two items with the same id mean the same thing, so one's
captions are positives — not negatives — for the other's image (the
FN-rate and multi-positive retrieval metrics read it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["FlatCaptions", "ImageCaptionDataset", "collate_image_captions", "flatten_captions"]


class ImageCaptionDataset(Dataset):
    """Base class: images, their captions and semantics ids behind one ``Dataset`` interface.

    ``dataset[i]`` returns ``{"image": FloatTensor(3, H, W) in [0, 1], "captions": list[str],
    "semantic_id": int, "index": i}``. Subclasses set :attr:`captions` (one list per image),
    :attr:`semantic_ids` ((N,) int64 array) and implement :meth:`load_image`.

    Real-data sources (:mod:`hardneg.data.sources`) also set :attr:`negatives` (per image, the
    user's hard-negative captions, or None) and :attr:`source` (``"csv /data/x.csv"``, read by
    :meth:`describe`).

    Args:
        transform: optional callable applied to the (3, H, W) float image (augmentation,
            normalisation); it must return a tensor.

    Example:
        >>> class Two(ImageCaptionDataset):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.captions = [["a cat"], ["a dog", "a puppy"]]
        ...         self.semantic_ids = np.array([0, 1])
        ...     def load_image(self, index):
        ...         return torch.zeros(3, 4, 4)
        >>> item = Two()[1]
        >>> item["captions"], item["semantic_id"], tuple(item["image"].shape)
        (['a dog', 'a puppy'], 1, (3, 4, 4))
    """

    captions: list[list[str]]
    semantic_ids: np.ndarray
    negatives: list[list[str]] | None = None
    source: str = ""

    def __init__(self, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        if transform is not None and not callable(transform):
            raise ValueError(
                f"transform must be a callable on a (3, H, W) tensor or None, got "
                f"{type(transform).__name__}"
            )
        self.transform = transform

    def load_image(self, index: int) -> Tensor:
        """Return image ``index`` as a float (3, H, W) tensor in [0, 1] (no transform)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.captions)

    def describe(self) -> str:
        """One line for logs: source (kind and path), #images, #captions, #hard negatives."""
        n_captions = sum(len(caps) for caps in self.captions)
        line = f"{self.source or type(self).__name__}: {len(self)} images, {n_captions} captions"
        if self.negatives is not None:
            line += f", {sum(len(negs) for negs in self.negatives)} hard negatives"
        return line

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise ValueError(f"index must be an int, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} images")
        index = int(index) % n
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return {
            "image": image,
            "captions": list(self.captions[index]),
            "semantic_id": int(self.semantic_ids[index]),
            "index": index,
        }


class FlatCaptions(NamedTuple):
    """Every caption of a dataset as one flat list, with the image and semantics id it belongs to.

    Attributes:
        texts: the M captions, image by image in dataset order.
        image_index: (M,) int64, the dataset index of each caption's image.
        semantic_ids: (M,) int64, the semantics id of each caption's image.
    """

    texts: list[str]
    image_index: np.ndarray
    semantic_ids: np.ndarray


def flatten_captions(dataset: Any) -> FlatCaptions:
    """Flatten per-image captions for retrieval evaluation (text side of I→T / T→I).

    Works on anything with ``captions`` (list of lists) and ``semantic_ids`` (N,): an
    :class:`ImageCaptionDataset` or a DigitScenes ``SceneSplit``. A caption is a positive for
    an image iff their semantics ids are equal.

    Args:
        dataset: object with ``captions`` and ``semantic_ids``.

    Returns:
        :class:`FlatCaptions` ``(texts, image_index, semantic_ids)``.

    Example:
        >>> class D:
        ...     captions = [["a", "b"], ["c"]]
        ...     semantic_ids = np.array([7, 9])
        >>> flat = flatten_captions(D())
        >>> flat.texts, flat.image_index.tolist(), flat.semantic_ids.tolist()
        (['a', 'b', 'c'], [0, 0, 1], [7, 7, 9])
    """
    captions = getattr(dataset, "captions", None)
    ids = getattr(dataset, "semantic_ids", None)
    if captions is None or ids is None:
        raise ValueError(
            f"dataset ({type(dataset).__name__}) needs `captions` and `semantic_ids` attributes; "
            "pass an ImageCaptionDataset or a SceneSplit"
        )
    ids = np.asarray(ids, dtype=np.int64)
    if len(captions) != len(ids):
        raise ValueError(
            f"dataset has {len(captions)} caption lists but {len(ids)} semantic_ids; "
            "they must have one entry per image"
        )
    counts = np.array([len(c) for c in captions], dtype=np.int64)
    image_index = np.repeat(np.arange(len(captions), dtype=np.int64), counts)
    texts = [text for caps in captions for text in caps]
    return FlatCaptions(texts, image_index, ids[image_index])


def collate_image_captions(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``DataLoader`` collate for :class:`ImageCaptionDataset` items.

    Stacks images (they must share a size) and keeps the captions as a list of lists —
    the default collate would transpose them.

    Returns:
        ``{"image": (B, 3, H, W), "captions": list[list[str]], "semantic_id": (B,) int64,
        "index": (B,) int64}``.

    Example:
        >>> items = [{"image": torch.zeros(3, 2, 2), "captions": ["x", "y"], "semantic_id": 4,
        ...           "index": 0}] * 2
        >>> out = collate_image_captions(items)
        >>> tuple(out["image"].shape), out["captions"], out["semantic_id"].tolist()
        ((2, 3, 2, 2), [['x', 'y'], ['x', 'y']], [4, 4])
    """
    if len(batch) == 0:
        raise ValueError("batch is empty; use a DataLoader with batch_size >= 1")
    shapes = {tuple(item["image"].shape) for item in batch}
    if len(shapes) != 1:
        raise ValueError(
            f"images in a batch have different shapes {sorted(shapes)}; resize them to one size "
            "(e.g. KarpathyDataset(image_size=...)) or pass a transform that does"
        )
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "captions": [list(item["captions"]) for item in batch],
        "semantic_id": torch.tensor([item["semantic_id"] for item in batch], dtype=torch.int64),
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.int64),
    }
