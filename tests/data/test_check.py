"""hardneg data check: every image decoded before training, bad rows named."""

from __future__ import annotations

from hardneg import cli
from tests.helpers.real_fixtures import write_csv, write_karpathy


def test_a_corrupt_image_is_reported_with_its_row_and_exit_1(tmp_path, capsys):
    table = write_csv(tmp_path, n=5, captions_per_image=2)
    (table.parent / "images" / "002.png").write_bytes(b"not a png")
    assert cli.main(["data", "check", f"csv:{table}", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "images decoded: 4 of 5" in out and "bad item 2:" in out and "002.png" in out
    assert "captions: 10 (2.00 per image)" in out


def test_a_clean_karpathy_source_reports_its_splits_and_exit_0(tmp_path, capsys):
    path, images = write_karpathy(tmp_path, n_train=6, n_test=3)
    argv = ["data", "check", f"karpathy:{path}:test", "--images", str(images), "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "images decoded: 3 of 3" in out and "train 6" in out and "test 3" in out


def test_a_streamed_source_is_one_clear_line(tmp_path, capsys):
    assert cli.main(["data", "check", f"wds:{tmp_path}/{{0..1}}.tar"]) == 2
    assert "streamed" in capsys.readouterr().err
