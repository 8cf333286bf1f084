"""Real-data sources: spec parsing, CSV / HF / Karpathy loading, perturber, probes, checks."""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import PIL.Image
import pytest
import torch
from PIL import Image

from hardneg.data.compositional import load_compositional
from hardneg.data.csv_source import CSVImageCaptions
from hardneg.data.hf_source import HFImageCaptions
from hardneg.data.perturb import perturbations
from hardneg.data.sources import check_data_config, open_source
from hardneg.data.specs import DataSpec, parse_data_spec
from hardneg.train.config import DataConfig
from tests.helpers.real_fixtures import (
    captions_for,
    draw_scene,
    negative_for,
    write_compositional,
    write_csv,
    write_hf_imagefolder,
    write_hf_saved,
    write_images,
    write_karpathy,
)


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path, monkeypatch):
    """``load_dataset("imagefolder")`` writes Arrow files to the datasets cache: keep it here."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def _pixels(image: Image.Image, size: int) -> torch.Tensor:
    """Expected tensor of a square image: a plain PIL bicubic resize (no crop needed)."""
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(resized, dtype=np.float32).copy()).permute(2, 0, 1) / 255


def _assert_images_match(dataset, expected_images, size):
    for i, image in enumerate(expected_images):
        got = dataset.load_image(i)
        assert got.shape == (3, size, size)
        assert torch.allclose(got, _pixels(image, size), atol=2 / 255), f"item {i}"
        other = _pixels(expected_images[(i + 1) % len(expected_images)], size)
        assert (got - other).abs().mean() > 0.02  # really a different picture


# --- spec parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("digitscenes", DataSpec("digitscenes")),
        ("digitscenes:tiny", DataSpec("digitscenes", preset="tiny")),
        ("karpathy:/d/coco.json", DataSpec("karpathy", "/d/coco.json")),
        ("karpathy:/d/coco.json:restval", DataSpec("karpathy", "/d/coco.json", "restval")),
        (r"karpathy:C:\d\coco.json:test", DataSpec("karpathy", r"C:\d\coco.json", "test")),
        (r"karpathy:C:\d\coco.json", DataSpec("karpathy", r"C:\d\coco.json")),
        ("csv:rel/train.csv", DataSpec("csv", "rel/train.csv")),
        ("csv:/d/train.TSV", DataSpec("csv", "/d/train.TSV")),
        ("hf:/d/saved", DataSpec("hf", "/d/saved")),
        ("hf:/d/saved:validation", DataSpec("hf", "/d/saved", "validation")),
        (r"hf:C:\d\saved", DataSpec("hf", r"C:\d\saved")),
    ],
)
def test_parse_data_spec_good_forms(spec, expected):
    assert parse_data_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "coco:/d/x.json",
        "karpathy:",
        "karpathy:/d/x.json:tset",
        "karpathy:/d/x.txt",
        "csv:/d/x.json",
        "csv:/d/x.csv:train",
        "digitscenes:a/b",
    ],
)
def test_parse_data_spec_bad_forms_name_key_value_and_forms(spec):
    with pytest.raises(ValueError) as err:
        parse_data_spec(spec, key="data.eval_dataset")
    message = str(err.value)
    assert f"data.eval_dataset={spec!r}" in message
    assert "valid forms: digitscenes[:PRESET], karpathy:PATH.json" in message


# --- CSV ----------------------------------------------------------------------------------


def test_csv_rows_of_one_image_become_one_item(tmp_path):
    write_images(tmp_path / "img", 2)
    (tmp_path / "x.csv").write_text(
        "filepath,title\n"
        "img/000.png,a red square\n"
        "img/001.png,a blue circle\n"
        "img/000.png,a square that is red\n"
    )
    ds = CSVImageCaptions(tmp_path / "x.csv", image_size=16)
    assert ds.captions == [["a red square", "a square that is red"], ["a blue circle"]]
    assert ds.semantic_ids.tolist() == [0, 1]
    assert ds.negatives is None
    assert ds.describe() == f"csv {tmp_path / 'x.csv'}: 2 images, 3 captions"


def test_csv_fixture_round_trip_with_negatives(tmp_path):
    path = write_csv(tmp_path, n=5, captions_per_image=2)
    ds = CSVImageCaptions(path, image_size=24, negative_key="neg")
    assert len(ds) == 5 and len(set(ds.semantic_ids.tolist())) == 5
    assert ds.captions == [captions_for(i, 2) for i in range(5)]
    assert ds.negatives[0] == [negative_for(0), "a green square"]  # | split, duplicates merged
    _assert_images_match(ds, [draw_scene(i) for i in range(5)], 24)


def test_tsv_with_custom_keys_and_image_root(tmp_path):
    write_images(tmp_path / "pics", 2)
    table = tmp_path / "meta" / "x.tsv"
    table.parent.mkdir()
    table.write_text("img\tcaption, with comma\n000.png\ta cat, a dog\n001.png\ta bird\n")
    ds = CSVImageCaptions(
        table, image_root=tmp_path / "pics", img_key="img", caption_key="caption, with comma"
    )
    assert ds.captions == [["a cat, a dog"], ["a bird"]]
    cfg = DataConfig(
        dataset=f"csv:{table}",
        images=str(tmp_path / "pics"),
        csv_img_key="img",
        csv_caption_key="caption, with comma",
    )
    assert open_source(cfg, 16).captions == ds.captions


def test_csv_with_a_byte_order_mark_keeps_its_first_column_name(tmp_path):
    write_images(tmp_path, 1)
    (tmp_path / "x.csv").write_bytes("filepath,title\n000.png,a cat\n".encode("utf-8-sig"))
    assert CSVImageCaptions(tmp_path / "x.csv").captions == [["a cat"]]


def test_csv_missing_column_and_missing_image_messages(tmp_path):
    path = write_csv(tmp_path, n=3)
    with pytest.raises(KeyError, match=r"no column 'caption'.*--csv-caption-key"):
        CSVImageCaptions(path, caption_key="caption")
    with pytest.raises(KeyError, match=r"no column 'path'.*--csv-img-key"):
        CSVImageCaptions(path, img_key="path")
    (path.parent / "images" / "001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.csv line 3: image file .*001\.png"):
        CSVImageCaptions(path)


# --- Hugging Face -------------------------------------------------------------------------


def test_hf_save_to_disk_round_trip(tmp_path):
    folder = write_hf_saved(tmp_path, n=4, captions_per_image=2)  # source files are deleted
    ds = HFImageCaptions(folder, image_size=24, negative_key="negative")
    assert ds.captions == [captions_for(i, 2) for i in range(4)]
    assert ds.semantic_ids.tolist() == [0, 1, 2, 3]
    assert ds.negatives == [[negative_for(i)] for i in range(4)]
    _assert_images_match(ds, [draw_scene(i) for i in range(4)], 24)
    single = HFImageCaptions(write_hf_saved(tmp_path / "one", n=3, captions_per_image=1))
    assert single.captions == [captions_for(i, 1) for i in range(3)]


def test_hf_imagefolder_groups_rows_of_one_file(tmp_path):
    folder = write_hf_imagefolder(tmp_path, n=4, captions_per_image=2)
    cfg = DataConfig(dataset=f"hf:{folder}", negatives="column:negative")
    ds = open_source(cfg, 24)
    assert len(ds) == 4
    assert ds.captions == [captions_for(i, 2) for i in range(4)]
    assert ds.negatives == [[negative_for(i)] for i in range(4)]
    _assert_images_match(ds, [Image.open(folder / f"{i:03d}.png") for i in range(4)], 24)
    assert "4 images, 8 captions" in ds.describe()


def test_hf_splits_and_missing_column(tmp_path):
    import datasets

    paths = write_images(tmp_path / "img", 3)
    table = datasets.Dataset.from_dict(
        {"picture": [str(p) for p in paths], "caption": ["a", "b", "c"]}
    ).cast_column("picture", datasets.Image())
    folder = tmp_path / "dict"
    datasets.DatasetDict({"train": table.select([0, 1]), "test": table.select([2])}).save_to_disk(
        str(folder)
    )
    cfg = DataConfig(dataset=f"hf:{folder}", hf_image_key="picture", hf_caption_key="caption")
    assert open_source(cfg, 8).captions == [["a"], ["b"]]  # default: train
    assert open_source(cfg, 8, spec=f"hf:{folder}:test").captions == [["c"]]
    with pytest.raises(ValueError, match=r"split 'val'.*train, test"):
        open_source(cfg, 8, spec=f"hf:{folder}:val")
    with pytest.raises(KeyError, match=r"no column 'text'.*--hf-caption-key"):
        HFImageCaptions(folder, image_key="picture", caption_key="text")


# --- Karpathy -----------------------------------------------------------------------------


def test_karpathy_through_open_source(tmp_path):
    json_path, image_dir = write_karpathy(tmp_path, n_train=4, n_test=3)
    cfg = DataConfig(dataset=f"karpathy:{json_path}:test", images=str(image_dir))
    ds = open_source(cfg, 24)
    assert ds.captions == [captions_for(i, 2) for i in (4, 5, 6)]
    assert ds.semantic_ids.tolist() == [4, 5, 6]
    assert ds.negatives is None
    assert ds.describe() == f"karpathy {json_path} (test): 3 images, 6 captions"
    _assert_images_match(ds, [draw_scene(i) for i in (4, 5, 6)], 24)
    cfg.negatives = "column:negatives"
    train = open_source(cfg, 24, spec=f"karpathy:{json_path}")  # default split: train
    assert len(train) == 4 and train.negatives == [[negative_for(i)] for i in range(4)]


# --- perturber ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caption, expected",
    [
        (
            "A red square left of a blue circle.",
            [
                ("swap_attributes", "A blue square left of a red circle."),
                ("swap_nouns", "A red circle left of a blue square."),
                ("relation", "A red square right of a blue circle."),
            ],
        ),
        (
            "an orange cat and a red dog",
            [
                ("swap_attributes", "a red cat and an orange dog"),
                ("swap_nouns", "an orange dog and a red cat"),
            ],
        ),
        (
            "The cup is in front of the laptop",
            [
                ("swap_nouns", "The laptop is in front of the cup"),
                ("relation", "The cup is behind the laptop"),
            ],
        ),
        (  # neither word is in the noun list: the words around the relation swap
            "a zebu to the left of a yak",
            [
                ("swap_nouns", "a yak to the left of a zebu"),
                ("relation", "a zebu to the right of a yak"),
            ],
        ),
        (
            "a book under the small table",
            [
                ("swap_nouns", "a table under the small book"),
                ("relation", "a book on the small table"),
            ],
        ),
        (
            "The ball is above the box!",
            [
                ("swap_nouns", "The box is above the ball!"),
                ("relation", "The ball is below the box!"),
            ],
        ),
        (
            "a cat inside a box",
            [("swap_nouns", "a box inside a cat"), ("relation", "a cat outside a box")],
        ),
        ("A photo.", []),
        ("a dog", []),
        ("two dogs", []),
    ],
)
def test_perturbations_on_hand_written_captions(caption, expected):
    assert [(p.kind, p.caption) for p in perturbations(caption)] == expected


def test_swaps_keep_the_words_and_change_their_order():
    caption = "a small red square and a big blue circle"
    swaps = [p for p in perturbations(caption) if p.kind.startswith("swap")]
    assert {p.kind for p in swaps} == {"swap_attributes", "swap_nouns"}
    for p in swaps:
        assert Counter(p.caption.split()) == Counter(caption.split())
        assert p.caption.split() != caption.split()


def test_perturbations_are_deterministic():
    caption = "a man on a horse next to a white dog"
    assert perturbations(caption) == perturbations(caption)


# --- compositional probes -----------------------------------------------------------------


def test_compositional_loader(tmp_path):
    path = write_compositional(tmp_path, n=4)
    probes = load_compositional(path, None, 24)
    assert len(probes) == 4
    assert probes.captions == [captions_for(i, 1)[0] for i in range(4)]
    assert probes.negatives[0] == negative_for(0)
    assert probes.kinds == ["relation", "swap_attributes", "relation", "swap_attributes"]
    assert torch.allclose(probes.load_image(1), _pixels(draw_scene(1), 24), atol=2 / 255)


def test_compositional_sugarcrepe_keys_and_errors(tmp_path):
    write_images(tmp_path / "img", 1)
    rows = {"0": {"filename": "000.png", "caption": "a red cube", "negative_caption": "a cube"}}
    (tmp_path / "sc.json").write_text(json.dumps(rows))
    probes = load_compositional(tmp_path / "sc.json", tmp_path / "img", 8)
    assert (probes.captions, probes.negatives, probes.kinds) == (
        ["a red cube"],
        ["a cube"],
        ["all"],
    )
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "000.png", "caption": "x"}]))
    with pytest.raises(KeyError, match=r"bad\.json row 0 has no negative key"):
        load_compositional(tmp_path / "bad.json", tmp_path / "img", 8)
    (tmp_path / "gone.json").write_text(json.dumps([{"image": "9.png", "pos": "x", "neg": "y"}]))
    with pytest.raises(FileNotFoundError, match=r"gone\.json row 0: image file .*9\.png"):
        load_compositional(tmp_path / "gone.json", tmp_path / "img", 8)


# --- check_data_config --------------------------------------------------------------------


def _refuse_image_open(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("check_data_config opened an image")

    monkeypatch.setattr(PIL.Image, "open", refuse)


def _timed_check(cfg):
    start = time.perf_counter()
    spec = check_data_config(cfg)
    assert time.perf_counter() - start < 1.0
    return spec


def test_check_data_config_accepts_real_sources_without_opening_images(tmp_path, monkeypatch):
    json_path, image_dir = write_karpathy(tmp_path, n_train=3, n_test=2)
    csv_path = write_csv(tmp_path, n=3)
    saved, folder = write_hf_saved(tmp_path, n=3), write_hf_imagefolder(tmp_path, n=3)
    _refuse_image_open(monkeypatch)
    karpathy = DataConfig(
        dataset=f"karpathy:{json_path}",
        images=str(image_dir),
        eval_dataset=f"karpathy:{json_path}:test",
    )
    assert _timed_check(karpathy) == DataSpec("karpathy", str(json_path))
    assert _timed_check(DataConfig(dataset=f"csv:{csv_path}", negatives="column:neg")).kind == "csv"
    assert _timed_check(DataConfig(dataset=f"hf:{saved}")).path == str(saved)
    assert _timed_check(DataConfig(dataset=f"hf:{folder}", negatives="none")).kind == "hf"
    assert _timed_check(DataConfig(dataset="digitscenes:tiny")).preset == "tiny"


def test_check_data_config_missing_paths_fail_fast(tmp_path, monkeypatch):
    json_path, image_dir = write_karpathy(tmp_path, n_train=2, n_test=1)
    _refuse_image_open(monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"data\.dataset: karpathy file .*nope\.json"):
        _timed_check(DataConfig(dataset=f"karpathy:{tmp_path / 'nope.json'}"))
    with pytest.raises(FileNotFoundError, match=r"data\.images is not set.*--images DIR"):
        _timed_check(DataConfig(dataset=f"karpathy:{json_path}"))
    with pytest.raises(FileNotFoundError, match=r"data\.images = .*not a directory"):
        _timed_check(DataConfig(dataset=f"karpathy:{json_path}", images=str(tmp_path / "x")))
    with pytest.raises(FileNotFoundError, match=r"data\.dataset: csv file"):
        _timed_check(DataConfig(dataset=f"csv:{tmp_path / 'missing.tsv'}"))
    with pytest.raises(FileNotFoundError, match=r"data\.dataset: hf source .* not a directory"):
        _timed_check(DataConfig(dataset=f"hf:{tmp_path / 'absent'}"))
    with pytest.raises(ValueError, match=r"data\.dataset: hf source .*neither"):
        _timed_check(DataConfig(dataset=f"hf:{image_dir}"))
    bad_eval = DataConfig(
        dataset=f"karpathy:{json_path}", images=str(image_dir), eval_dataset=f"csv:{tmp_path}/e.csv"
    )
    with pytest.raises(FileNotFoundError, match=r"data\.eval_dataset: csv file"):
        _timed_check(bad_eval)


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"negatives": "columns:x"}, ValueError, r"data\.negatives='columns:x'.*column:NAME"),
        ({"negatives": "column:"}, ValueError, r"data\.negatives"),
        ({"dataset": "digitscenes:huge"}, ValueError, r"data\.dataset: unknown DigitScenes preset"),
        ({"preset": "huge"}, ValueError, r"data\.preset: unknown DigitScenes preset 'huge'"),
        ({"negatives": "column:neg"}, ValueError, r"digitscenes has no columns"),
        ({"eval_dataset": "karpathy:x.json:dev"}, ValueError, r"data\.eval_dataset=.*split 'dev'"),
    ],
)
def test_check_data_config_bad_values(changes, error, message):
    with pytest.raises(error, match=message):
        _timed_check(DataConfig(**changes))


def test_check_data_config_csv_column_checked_from_the_header(tmp_path):
    path = write_csv(tmp_path, n=2)
    with pytest.raises(KeyError, match=r"no column 'caption'.*--csv-caption-key"):
        _timed_check(DataConfig(dataset=f"csv:{path}", csv_caption_key="caption"))


def test_open_source_refuses_digitscenes():
    with pytest.raises(ValueError, match=r"digitscenes is built in"):
        open_source(DataConfig(), 32)


def test_an_hf_datasetdict_with_a_test_split_is_evaluated_on_it(tmp_path):
    import datasets

    from hardneg.data.specs import default_eval_spec

    paths = write_images(tmp_path / "img", 3)
    table = datasets.Dataset.from_dict({"image": [str(p) for p in paths], "caption": list("abc")})
    folder = tmp_path / "dict"
    datasets.DatasetDict({"train": table.select([0, 1]), "test": table.select([2])}).save_to_disk(
        str(folder)
    )
    assert default_eval_spec(DataConfig(dataset=f"hf:{folder}")) == f"hf:{folder}:test"
    assert default_eval_spec(DataConfig(dataset=f"hf:{folder}:test")) is None
    single = write_hf_saved(tmp_path / "one", n=3, captions_per_image=1)
    assert default_eval_spec(DataConfig(dataset=f"hf:{single}")) is None
