"""`hardneg train` checks the whole config before any data is touched: one line, exit 2, fast."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hardneg.data.digitscenes
import hardneg.train.data
import hardneg.train.run
from hardneg.cli import _train_values, build_parser, main
from hardneg.train.config import load_yaml, parse_overrides
from hardneg.train.validate import INFONCE_FORM_LOSSES, resolve_config

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def no_data(monkeypatch):
    """Any data build or training fails the test: validation must stop the command first."""

    def forbidden(*args, **kwargs):
        pytest.fail("data was loaded (or training started) before the config was rejected")

    monkeypatch.setattr(hardneg.train.data, "load_run_data", forbidden)
    monkeypatch.setattr(hardneg.data.digitscenes, "load_digitscenes", forbidden)
    monkeypatch.setattr(hardneg.train.run, "train_and_evaluate", forbidden)


# (--set value, the key the message must name)
BAD = [
    ("steps=0", "steps"),
    ("log_every=0", "log_every"),
    ("checkpoint_every=-1", "checkpoint_every"),
    ("batch_size=1", "batch_size"),
    ("batch_size=true", "batch_size"),
    ("steps=3.5", "steps"),
    ("optim.grad_accum=0", "optim.grad_accum"),
    ("optim.max_grad_norm=0", "optim.max_grad_norm"),
    ("optim.max_grad_norm=-1", "optim.max_grad_norm"),
    ("optim.lr=fast", "optim.lr"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.lr=nan", "optim.lr"),
    ("optim.warmup_steps=-2", "optim.warmup_steps"),
    ("optim.name=adam", "optim.name"),
    ("amp=maybe", "amp"),
    ("device=gpu", "device"),
    ("model.dropout=1.5", "model.dropout"),
    ("model.head=mlp", "model.head"),
    ("model.image_tower=resnet", "model.image_tower"),
    ("model.crossmodal_heads=3", "model.crossmodal_dim"),
    ("model.embed_dim=0", "model.embed_dim"),
    ("data.dataset=karpathy", "data.dataset"),
    ("data.preset=huge", "data.preset"),
    ("data.max_text_len=1", "data.max_text_len"),
    ("model.spec=open_clip", "model.spec"),
    ("batch_sampler.q=2", "batch_sampler.q"),
    ("batch_sampler.mode=hardest", "batch_sampler.mode"),
    ("batch_sampler.falcon_m=1", "batch_sampler.falcon_m"),
    ("miner.k=0", "miner.k"),
    ("miner.tau_end=5", "miner.tau_end"),
    ("pretrain.batch_size=1", "pretrain.batch_size"),
    ("pretrain.negative_kinds=[nope]", "pretrain.negative_kinds"),
    ("crossmodal.cla_rho=0", "crossmodal.cla_rho"),
    ("loss.kwargs={nope: 1}", "loss.kwargs"),
    ("optim.lrr=0.1", "optim.lrr"),
    ("optim=3", "optim"),
    ("optim.lr=[1", "optim.lr"),
]


@pytest.mark.parametrize(("override", "key"), BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_one_line_naming_the_key(override, key, no_data, capsys):
    start = time.perf_counter()
    code = main(["train", "--set", override])
    elapsed = time.perf_counter() - start
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2
    assert out == ""
    assert len(lines) == 1, err
    assert lines[0].startswith("hardneg: error: "), err
    assert key in lines[0], err
    assert "Traceback" not in err
    assert elapsed < 10.0


@pytest.mark.parametrize(
    "argv",
    [
        ["--steps", "0"],
        ["--data", "karpathy"],
        ["--model", "hf_clip"],
        ["--method", "bacl_dual", "--set", "batch_size=8", "miner.k=0"],
        ["--set", "model.spec=open_clip:ViT-B-32", "pretrain.steps=5"],
        ["--set", "model.freeze_image_tower=true"],
        [
            "--set",
            "batch_sampler.mode=progressive_hardening",
            "batch_sampler.q_start=0.9",
            "batch_sampler.q_end=0.6",
        ],
        ["--method", "bacl_dual", "--set", "loss.name=siglip", "miner.denominator=weighted"],
        ["--set", "data.dataset=csv:x.csv", "data.false_negative_percent=1.0"],
        ["--set", "batch_size=4", "optim.grad_accum=4"],
        ["--set", "data.text_model=/no/such/dir"],
    ],
)
def test_bad_combination_or_option_fails_before_data(argv, no_data, capsys):
    assert main(["train", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hardneg: error: "), lines


def test_key_error_prints_its_message_unquoted(monkeypatch, no_data, capsys):
    def missing(method, values):
        raise KeyError("data.csv_img_key column 'path' is missing")

    monkeypatch.setattr("hardneg.train.validate.resolve_config", missing)
    assert main(["train"]) == 2
    assert capsys.readouterr().err == "hardneg: error: data.csv_img_key column 'path' is missing\n"


def test_type_error_of_resolution_is_a_usage_error(monkeypatch, no_data, capsys):
    def broken(method, values):
        raise TypeError("model.spec: bad\nsecond line")

    monkeypatch.setattr("hardneg.train.validate.resolve_config", broken)
    assert main(["train"]) == 2
    assert capsys.readouterr().err == "hardneg: error: model.spec: bad second line\n"


def test_scientific_notation_becomes_a_float():
    # PyYAML 1.1 reads "3e-4" as a string; the config coerces it from the field's annotation
    assert parse_overrides(["optim.lr=3e-4"]) == {"optim": {"lr": "3e-4"}}
    cfg = resolve_config("infonce", {"optim": {"lr": "3e-4", "max_grad_norm": "1e9"}})
    assert cfg.optim.lr == 0.0003 and type(cfg.optim.lr) is float
    assert cfg.optim.max_grad_norm == 1_000_000_000.0
    # an int given to a float field is a float; ints, bools, lists and None keep their type
    cfg = resolve_config(
        "infonce",
        {
            "miner": {"tau_start": 2},
            "steps": 12,
            "amp": False,
            "pretrain": {"negative_kinds": ["replace_digit"]},
            "data": {"text_model": None},
        },
    )
    assert type(cfg.miner.tau_start) is float and cfg.miner.tau_start == 2.0
    assert cfg.steps == 12 and cfg.amp is False
    assert cfg.pretrain.negative_kinds == ["replace_digit"]


def test_weighted_denominator_losses_are_the_infonce_form_ones():
    assert INFONCE_FORM_LOSSES == ("ega", "infonce", "negclip")
    resolve_config("bacl_dual_ega", {"miner": {"denominator": "weighted"}})


def test_progressive_modes_accept_their_own_direction():
    hard = {"mode": "progressive_hardening", "q_start": 0.6, "q_end": 0.9}
    soft = {"mode": "progressive_softening", "q_start": 0.9, "q_end": 0.6}
    assert resolve_config("infonce", {"batch_sampler": hard}).batch_sampler.q_end == 0.9
    assert resolve_config("infonce", {"batch_sampler": soft}).batch_sampler.q_end == 0.6
    # defaults of the fields stand for the mode's own endpoints (softening: 1 → 0.5)
    resolve_config("infonce", {"batch_sampler": {"mode": "progressive_softening"}})


def test_train_options_map_onto_the_config(tmp_path):
    args = build_parser().parse_args(
        [
            "train",
            "--data",
            "csv:train.csv",
            "--model",
            "open_clip:ViT-B-32",
            "--pretrained",
            "w.pt",
            "--images",
            str(tmp_path),
            "--csv-img-key",
            "path",
            "--csv-caption-key",
            "caption",
            "--steps",
            "7",
            "--out",
            "runs/x",
            "--set",
            "data.csv_caption_key=text",  # --set wins over the option
        ]
    )
    assert _train_values(args) == {
        "data": {
            "dataset": "csv:train.csv",
            "images": str(tmp_path),
            "csv_img_key": "path",
            "csv_caption_key": "text",
        },
        "model": {"spec": "open_clip:ViT-B-32", "pretrained": "w.pt"},
        "steps": 7,
        "out_dir": "runs/x",
    }


def test_good_config_reaches_training_resolved(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(
        hardneg.train.run, "train_and_evaluate", lambda cfg, resume: seen.append(cfg)
    )
    argv = ["train", "--data", "digitscenes", "--steps", "5", "--set", "optim.lr=3e-4"]
    assert main(argv) == 0
    (cfg,) = seen
    assert (cfg.data.dataset, cfg.steps, cfg.optim.lr) == ("digitscenes", 5, 0.0003)


def test_help_describes_the_specs(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for spec in ("digitscenes[:PRESET]", "karpathy:PATH.json", "csv:PATH", "hf:PATH"):
        assert spec in out
    for spec in ("builtin", "open_clip:NAME", "hf_clip:DIR"):
        assert spec in out


def test_command_fails_within_seconds():
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "hardneg.cli", "train", "--set", "steps=0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "hardneg: error: steps must be ≥ 1, got 0; e.g. --set steps=300"
    ]
    assert elapsed < 10.0, elapsed


def test_bench_accepts_every_preset_the_runner_defines():
    """``make bench-full`` names ``compositional-full``: the CLI's choices are the runner's
    presets, not a list of its own."""
    from hardneg.bench.presets import PRESETS

    for name in PRESETS:
        assert build_parser().parse_args(["bench", "--preset", name]).preset == name


def test_a_key_given_twice_in_a_config_file_is_refused_naming_it(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 2\nbatch_size: 8\nsteps: 3\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'steps' is given twice (line 3)" in err and str(path) in err
    path.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ValueError, match=r"'lr' is given twice \(line 3\)"):
        load_yaml(path)
