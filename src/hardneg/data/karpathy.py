"""COCO / Flickr30k in the Karpathy-split JSON format, as an image–caption dataset.

The format (Karpathy & Fei-Fei 2015, "Deep visual-semantic alignments", §4; the
``dataset_coco.json`` / ``dataset_flickr30k.json`` files)::

    {"dataset": "coco" | "flickr30k",
     "images": [{"filepath": "val2014",            # COCO only
                 "filename": "COCO_val2014_000000391895.jpg",
                 "split": "train" | "val" | "test" | "restval",
                 "imgid": 0,
                 "sentences": [{"raw": "A man ...", "tokens": [...], "sentid": 0}, ...],
                 "sentids": [0, ...]}, ...]}

Each image's captions are its positives and its ``imgid`` is its semantics id (BENCHMARK.md:
real datasets load through the same ``Dataset`` interface as DigitScenes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hardneg.data.dataset import ImageCaptionDataset

__all__ = ["KARPATHY_SPLITS", "KarpathyDataset", "resize_center_crop"]

KARPATHY_SPLITS: tuple[str, ...] = ("train", "val", "test", "restval")


def resize_center_crop(image: Image.Image, size: int) -> Tensor:
    """Resize the short side to ``size`` (bicubic), center-crop, return (3, size, size) in [0, 1].

    Example:
        >>> resize_center_crop(Image.new("RGB", (40, 20), (255, 0, 0)), 10)[:, 0, 0]
        tensor([1., 0., 0.])
    """
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


def _field(entry: dict[str, Any], key: str, position: int) -> Any:
    if key not in entry:
        name = entry.get("filename", "?") if isinstance(entry, dict) else "?"
        raise KeyError(
            f"Karpathy JSON image entry #{position} (filename {name!r}) has no {key!r} key; "
            "expected keys filename, split, imgid, sentences (+ filepath for COCO)"
        )
    return entry[key]


class KarpathyDataset(ImageCaptionDataset):
    """One split of a COCO / Flickr30k Karpathy JSON, images resized and center-cropped.

    Args:
        json_path: the ``dataset_*.json`` file.
        image_root: folder holding the images: ``<root>/<filepath>/<filename>`` when entries
            have ``filepath`` (COCO), else ``<root>/<filename>`` (Flickr30k).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"restval"``.
        image_size: output side (short side resized, then center crop).
        merge_restval: with ``split="train"``, also include the ``restval`` images (the usual
            COCO training set of 113k images).
        check_files: verify at construction that every image file of the split exists.
        transform: optional callable on the (3, image_size, image_size) tensor.

    Raises:
        FileNotFoundError: the JSON or an image file is missing (message names file and root).
        KeyError: an entry lacks a required key (message names key and entry).
        ValueError: bad split / size, or a malformed JSON.

    Example:
        >>> ds = KarpathyDataset("dataset_coco.json", "coco/", split="train")  # doctest: +SKIP
        >>> item = ds[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_root: str | os.PathLike,
        split: str = "test",
        image_size: int = 224,
        merge_restval: bool = True,
        check_files: bool = True,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(transform)
        if split not in KARPATHY_SPLITS:
            raise ValueError(
                f"unknown split {split!r}; valid Karpathy splits are {', '.join(KARPATHY_SPLITS)}"
            )
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        json_path, self.image_root = Path(json_path), Path(image_root)
        if not json_path.is_file():
            raise FileNotFoundError(f"Karpathy JSON {json_path} does not exist")
        if not self.image_root.is_dir():
            raise FileNotFoundError(
                f"image_root {self.image_root} is not a directory; pass the folder that holds "
                "the images (COCO: the one containing train2014/ and val2014/)"
            )
        try:
            data = json.loads(json_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{json_path} is not valid JSON ({err})") from err
        if not isinstance(data, dict) or "images" not in data:
            raise KeyError(f"{json_path} has no top-level 'images' key (not a Karpathy JSON)")
        wanted = {split, "restval"} if split == "train" and merge_restval else {split}
        self.split, self.image_size, self.dataset_name = split, image_size, data.get("dataset")
        self.paths: list[Path] = []
        self.captions = []
        ids = []
        for position, entry in enumerate(data["images"]):
            if not isinstance(entry, dict):
                raise ValueError(f"{json_path}: image entry #{position} is not an object")
            if _field(entry, "split", position) not in wanted:
                continue
            folder = self.image_root / entry["filepath"] if "filepath" in entry else self.image_root
            self.paths.append(folder / _field(entry, "filename", position))
            sentences = _field(entry, "sentences", position)
            try:
                captions = [str(s["raw"]).strip() for s in sentences]
            except (KeyError, TypeError) as err:
                raise KeyError(
                    f"Karpathy JSON image entry #{position} ({entry['filename']!r}): every "
                    "sentence needs a 'raw' caption"
                ) from err
            if not captions:
                raise ValueError(
                    f"Karpathy JSON image entry #{position} ({entry['filename']!r}) has no "
                    "sentences; every image needs at least one caption"
                )
            self.captions.append(captions)
            ids.append(int(_field(entry, "imgid", position)))
        if not self.paths:
            raise ValueError(f"{json_path} has no images in split(s) {sorted(wanted)}")
        self.semantic_ids = np.asarray(ids, dtype=np.int64)
        if len(np.unique(self.semantic_ids)) != len(ids):
            raise ValueError(f"{json_path}: duplicate imgid values in split {split!r}")
        if check_files:
            for path in self.paths:
                self._check_file(path)

    def _check_file(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(
                f"image file {path} listed in the Karpathy JSON is missing (image_root "
                f"{self.image_root}); check image_root or download the images"
            )

    def load_image(self, index: int) -> Tensor:
        """Image ``index`` resized and center-cropped to (3, image_size, image_size) in [0, 1]."""
        path = self.paths[index]
        self._check_file(path)
        with Image.open(path) as image:
            return resize_center_crop(image, self.image_size)
