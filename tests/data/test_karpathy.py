"""Karpathy-split JSON loader on a small real fixture (PIL images + JSON) built in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hardneg.data.dataset import collate_image_captions, flatten_captions
from hardneg.data.karpathy import KarpathyDataset

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _bands(width: int, height: int, colours) -> Image.Image:
    """Vertical bands of equal width, left to right."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    step = width // len(colours)
    for k, colour in enumerate(colours):
        arr[:, k * step : (k + 1) * step] = colour
    return Image.fromarray(arr)


def _entry(imgid, filename, split, captions, filepath=None):
    entry = {
        "filename": filename,
        "split": split,
        "imgid": imgid,
        "sentences": [
            {
                "raw": c,
                "tokens": c.lower().strip(" .").split(),
                "sentid": 10 * imgid + k,
                "imgid": imgid,
            }
            for k, c in enumerate(captions)
        ],
        "sentids": [10 * imgid + k for k in range(len(captions))],
    }
    if filepath is not None:
        entry = {"filepath": filepath, **entry}
    return entry


@pytest.fixture
def coco(tmp_path):
    """COCO-style: <root>/<filepath>/<filename>, with train / restval / val / test entries."""
    root = tmp_path / "coco"
    (root / "train2014").mkdir(parents=True)
    (root / "val2014").mkdir()
    # wide image: red | green | blue; the center crop keeps the green middle
    _bands(90, 30, [RED, GREEN, BLUE]).save(root / "val2014" / "a.png")
    _bands(30, 30, [BLUE]).save(root / "val2014" / "b.jpg", quality=95)
    _bands(40, 40, [RED]).save(root / "train2014" / "c.jpg", quality=95)
    _bands(40, 40, [GREEN]).save(root / "val2014" / "d.png")
    images = [
        _entry(
            7, "a.png", "test", ["A green thing. ", "Three bands", "bands of colour"], "val2014"
        ),
        _entry(3, "b.jpg", "test", ["a blue square"] * 2 + ["blue"], "val2014"),
        _entry(11, "c.jpg", "train", ["red"], "train2014"),
        _entry(12, "d.png", "restval", ["green", "all green"], "val2014"),
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path, root


def test_coco_test_split_round_trip(coco):
    path, root = coco
    ds = KarpathyDataset(path, root, split="test", image_size=24)
    assert len(ds) == 2
    assert ds.captions == [
        ["A green thing.", "Three bands", "bands of colour"],
        ["a blue square", "a blue square", "blue"],
    ]
    assert ds.semantic_ids.tolist() == [7, 3]
    item = ds[0]
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    # 90x30 resized to 72x24, center crop = columns 24..48 of 72 = the green band
    np.testing.assert_allclose(item["image"][:, 12, 12].numpy(), [0, 1, 0], atol=0.02)
    assert item["image"][1].mean() > 0.9
    blue = ds[1]["image"]  # JPEG: approximately blue
    assert blue[2].mean() > 0.9 and blue[0].mean() < 0.1
    assert item["semantic_id"] == 7 and item["index"] == 0


def test_restval_merged_into_train_only_when_asked(coco):
    path, root = coco
    merged = KarpathyDataset(path, root, split="train", image_size=8)
    plain = KarpathyDataset(path, root, split="train", image_size=8, merge_restval=False)
    assert merged.semantic_ids.tolist() == [11, 12]
    assert plain.semantic_ids.tolist() == [11]
    restval = KarpathyDataset(path, root, split="restval", image_size=8)
    assert restval.captions == [["green", "all green"]]


def test_flatten_and_dataloader_batches(coco):
    path, root = coco
    ds = KarpathyDataset(path, root, split="test", image_size=16)
    flat = flatten_captions(ds)
    assert flat.texts == [
        "A green thing.",
        "Three bands",
        "bands of colour",
        "a blue square",
        "a blue square",
        "blue",
    ]
    assert flat.image_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert flat.semantic_ids.tolist() == [7, 7, 7, 3, 3, 3]
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_image_captions)))
    assert batch["image"].shape == (2, 3, 16, 16)
    assert batch["semantic_id"].tolist() == [7, 3]
    assert batch["captions"][1] == ["a blue square", "a blue square", "blue"]


def test_flickr_layout_without_filepath(tmp_path):
    root = tmp_path / "flickr30k-images"
    root.mkdir()
    _bands(50, 20, [BLUE, RED]).save(root / "1000.jpg", quality=95)
    data = {
        "dataset": "flickr30k",
        "images": [_entry(0, "1000.jpg", "val", ["two halves", "blue and red"])],
    }
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps(data))
    ds = KarpathyDataset(path, root, split="val", image_size=20)
    assert ds.paths == [root / "1000.jpg"]
    image = ds[0]["image"]
    assert image.shape == (3, 20, 20)
    # 50x20 → crop columns 15..35: left part blue, right part red
    assert image[2, 10, 2] > 0.8 and image[0, 10, 17] > 0.8


def test_missing_image_file_names_file_and_root(coco):
    path, root = coco
    (root / "val2014" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)b\.jpg.*image_root .*coco"):
        KarpathyDataset(path, root, split="test")
    lazy = KarpathyDataset(path, root, split="test", check_files=False)
    with pytest.raises(FileNotFoundError, match=r"b\.jpg"):
        lazy[1]


def test_missing_json_key_names_key_and_entry(tmp_path, coco):
    path, root = coco
    data = json.loads(path.read_text())
    del data["images"][1]["imgid"]
    path.write_text(json.dumps(data))
    with pytest.raises(KeyError, match=r"imgid.*b\.jpg|b\.jpg.*imgid"):
        KarpathyDataset(path, root, split="test")
    bad = tmp_path / "not_karpathy.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(KeyError, match="images"):
        KarpathyDataset(bad, root)


