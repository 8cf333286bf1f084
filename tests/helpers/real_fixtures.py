"""Small real-data sources written to disk for tests: images, Karpathy JSON, CSV, HF, probes.

Every image ``i`` is a scene of a coloured square and a coloured circle side by side
(:func:`scene`); its captions say so in words the perturber knows ("a red square left of a
blue circle"), so hard negatives can be made from them. Images are distinct for any ``i``.
Plain functions: call them with pytest's ``tmp_path``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 30),
    "purple": (150, 40, 180),
    "white": (245, 245, 245),
}
_PAIRS = [(a, b) for a in COLOURS for b in COLOURS if a != b]


def scene(i: int) -> tuple[str, str, bool]:
    """``(square colour, circle colour, square is left)`` of image ``i``."""
    square, circle = _PAIRS[i % len(_PAIRS)]
    return square, circle, (i // len(_PAIRS)) % 2 == 0


def captions_for(i: int, k: int) -> list[str]:
    """The first ``k`` captions of image ``i`` (true descriptions, cycling through templates)."""
    square, circle, left = scene(i)
    rel, inverse = ("left of", "right of") if left else ("right of", "left of")
    templates = [
        f"a {square} square {rel} a {circle} circle",
        f"a {circle} circle {inverse} a {square} square",
        f"a {square} square and a {circle} circle",
    ]
    return [templates[j % len(templates)] for j in range(k)]


def negative_for(i: int) -> str:
    """A false caption of image ``i``: its relation flipped."""
    square, circle, left = scene(i)
    return f"a {square} square {'right of' if left else 'left of'} a {circle} circle"


def draw_scene(i: int, size: int = 40) -> Image.Image:
    """Image ``i``: the square on one half, the circle on the other, on a dark background."""
    square, circle, left = scene(i)
    shade = 10 * (i // (2 * len(_PAIRS)))  # keeps images distinct past 60
    image = Image.new("RGB", (size, size), (shade, shade, shade))
    pen = ImageDraw.Draw(image)
    half, pad = size // 2, max(1, size // 10)
    boxes = [(pad, pad, half - pad, size - pad), (half + pad, pad, size - pad, size - pad)]
    square_box, circle_box = boxes if left else boxes[::-1]
    pen.rectangle(square_box, fill=COLOURS[square])
    pen.ellipse(circle_box, fill=COLOURS[circle])
    return image


def write_images(directory: Path, n: int, size: int = 40, start: int = 0) -> list[Path]:
    """Write images ``start … start+n-1`` as ``directory/NNN.png``; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = directory / f"{i:03d}.png"
        draw_scene(i, size).save(path)
        paths.append(path)
    return paths


def write_karpathy(tmp_path: Path, n_train: int = 12, n_test: int = 6) -> tuple[Path, Path]:
    """A COCO-style Karpathy JSON (``filepath`` folders, 2 captions each, a ``negatives`` key).

    Images ``0 … n_train-1`` are ``train``, the next ``n_test`` are ``test``; imgid = index.
    Returns ``(json_path, image_dir)`` with images at ``image_dir/<filepath>/<filename>``.
    """
    root = Path(tmp_path) / "karpathy"
    image_dir = root / "images"
    entries = []
    for split, folder, start, n in (
        ("train", "train2014", 0, n_train),
        ("test", "val2014", n_train, n_test),
    ):
        for offset, path in enumerate(write_images(image_dir / folder, n, start=start)):
            i = start + offset
            sentences = [
                {"raw": text, "tokens": text.split(), "sentid": 2 * i + k}
                for k, text in enumerate(captions_for(i, 2))
            ]
            entries.append(
                {
                    "filepath": folder,
                    "filename": path.name,
                    "split": split,
                    "imgid": i,
                    "sentences": sentences,
                    "sentids": [s["sentid"] for s in sentences],
                    "negatives": [negative_for(i)],
                }
            )
    json_path = root / "dataset_coco.json"
    json_path.write_text(json.dumps({"dataset": "coco", "images": entries}))
    return json_path, image_dir


