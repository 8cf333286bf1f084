"""A CSV source refuses what would silently train on wrong captions, naming the line and fix."""

from __future__ import annotations

import pytest

from hardneg import cli
from hardneg.data.csv_source import CSVImageCaptions
from tests.helpers.real_fixtures import write_csv


def test_an_unclosed_quote_is_refused_with_the_line_it_starts_on(tmp_path):
    path = write_csv(tmp_path, n=4, captions_per_image=1)
    lines = path.read_text().splitlines()
    head, first = lines[0], lines[1].split(",")
    lines[1] = ",".join([first[0], '"' + first[1], *first[2:]])  # open, never closed
    lines.append('images/000.png,"a caption, quoted",x')  # a later quote closes it
    path.write_text("\n".join(lines) + "\n")
    assert head.startswith("filepath")
    with pytest.raises(ValueError, match=r"line 2: .*quote left open"):
        CSVImageCaptions(path, image_size=8)


def test_an_unclosed_quote_at_the_end_is_refused(tmp_path):
    path = write_csv(tmp_path, n=3, captions_per_image=1)
    path.write_text(path.read_text() + 'images/000.png,"never closed\n')
    with pytest.raises(ValueError, match="quote"):
        CSVImageCaptions(path, image_size=8)


def test_a_latin1_file_names_the_file_and_the_fix_through_the_cli(tmp_path, capsys):
    path = write_csv(tmp_path, n=3, captions_per_image=1)
    text = path.read_text().replace("a ", "é ", 1)
    path.write_bytes(text.encode("latin-1"))
    out = str(tmp_path / "run")
    code = cli.main(["train", "--data", f"csv:{path}", "--steps", "1", "--out", out])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert str(path) in err and "not UTF-8" in err and "iconv" in err


def test_a_quoted_field_on_one_line_is_read_as_one_caption(tmp_path):
    path = write_csv(tmp_path, n=2, captions_per_image=1)
    lines = path.read_text().splitlines()
    lines.append('images/001.png,"a caption, with a comma",x')
    path.write_text("\n".join(lines) + "\n")
    assert "a caption, with a comma" in CSVImageCaptions(path, image_size=8).captions[1]


def test_a_quote_closed_on_a_later_line_is_refused_not_merged(tmp_path):
    """The reported case: the next row became part of a caption ("24 images, 49 captions")."""
    path = write_csv(tmp_path, n=3, captions_per_image=1)
    lines = path.read_text().splitlines()
    lines[1] = 'images/000.png,"a red 3'
    lines[2] = 'images/001.png,a blue 4",x'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 2: a quoted field runs over lines 2–3"):
        CSVImageCaptions(path, image_size=8)
