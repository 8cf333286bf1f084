"""DigitScenes generator: determinism, split hygiene, captions, hard negatives, boxes, cache.

Captions are checked with a small parser written here (independent of the generator's
templates machinery): every positive must parse back to the scene's annotation, and every hard
negative must parse to the scene changed in exactly the annotated way.
"""

from __future__ import annotations

import json
import re
import warnings
from itertools import combinations, pairwise

import numpy as np
import pytest
import torch
from PIL import Image

from hardneg.data.dataset import collate_image_captions, flatten_captions
from hardneg.data.digitscenes import (
    PERTURBATIONS,
    SPLITS,
    DigitScenesConfig,
    DigitScenesDataset,
    commands,
    generate_digitscenes,
    generate_split,
    load_digitscenes,
    read_split,
    split_path,
)
from hardneg.data.digitscenes.contact_sheet import write_contact_sheet
from tests.helpers.captions import (
    COLOUR_NAMES,
    NUMBER,
    OBJECT,
    annotation,
    obj,
    parse,
)

# channels that must carry ink for each colour name (pure RGB tints)
CHANNELS = {
    "red": {0},
    "green": {1},
    "blue": {2},
    "yellow": {0, 1},
    "magenta": {0, 2},
    "cyan": {1, 2},
}

SMALL = DigitScenesConfig(n_train=300, n_val=60, n_test=80, n_test_novel=80, seed=3)


@pytest.fixture(scope="module")
def data():
    return generate_digitscenes(SMALL)


@pytest.fixture(scope="module")
def clean():
    """Noise-free scenes, so every non-zero pixel is ink."""
    cfg = DigitScenesConfig(n_train=60, n_val=1, n_test=1, n_test_novel=1, noise_std=0.0, seed=5)
    return generate_split(cfg, "train")