def _caption_rows(n: int, captions_per_image: int) -> list[tuple[int, str]]:
    """``(image, caption)`` rows, caption-major so an image's rows are not adjacent."""
    return [
        (i, captions_for(i, captions_per_image)[k])
        for k in range(captions_per_image)
        for i in range(n)
    ]


def write_csv(tmp_path: Path, n: int = 12, captions_per_image: int = 2, tsv: bool = False) -> Path:
    """open_clip CSV (``filepath``, ``title``, ``neg``) with one row per (image, caption).

    Paths are relative to the file's folder (``images/NNN.png``); ``neg`` holds
    ``|``-separated false captions. Returns the ``.csv`` / ``.tsv`` path.
    """
    root = Path(tmp_path) / "csv"
    paths = write_images(root / "images", n)
    path = root / ("train.tsv" if tsv else "train.csv")
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t" if tsv else ",")
        writer.writerow(["filepath", "title", "neg"])
        for i, text in _caption_rows(n, captions_per_image):
            negatives = f"{negative_for(i)}|a {scene(i)[1]} square"
            writer.writerow([f"images/{paths[i].name}", text, negatives])
    return path


def write_hf_saved(tmp_path: Path, n: int = 12, captions_per_image: int = 2) -> Path:
    """``datasets.Dataset.save_to_disk`` with an ``Image`` column (bytes embedded) and ``text``.

    ``text`` is a list of captions per row (a plain string when ``captions_per_image == 1``);
    ``negative`` holds one false caption. The source image files are deleted afterwards, so
    the saved folder must be self-contained. Returns the folder.
    """
    import datasets

    source = Path(tmp_path) / "hf_source_images"
    paths = write_images(source, n)
    texts = [captions_for(i, captions_per_image) for i in range(n)]
    table = datasets.Dataset.from_dict(
        {
            "image": [str(p) for p in paths],
            "text": texts if captions_per_image > 1 else [t[0] for t in texts],
            "negative": [negative_for(i) for i in range(n)],
        }
    ).cast_column("image", datasets.Image())
    folder = Path(tmp_path) / "hf_saved"
    table.save_to_disk(str(folder))
    shutil.rmtree(source)
    return folder


def write_hf_imagefolder(tmp_path: Path, n: int = 12, captions_per_image: int = 2) -> Path:
    """An ``imagefolder``: images plus ``metadata.csv`` (``file_name``, ``text``, ``negative``).

    One metadata row per (image, caption), caption-major, so an image's rows repeat its
    ``file_name``. Returns the folder.
    """
    folder = Path(tmp_path) / "hf_imagefolder"
    paths = write_images(folder, n)
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text", "negative"])
        for i, text in _caption_rows(n, captions_per_image):
            writer.writerow([paths[i].name, text, negative_for(i)])
    return folder


def write_compositional(tmp_path: Path, n: int = 6) -> Path:
    """Compositional probes JSON: rows ``{image, caption, negative, kind}``, kinds alternating.

    Even rows flip the relation (``kind="relation"``), odd rows swap the colours
    (``kind="swap_attributes"``). Images are relative to the JSON (``images/NNN.png``).
    """
    root = Path(tmp_path) / "probes"
    paths = write_images(root / "images", n)
    rows = []
    for i, path in enumerate(paths):
        square, circle, left = scene(i)
        caption = captions_for(i, 1)[0]
        if i % 2 == 0:
            negative, kind = negative_for(i), "relation"
        else:
            rel = "left of" if left else "right of"
            negative, kind = f"a {circle} square {rel} a {square} circle", "swap_attributes"
        rows.append(
            {"image": f"images/{path.name}", "caption": caption, "negative": negative, "kind": kind}
        )
    json_path = root / "probes.json"
    json_path.write_text(json.dumps(rows, indent=1))
    return json_path
