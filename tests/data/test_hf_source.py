"""An hf source finds its caption column by the usual names, and its errors name real flags."""

from __future__ import annotations

import logging
import re

import pytest

from hardneg import cli
from hardneg.data.hf_source import HFImageCaptions
from tests.helpers.real_fixtures import write_hf_saved


def _renamed(tmp_path, name: str):
    import datasets

    folder = write_hf_saved(tmp_path / "src", n=4, captions_per_image=1)
    table = datasets.load_from_disk(str(folder)).rename_column("text", name)
    out = tmp_path / f"by_{name}"
    table.save_to_disk(str(out))
    return out


def test_a_caption_column_is_found_and_named_in_the_log(tmp_path, caplog):
    folder = _renamed(tmp_path, "caption")
    with caplog.at_level(logging.WARNING, logger="hardneg.data.hf_source"):
        ds = HFImageCaptions(folder, image_size=8)
    assert len(ds.captions) == 4 and all(len(c) == 1 for c in ds.captions)
    assert any("column 'caption'" in r.getMessage() for r in caplog.records)


def test_no_usual_caption_column_names_the_columns_and_a_flag_that_exists(tmp_path, capsys):
    folder = _renamed(tmp_path, "utterance")
    with pytest.raises(KeyError, match="utterance"):
        HFImageCaptions(folder, image_size=8)
    code = cli.main(["train", "--data", f"hf:{folder}", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    flag = re.search(r"(--hf-caption-key) COLUMN", err).group(1)
    # the flag the message names is a real option of hardneg train
    args = cli.build_parser().parse_args(["train", flag, "utterance"])
    assert cli._train_values(args)["data"]["hf_caption_key"] == "utterance"
