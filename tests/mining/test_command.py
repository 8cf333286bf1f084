"""hardneg mine end to end on tiny csv / hf / karpathy sources with a tiny random open_clip:
outputs the sources read back, no positive among the negatives, a killed run resumes to the
same output, bad input exits 2 with one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from hardneg.cli import main
from hardneg.data.csv_source import CSVImageCaptions
from hardneg.data.hf_source import HFImageCaptions
from hardneg.mining import MiningOptions, embed
from hardneg.mining.command import cache_dir, mine_source
from hardneg.train.config import DataConfig
from tests.helpers.model_fixtures import write_open_clip_config
from tests.helpers.real_fixtures import write_csv, write_hf_saved, write_karpathy

pytest.importorskip("open_clip")


@pytest.fixture
def spec(tmp_path: Path) -> str:
    return f"open_clip:{write_open_clip_config(tmp_path)}"


def test_csv_output_reads_back_without_positives(tmp_path, spec):
    source = write_csv(tmp_path, n=6, captions_per_image=2)  # every path on two rows
    out = tmp_path / "mined.csv"
    code = main(["mine", "--data", f"csv:{source}", "--model", spec, "--out", str(out),
                 "--num-negatives", "2", "--with-scores", "--quiet"])  # fmt: skip
    assert code == 0
    mined = CSVImageCaptions(out, image_root=source.parent, negative_key="hard_negatives")
    plain = CSVImageCaptions(source)
    assert mined.captions == plain.captions
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for item, negatives in enumerate(mined.negatives):
        assert len(negatives) >= 2 and not set(negatives) & set(plain.captions[item])
    for row in rows:
        images = json.loads(row["hard_negative_images"])
        assert len(images) == 2 and row["filepath"] not in images
        scores = json.loads(row["hard_negative_images_scores"])
        assert scores == sorted(scores, reverse=True)


def test_hf_and_karpathy_outputs(tmp_path, spec):
    folder = write_hf_saved(tmp_path, n=5, captions_per_image=2)
    out = tmp_path / "hf_mined"
    assert main(["mine", "--data", f"hf:{folder}", "--model", spec, "--out", str(out),
                 "--num-negatives", "2", "--quiet"]) == 0  # fmt: skip
    mined = HFImageCaptions(out, negative_key="hard_negatives")
    for item, negatives in enumerate(mined.negatives):
        assert len(negatives) == 2 and not set(negatives) & set(mined.captions[item])
    json_path, images = write_karpathy(tmp_path, n_train=5, n_test=2)
    sidecar = tmp_path / "negatives.jsonl"
    assert main(["mine", "--data", f"karpathy:{json_path}:train", "--images", str(images),
                 "--model", spec, "--out", str(sidecar), "--quiet"]) == 0  # fmt: skip
    records = [json.loads(line) for line in sidecar.read_text().splitlines()]
    assert len(records) == 5
    for record in records:
        assert len(record["hard_negatives"]) == 3
        for negatives in record["hard_negative_images"]:
            assert len(negatives) == 3 and record["image"] not in negatives


def test_a_killed_run_resumes_to_the_same_output(tmp_path, spec, monkeypatch):
    source = write_csv(tmp_path, n=7, captions_per_image=2)
    data = DataConfig(dataset=f"csv:{source}")
    options = MiningOptions(num_negatives=2, sampling="random", seed=3)

    def run(out: Path) -> str:
        mine_source(data, out, options, model=spec, chunk=3, progress=False)
        return out.read_text()

    clean = run(tmp_path / "clean.csv")
    out = tmp_path / "killed.csv"
    calls = []
    original = embed.text_embeddings

    def dies_after_two_chunks(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(embed, "text_embeddings", dies_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        run(out)
    monkeypatch.setattr(embed, "text_embeddings", original)
    cache = cache_dir(out)
    assert not out.exists() and len(list(cache.glob("captions-*.pt"))) == 2
    assert run(out) == clean
    # a truncated chunk and a missing one are recomputed
    chunks = sorted(cache.glob("*-*.pt"))
    chunks[0].write_bytes(chunks[0].read_bytes()[:10])
    chunks[-1].unlink()
    recomputed = []
    load = embed._load_chunk

    def recording_load(path: Path, rows: int):
        value = load(path, rows)
        if value is None:
            recomputed.append(path.name)
        return value

    monkeypatch.setattr(embed, "_load_chunk", recording_load)
    assert run(out) == clean
    assert sorted(recomputed) == sorted([chunks[0].name, chunks[-1].name])
    assert torch.load(chunks[0], weights_only=True).shape[0] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sampling", "hardest"], "sampling='hardest' is unknown"),
        (["--caption-column", "neg"], "already has a column 'neg'"),
        (["--num-negatives", "7"], "num_negatives=7 is larger than the 5 images left"),
        (["--range-min", "4", "--range-max", "3"], "num_negatives=3 is larger than the -1"),
        (["--out-suffix"], "name --out accordingly"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, spec, capsys, extra, message):
    source = write_csv(tmp_path, n=6)
    out = tmp_path / ("mined.txt" if extra == ["--out-suffix"] else "mined.csv")
    extra = [] if extra == ["--out-suffix"] else extra
    code = main(["mine", "--data", f"csv:{source}", "--model", spec, "--out", str(out),
                 "--quiet", *extra])  # fmt: skip
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hardneg")]
    assert len(err) == 1 and err[0].startswith("hardneg: error: ") and message in err[0]


@pytest.mark.slow
def test_mining_with_a_trained_run(tmp_path, spec, capsys):
    source = write_csv(tmp_path, n=8)
    run = tmp_path / "run"
    argv = ["train", "--data", f"csv:{source}", "--out", str(run), "--model", spec]
    argv += ["--steps", "1", "--set", "batch_size=4", "progress=false", "checkpoint_every=0"]
    argv += ["crossmodal.itm_weight=0", "crossmodal.mlm_weight=0"]
    assert main(argv) == 0
    capsys.readouterr()
    out = tmp_path / "mined.csv"
    assert main(["mine", "--data", f"csv:{source}", "--run", str(run), "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["images"] == 8
    mined = CSVImageCaptions(out, image_root=source.parent, negative_key="hard_negatives")
    for item, negatives in enumerate(mined.negatives):
        assert len(negatives) == 3 and not set(negatives) & set(mined.captions[item])
