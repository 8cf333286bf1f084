"""A run directory works from any directory: its config holds absolute paths."""

from __future__ import annotations

import json
import os

import pytest

from hardneg import cli
from hardneg.train.config import TrainConfig
from hardneg.train.paths import absolute_paths
from tests.helpers.model_fixtures import write_open_clip_config
from tests.helpers.real_fixtures import write_csv


def test_absolute_paths_resolves_every_file_the_config_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig()
    cfg = absolute_paths(
        type(cfg)(
            out_dir="runs/a",
            data=type(cfg.data)(
                dataset="karpathy:data/k.json:test", eval_dataset="csv:v.csv", images="img"
            ),
            model=type(cfg.model)(spec="open_clip:cfg/m.json", pretrained="w.pt"),
        )
    )
    here = str(tmp_path)
    assert cfg.out_dir == f"{here}/runs/a"
    assert cfg.data.dataset == f"karpathy:{here}/data/k.json:test"
    assert cfg.data.eval_dataset == f"csv:{here}/v.csv"
    assert cfg.data.images == f"{here}/img" and cfg.data.cache_dir.startswith(here)
    assert cfg.model.spec == f"open_clip:{here}/cfg/m.json"
    assert cfg.model.pretrained == f"{here}/w.pt"
    named = absolute_paths(type(cfg)(model=type(cfg.model)(spec="open_clip:ViT-B-32")))
    assert named.model.spec == "open_clip:ViT-B-32"  # a model name, not a path


@pytest.mark.slow
def test_a_run_trained_with_relative_paths_evaluates_from_another_directory(
    tmp_path, monkeypatch, capsys
):
    table = write_csv(tmp_path / "work", n=8)
    (tmp_path / "work" / "models").mkdir()
    model = write_open_clip_config(tmp_path / "work" / "models")
    monkeypatch.chdir(tmp_path / "work")
    argv = ["train", "--data", f"csv:{os.path.relpath(table)}", "--out", "runs/x"]
    argv += ["--model", f"open_clip:{os.path.relpath(model)}", "--steps", "1"]
    argv += ["--set", "batch_size=4", "progress=false", "checkpoint_every=0"]
    argv += ["crossmodal.itm_weight=0", "crossmodal.mlm_weight=0", f"data.eval_dataset=csv:{table}"]
    assert cli.main(argv) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["eval", "work/runs/x"]) == 0
    assert "i2t_R@1" in json.dumps(json.loads(capsys.readouterr().out))
    written = json.loads((tmp_path / "work" / "runs" / "x" / "eval.json").read_text())
    assert "i2t_R@1" in json.dumps(written["metrics"])