# ----------------------------------------------------------------------------- tests
def test_same_seed_is_identical_and_another_seed_differs():
    cfg = DigitScenesConfig(n_train=1, n_val=30, n_test=1, n_test_novel=1, seed=11)
    a, b = generate_split(cfg, "val"), generate_split(cfg, "val")
    c = generate_split(
        DigitScenesConfig(n_train=1, n_val=30, n_test=1, n_test_novel=1, seed=12), "val"
    )
    for field in ("images", "semantic_ids", "digits", "colours", "boxes", "scan_indices"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.captions == b.captions and a.hard_negatives == b.hard_negatives
    assert a.relations == b.relations and a.partial_captions == b.partial_captions
    assert not np.array_equal(a.images, c.images)
    assert a.captions != c.captions


def test_split_sizes_and_shapes(data):
    for name in SPLITS:
        s = data[name]
        assert len(s) == SMALL.size(name) and s.name == name
        assert s.images.shape == (len(s), 48, 48, 3) and s.images.dtype == np.uint8
        assert all(len(c) == 5 and len(set(c)) == 5 for c in s.captions)


def test_scan_indices_disjoint_between_splits_and_match_digit_labels(data):
    from sklearn.datasets import load_digits

    labels = load_digits().target
    used = {}
    for name, s in data.items():
        present = s.scan_indices >= 0
        np.testing.assert_array_equal(present, s.digits >= 0)
        np.testing.assert_array_equal(labels[s.scan_indices[present]], s.digits[present])
        used[name] = set(s.scan_indices[present].tolist())
    for a, b in combinations(["train", "val", "test"], 2):
        assert not used[a] & used[b], (a, b)
    assert not used["test_novel"] & (used["train"] | used["val"])


def test_test_novel_combos_never_appear_in_train(data):
    def combos(s):
        return {(int(d), int(c)) for d, c in zip(s.digits.ravel(), s.colours.ravel()) if d >= 0}

    train = combos(data["train"])
    novel = set(SMALL.novel_combos)
    for name in ("train", "val", "test"):
        assert not combos(data[name]) & novel, name
        # the held-out combinations are kept out of hard-negative text as well
        for negs in data[name].hard_negatives:
            for neg in negs:
                assert not set(parse(neg.caption)[1]) & novel, neg.caption
    s = data["test_novel"]
    for i in range(len(s)):
        objs = set(annotation(s, i)[1])
        assert objs - train, f"test_novel scene {i} has only combinations seen in train: {objs}"


def test_every_positive_caption_parses_back_to_the_annotation(data):
    for s in data.values():
        for i in range(len(s)):
            expected = annotation(s, i)
            for caption in s.captions[i]:
                assert parse(caption) == expected, caption


def _differing_words(a: str, b: str) -> list[int]:
    wa, wb = a.split(), b.split()
    assert len(wa) == len(wb), (a, b)
    return [k for k, (x, y) in enumerate(zip(wa, wb)) if x != y]


def _strip(word: str) -> str:
    return word.strip(",;:")


def _expected_kinds(relation, objs, novel):
    """Kinds that can produce a valid negative (brute force over the attribute changes)."""
    n, ok = len(objs), (lambda d, c: (d, c) not in novel)
    kinds = {"replace_digit", "change_colour"}
    for i, j in combinations(range(n), 2):
        (di, ci), (dj, cj) = objs[i], objs[j]
        if ci != cj and ok(di, cj) and ok(dj, ci):
            kinds.add("swap_colours")
        if di != dj and ok(dj, ci) and ok(di, cj):
            kinds.add("swap_digits")
    if objs[0] != objs[-1]:
        kinds.add("flip_relation")
    return kinds


def test_partial_captions_name_exactly_one_object_each_in_reading_order(data):
    partial = re.compile(
        f"(?:a|there is a|the scene shows a|somewhere there is a) {OBJECT}(?: is in the picture)?"
    )
    styles = set()
    for split in data.values():
        for i, caps in enumerate(split.partial_captions):
            objs = annotation(split, i)[1]
            assert len(caps) == len(objs), (split.name, i, caps)
            for cap, expected in zip(caps, objs):
                m = partial.fullmatch(cap)
                assert m and obj(m[1], m[2]) == expected, (cap, expected)
                styles.add((cap.split()[1], m[2].isdigit()))
    assert {digit for _, digit in styles} == {True, False}  # numerals and words


def test_hard_negatives_differ_exactly_in_the_annotated_way(data):
    word_class = {
        "replace_digit": set(NUMBER),
        "change_colour": set(COLOUR_NAMES),
        "swap_colours": set(COLOUR_NAMES),
        "swap_digits": set(NUMBER),
        "flip_relation": {"left", "right", "top", "bottom", "above", "below"},
    }
    seen_kinds = set()
    for name, s in data.items():
        novel = set() if name == "test_novel" else set(SMALL.novel_combos)
        for i in range(len(s)):
            relation, objs = annotation(s, i)
            negs = s.hard_negatives[i]
            kinds = [neg.kind for neg in negs]
            assert kinds == [k for k in PERTURBATIONS if k in kinds], "order / duplicates"
            assert set(kinds) == _expected_kinds(relation, objs, novel), (objs, kinds)
            for neg in negs:
                seen_kinds.add(neg.kind)
                neg_rel, neg_objs = parse(neg.caption)
                assert neg_rel == relation and len(neg_objs) == len(objs)
                assert neg_objs != objs, f"negative describes the scene: {neg.caption}"
                digits, colours = [o[0] for o in objs], [o[1] for o in objs]
                nd, nc = [o[0] for o in neg_objs], [o[1] for o in neg_objs]
                changed_d = [k for k in range(len(objs)) if nd[k] != digits[k]]
                changed_c = [k for k in range(len(objs)) if nc[k] != colours[k]]
                if neg.kind == "replace_digit":
                    assert len(changed_d) == 1 and not changed_c
                elif neg.kind == "change_colour":
                    assert len(changed_c) == 1 and not changed_d
                elif neg.kind == "swap_colours":
                    i0, j0 = changed_c
                    assert not changed_d and (nc[i0], nc[j0]) == (colours[j0], colours[i0])
                elif neg.kind == "swap_digits":
                    i0, j0 = changed_d
                    assert not changed_c and (nd[i0], nd[j0]) == (digits[j0], digits[i0])
                else:
                    assert neg_objs == objs[::-1]
                # span = exactly the words that changed vs the source positive (same template)
                diff = _differing_words(s.captions[i][neg.source], neg.caption)
                assert (diff[0], diff[-1] + 1) == neg.span, (neg.caption, diff)
                words = neg.caption.split()
                assert all(_strip(words[k]) in word_class[neg.kind] for k in diff)
                # box = union of the boxes of the objects whose position now reads differently
                moved = [k for k in range(len(objs)) if neg_objs[k] != objs[k]]
                b = s.boxes[i, moved]
                assert neg.box == (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
    assert seen_kinds == set(PERTURBATIONS)


def test_semantic_ids_equal_iff_canonical_descriptions_equal(data):
    by_desc, by_id = {}, {}
    for s in data.values():
        for i in range(len(s)):
            desc, sid = annotation(s, i), int(s.semantic_ids[i])
            by_desc.setdefault(desc, set()).add(sid)
            by_id.setdefault(sid, set()).add(desc)
    assert all(len(v) == 1 for v in by_desc.values())
    assert all(len(v) == 1 for v in by_id.values())
    assert len(by_id) < sum(len(s) for s in data.values()), "expected some repeated scenes"
    # a hard negative's id is the id of what it describes (checked where that scene exists)
    checked = 0
    for s in data.values():
        for negs in s.hard_negatives:
            for neg in negs:
                desc = parse(neg.caption)
                if desc in by_desc:
                    assert by_desc[desc] == {neg.semantic_id}
                    checked += 1
                else:
                    assert neg.semantic_id not in by_id
    assert checked > 0


def test_boxes_hold_exactly_the_ink_and_relations_are_unambiguous(clean):
    for i in range(len(clean)):
        relation, objs = annotation(clean, i)
        img = clean.images[i].astype(int)
        ink = img.max(axis=2) > 0
        covered = np.zeros_like(ink)
        boxes = clean.boxes[i, : len(objs)]
        for (x0, y0, x1, y1), (_, colour) in zip(boxes, objs):
            inside = ink[y0:y1, x0:x1]
            # tight: every edge row/column of the box holds ink
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            # the ink inside carries exactly the object's colour channels
            on = img[y0:y1, x0:x1][inside] > 0
            assert (on == [c in CHANNELS[COLOUR_NAMES[colour]] for c in range(3)]).all()
            covered[y0:y1, x0:x1] = True
        assert not (ink & ~covered).any(), f"scene {i}: ink outside every box"
        lo, hi = (0, 2) if relation == "left_of" else (1, 3)  # along the layout axis
        across_lo, across_hi = (1, 3) if relation == "left_of" else (0, 2)
        for a, b in pairwise(boxes):
            assert a[hi] <= b[lo], f"scene {i}: {relation} order violated"
            assert min(a[across_hi], b[across_hi]) > max(a[across_lo], b[across_lo]), (
                f"scene {i}: objects do not overlap across the axis (ambiguous relation)"
            )


def test_unknown_split_raises_value_error_listing_valid_splits():
    with pytest.raises(ValueError, match="train, val, test, test_novel"):
        generate_split(SMALL, "dev")
    with pytest.raises(ValueError, match="valid splits"):
        load_digitscenes(SMALL, "/nonexistent", splits=["training"])


def test_bad_config_raises_value_error_naming_the_field():
    with pytest.raises(ValueError, match="canvas"):
        DigitScenesConfig(canvas=8)
    with pytest.raises(ValueError, match="n_captions"):
        DigitScenesConfig(n_captions=9)
    with pytest.raises(ValueError, match="scan_fractions"):
        DigitScenesConfig(scan_fractions=(0.5, 0.5, 0.5))


def test_cache_round_trip_reuses_file_and_recovers_from_truncation(tmp_path):
    cfg = DigitScenesConfig(n_train=1, n_val=1, n_test=25, n_test_novel=1, seed=2)
    first = load_digitscenes(cfg, tmp_path, splits=["test"])["test"]
    path = split_path(cfg, "test", tmp_path)
    assert path.is_file() and json.loads((path.parent / "config.json").read_text())["seed"] == 2
    mtime = path.stat().st_mtime_ns
    again = load_digitscenes(cfg, tmp_path, splits=["test"])["test"]
    assert path.stat().st_mtime_ns == mtime, "a valid cache must be read, not rewritten"
    np.testing.assert_array_equal(first.images, again.images)
    assert first.hard_negatives == again.hard_negatives and first.captions == again.captions
    assert first.partial_captions == again.partial_captions and first.partial_captions[0]

    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"(?s)test\.npz.*regenerate=True"):
        read_split(path)
    with pytest.warns(RuntimeWarning, match="corrupt or truncated"):
        rebuilt = load_digitscenes(cfg, tmp_path, splits=["test"])["test"]
    np.testing.assert_array_equal(first.images, rebuilt.images)
    assert first.hard_negatives == rebuilt.hard_negatives
    assert not list(path.parent.glob(".*.tmp")), "temp files left behind"


def test_dataset_items_flatten_and_collate(data):
    s = data["val"]
    ds = DigitScenesDataset(s)
    item = ds[7]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    y, x = 20, 31
    assert torch.allclose(item["image"][:, y, x], torch.tensor(s.images[7, y, x] / 255.0).float())
    assert item["captions"] == s.captions[7] and item["semantic_id"] == s.semantic_ids[7]
    assert item["index"] == 7
    flat = flatten_captions(ds)
    k = 0
    for i, caps in enumerate(s.captions):
        for cap in caps:
            assert flat.texts[k] == cap and flat.image_index[k] == i
            assert flat.semantic_ids[k] == s.semantic_ids[i]
            k += 1
    assert k == len(flat.texts)
    batch = collate_image_captions([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 48, 48) and batch["captions"][1] == s.captions[1]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_contact_sheet_is_a_readable_png(data, tmp_path):
    path = write_contact_sheet(data["train"], tmp_path / "sheet.png", n=8)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 800 and im.size[1] >= 600


def test_generate_and_inspect_commands(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = commands.generate(str(tmp_path), preset="tiny", seed=1)
    assert summary["splits"]["train"]["scenes"] == 300
    assert summary["splits"]["test_novel"]["scenes"] == 100
    assert (tmp_path / summary["directory"] / "contact_sheet.png").is_file()
    report = commands.inspect(str(tmp_path), split="val", n=4)
    assert report["scenes"] == 60 and report["config"]["seed"] == 1
    assert sum(report["hard_negatives"].values()) >= 2 * 60
    assert "unique_semantic_ids" in capsys.readouterr().out
    with pytest.raises(ValueError, match="valid splits"):
        commands.inspect(str(tmp_path), split="nope")
    with pytest.raises(ValueError, match="unknown preset"):
        commands.generate(str(tmp_path), preset="huge")