def test_bad_arguments_raise_clear_errors(coco, tmp_path):
    path, root = coco
    with pytest.raises(ValueError, match="train, val, test, restval"):
        KarpathyDataset(path, root, split="dev")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        KarpathyDataset(tmp_path / "nope.json", root)
    with pytest.raises(FileNotFoundError, match="image_root"):
        KarpathyDataset(path, tmp_path / "no_images")
    with pytest.raises(ValueError, match="image_size"):
        KarpathyDataset(path, root, image_size=0)


# --------------------------------------------------------------- malformed JSON and images
def _set(*keys_and_value):
    """Mutation setting data[k1][k2]...[kn] = value (entry #1 is b.jpg of the test split)."""
    *keys, value = keys_and_value

    def mutate(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _delete(*keys):
    def mutate(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return mutate


# (case, mutation, exception, what the message must name besides the file)
MALFORMED = [
    ("raw null", _set("images", 1, "sentences", 0, "raw", None), ValueError,
     r"#1 \(filename 'b\.jpg'\), sentence #0: key 'raw' .* got None"),
    ("raw empty", _set("images", 1, "sentences", 2, "raw", ""), ValueError,
     r"#1 .*sentence #2: key 'raw' .* got ''"),
    ("raw blank", _set("images", 1, "sentences", 1, "raw", "  \n"), ValueError,
     r"#1 .*sentence #1: key 'raw' .* got '  \\n'"),
    ("raw number", _set("images", 0, "sentences", 0, "raw", 7), ValueError,
     r"#0 \(filename 'a\.png'\), sentence #0: key 'raw' .* got 7"),
    ("raw missing", _delete("images", 1, "sentences", 0, "raw"), KeyError,
     r"#1 .*sentence #0.*'raw'"),
    ("sentence not an object", _set("images", 1, "sentences", 0, "a caption"), ValueError,
     r"#1 .*key 'sentences'.* #0 is a str"),
    ("sentences null", _set("images", 1, "sentences", None), ValueError,
     r"#1 .*key 'sentences' must be a list .*got None"),
    ("sentences empty", _set("images", 1, "sentences", []), ValueError,
     r"#1 .*key 'sentences' .*no captions"),
    ("images null", _set("images", None), ValueError, r"key 'images' must be a list .*got None"),
    ("images object", _set("images", {}), ValueError, r"key 'images' must be a list .*dict"),
    ("filename number", _set("images", 1, "filename", 391895), ValueError,
     r"#1, key 'filename' must be a non-empty string, got 391895"),
    ("filename null", _set("images", 1, "filename", None), ValueError,
     r"#1, key 'filename' must be a non-empty string, got None"),
    ("filename empty", _set("images", 1, "filename", ""), ValueError,
     r"#1 .*key 'filename' must be a non-empty string, got ''"),
    ("filepath number", _set("images", 1, "filepath", 2014), ValueError,
     r"#1 .*key 'filepath' must be a string, got 2014"),
    ("imgid fraction", _set("images", 1, "imgid", 7.5), ValueError,
     r"#1 .*key 'imgid' must be an integer, got 7\.5"),
    ("imgid string", _set("images", 1, "imgid", "3"), ValueError,
     r"#1 .*key 'imgid' must be an integer, got '3'"),
    ("imgid bool", _set("images", 1, "imgid", True), ValueError,
     r"#1 .*key 'imgid' must be an integer, got True"),
    ("imgid duplicate", _set("images", 1, "imgid", 7), ValueError,
     r"entries #0 and #1 .*share imgid 7"),
    ("split null", _set("images", 2, "split", None), ValueError,
     r"#2 \(filename 'c\.jpg'\), key 'split' must be one of train, val, test, restval, got None"),
    ("split typo", _set("images", 3, "split", "tset"), ValueError,
     r"#3 .*key 'split' must be one of .*got 'tset'"),
    ("entry not an object", _set("images", 2, ["c.jpg"]), ValueError, r"#2 is a list, not an"),
]  # fmt: skip


@pytest.mark.parametrize(
    "mutate,error,message", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_json_names_file_entry_and_key(coco, mutate, error, message):
    path, root = coco
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(error, match=rf"dataset_coco\.json.*{message}"):
        KarpathyDataset(path, root, split="test")


def test_float_imgids_are_not_truncated_into_false_duplicates(coco):
    path, root = coco
    data = json.loads(path.read_text())
    data["images"][0]["imgid"], data["images"][1]["imgid"] = 3.2, 3.7  # both int() to 3
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"#0 .*key 'imgid' must be an integer, got 3\.2"):
        KarpathyDataset(path, root, split="test")
    data["images"][0]["imgid"], data["images"][1]["imgid"] = 7.0, 3.0  # integral: exact
    path.write_text(json.dumps(data))
    ds = KarpathyDataset(path, root, split="test")
    assert ds.semantic_ids.tolist() == [7, 3]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_names_the_file_and_entry(coco, damage):
    path, root = coco
    image = root / "val2014" / "b.jpg"
    content = image.read_bytes()
    broken = b"\x00not a jpeg" * 50 if damage == "garbage" else content[: len(content) // 2]
    image.write_bytes(broken)
    ds = KarpathyDataset(path, root, split="test", image_size=24)
    ds[0]  # the intact image still loads
    with pytest.raises(ValueError, match=rf"image file {image} \(.*entry #1\) .*corrupt"):
        ds[1]
