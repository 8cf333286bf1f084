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

Each image's captions are its positives and its ``imgid`` is its semantics id; real datasets
load through the same ``Dataset`` interface as DigitScenes. A malformed file (a null or empty
caption, a non-string filename, a fractional ``imgid``, …) or a corrupt image fails with an
error naming the file, the entry and the key.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from hardneg.data.dataset import ImageCaptionDataset
from hardneg.data.images import read_image, resize_center_crop

__all__ = ["KARPATHY_SPLITS", "KarpathyDataset", "resize_center_crop", "split_counts"]

KARPATHY_SPLITS: tuple[str, ...] = ("train", "val", "test", "restval")


class _Entry:
    """Reads and checks the keys of one image entry; errors name file, entry and key."""

    def __init__(self, json_path: Path, entry: Any, position: int) -> None:
        self.where = f"{json_path}: image entry #{position}"
        if not isinstance(entry, dict):
            raise ValueError(f"{self.where} is a {type(entry).__name__}, not an object")
        self.entry = entry
        name = entry.get("filename")
        self.where += f" (filename {name!r})" if isinstance(name, str) else ""

    def get(self, key: str) -> Any:
        if key not in self.entry:
            raise KeyError(
                f"{self.where} has no {key!r} key; expected keys filename, split, imgid, "
                "sentences (+ filepath for COCO)"
            )
        return self.entry[key]

    def bad(self, key: str, expected: str, value: Any) -> ValueError:
        return ValueError(f"{self.where}, key {key!r} must be {expected}, got {value!r}")

    def split(self) -> str:
        split = self.get("split")
        if split not in KARPATHY_SPLITS:
            raise self.bad("split", f"one of {', '.join(KARPATHY_SPLITS)}", split)
        return split

    def path(self, root: Path) -> Path:
        name = self.get("filename")
        if not isinstance(name, str) or not name:
            raise self.bad("filename", "a non-empty string", name)
        folder = self.entry.get("filepath", "")
        if not isinstance(folder, str):
            raise self.bad("filepath", "a string", folder)
        return root / folder / name

    def imgid(self) -> int:
        imgid = self.get("imgid")
        if isinstance(imgid, float) and imgid.is_integer():
            return int(imgid)  # 12.0: exact
        if isinstance(imgid, bool) or not isinstance(imgid, int):
            raise self.bad("imgid", "an integer", imgid)
        return imgid

    def captions(self) -> list[str]:
        sentences = self.get("sentences")
        if not isinstance(sentences, list):
            raise self.bad("sentences", "a list of {'raw': caption} objects", sentences)
        if not sentences:
            raise ValueError(
                f"{self.where}, key 'sentences' has no captions; every image needs at least one"
            )
        captions = []
        for k, sentence in enumerate(sentences):
            if not isinstance(sentence, dict):
                raise ValueError(
                    f"{self.where}, key 'sentences': sentence #{k} is a "
                    f"{type(sentence).__name__}, not a {{'raw': caption}} object"
                )
            if "raw" not in sentence:
                raise KeyError(f"{self.where}, sentence #{k} has no 'raw' caption key")
            raw = sentence["raw"]
            if not isinstance(raw, str) or not raw.strip():
                raise ValueError(
                    f"{self.where}, sentence #{k}: key 'raw' must be a non-empty caption "
                    f"string, got {raw!r}"
                )
            captions.append(raw.strip())
        return captions


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
        KeyError: an entry lacks a required key (message names file, entry and key).
        ValueError: bad split / size, a malformed JSON or entry (null or empty caption,
            non-string filename, non-integer or duplicate ``imgid``, unknown split; the message
            names file, entry and key), or — when an item is loaded — a corrupt image file.

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
        if not isinstance(data["images"], list):
            raise ValueError(
                f"{json_path}: key 'images' must be a list of image entries, got "
                f"{type(data['images']).__name__} {data['images']!r:.40}"
            )
        wanted = {split, "restval"} if split == "train" and merge_restval else {split}
        self.split, self.image_size, self.dataset_name = split, image_size, data.get("dataset")
        self.paths: list[Path] = []
        self.captions = []
        self.entry_positions: list[int] = []  # item → its entry's index in the JSON
        first_of: dict[int, int] = {}  # imgid → entry that has it
        for position, raw_entry in enumerate(data["images"]):
            entry = _Entry(json_path, raw_entry, position)
            if entry.split() not in wanted:
                continue
            self.paths.append(entry.path(self.image_root))
            self.captions.append(entry.captions())
            imgid = entry.imgid()
            if imgid in first_of:
                raise ValueError(
                    f"{json_path}: image entries #{first_of[imgid]} and #{position} (split(s) "
                    f"{sorted(wanted)}) share imgid {imgid}; imgids must be unique"
                )
            first_of[imgid] = position
            self.entry_positions.append(position)
        if not self.paths:
            raise ValueError(f"{json_path} has no images in split(s) {sorted(wanted)}")
        self.semantic_ids = np.asarray(list(first_of), dtype=np.int64)
        self.json_path = json_path
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
        where = f"{self.json_path.name} entry #{self.entry_positions[index]}"
        return read_image(path, self.image_size, where)


def split_counts(json_path: str | Path) -> dict[str, int]:
    """Images per ``split`` value of a Karpathy JSON (read once, entries not validated).

    Example:
        >>> import json, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "k.json"
        >>> _ = path.write_text(json.dumps({"images": [{"split": "train"}, {"split": "test"}]}))
        >>> split_counts(path)
        {'train': 1, 'test': 1}
    """
    entries = json.loads(Path(json_path).read_text()).get("images", [])
    return dict(Counter(str(e.get("split")) for e in entries if isinstance(e, dict)))
