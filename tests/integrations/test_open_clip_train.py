"""open_clip_train's real ``main`` through hardneg's entry point: loss, BNS, accumulation, resume.

Every run is open_clip's own training script on a CSV of 16 generated PNG images with a tiny
random-init ViT config (1 layer, width 32), on CPU, a few seconds each.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hardneg.integrations.open_clip import OpenCLIPLossAdapter
from hardneg.integrations.open_clip_train import (
    CHECKPOINT_KEY,
    OpenClipTrainLoss,
    _Hooks,
    main,
    parse_hardneg_args,
)
from tests.helpers.bns_record import adam_steps, assert_same_state, record_selections

pytest.importorskip("webdataset")  # open_clip_train.data imports it
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """16 random 32×32 PNGs with captions in open_clip's CSV format, and the model config."""
    root = tmp_path_factory.mktemp("oc_data")
    rng = np.random.default_rng(0)
    rows = ["filepath,title"]
    for i in range(16):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        rows.append(f"{path},a photo of thing number {i}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "tiny-hardneg.json").write_text(json.dumps(TINY))
    return root


def _run(data: Path, logs: Path, name: str, *extra: str, k: int = 2) -> OpenClipTrainLoss:
    loss = main(
        [
            "--hardneg-loss", "ega", "--hardneg-loss-arg", "alpha=1.0",
            "--hardneg-miner", "bns", "--hardneg-bns-arg", f"k={k}",
            "--hardneg-model-config", str(data / "tiny-hardneg.json"),
            "--train-data", str(data / "train.csv"), "--dataset-type", "csv",
            "--csv-separator", ",", "--csv-img-key", "filepath", "--csv-caption-key", "title",
            "--model", "tiny-hardneg", "--batch-size", "4", "--lr", "1e-3", "--warmup", "1",
            "--workers", "0", "--precision", "fp32", "--device", "cpu", "--seed", "0",
            "--logs", str(logs), "--name", name, "--log-every-n-steps", "100",
            *extra,
        ]
    )  # fmt: skip
    assert loss is not None
    return loss


@pytest.fixture
def recorded(monkeypatch):
    """Every selection (see tests.helpers.bns_record) and the negatives of every loss call."""
    record = {"select": record_selections(monkeypatch), "loss": []}
    forward = OpenCLIPLossAdapter.forward

    def recording_forward(self, *args, negatives=None, **kwargs):
        record["loss"].append(negatives)
        return forward(self, *args, negatives=negatives, **kwargs)

    monkeypatch.setattr(OpenCLIPLossAdapter, "forward", recording_forward)
    return record


def test_accum_freq_selects_once_per_optimizer_step_on_the_accumulated_batch(
    data, tmp_path, recorded
):
    """--accum-freq 2, 4 batches: 2 optimiser steps → 2 selections, 2 policy steps, η = 0, ½."""
    loss = _run(
        data, tmp_path, "accum", "--epochs", "1", "--accum-freq", "2", "--save-frequency", "0"
    )
    assert [entry["progress"] for entry in recorded["select"]] == [0.0, 0.5]
    selections = [entry["selection"] for entry in recorded["select"]]
    # 4 loss calls (accum_freq per step) on the 8-row accumulated batch, each step's selection
    # reused for both of its calls
    assert len(recorded["loss"]) == 4
    assert all(a is b for a, b in zip(recorded["loss"], [s for s in selections for _ in "ab"]))
    assert all(s.i2t_keep.shape == (8, 8) for s in selections)
    assert adam_steps(loss.miner) == [2.0] * 4  # the policy's Adam stepped twice


def test_resume_restores_the_selector_state_from_open_clips_checkpoint(data, tmp_path, recorded):
    first = _run(data, tmp_path, "a", "--epochs", "1", "--save-frequency", "1")
    saved = {k: v.clone() for k, v in first.miner.policy.state_dict().items()}
    generator = first.miner.generator.get_state().clone()
    assert adam_steps(first.miner) == [4.0] * 4  # 16 rows / batch 4 = 4 steps
    checkpoint_path = tmp_path / "a" / "checkpoints" / "epoch_1.pt"
    stored = torch.load(checkpoint_path, weights_only=False)["optimizer"][CHECKPOINT_KEY]
    assert torch.equal(stored["_extra_state"]["generator"], generator)

    recorded["select"].clear()
    second = _run(
        data, tmp_path, "b", "--epochs", "2", "--resume", str(checkpoint_path)
    )  # fmt: skip
    after_epoch_1 = {"progress": 1.0, "adam": [4.0] * 4, "generator": generator, "policy": saved}
    assert_same_state(recorded["select"][0], after_epoch_1)  # η = 1 at epoch 2, not 0
    assert adam_steps(second.miner) == [8.0] * 4


def test_resuming_a_training_checkpoint_without_selector_state_is_refused(tmp_path):
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "optimizer": {"state": {}, "param_groups": []}}, path)
    options, _ = parse_hardneg_args(["--hardneg-miner", "bns"])
    hooks = _Hooks(options, train_one_epoch=None)
    loss = hooks.create_loss(
        argparse.Namespace(
            distill=False, model="ViT-B-32", horovod=False, rank=0, world_size=1,
            accum_freq=1, device="cpu",
        )
    )  # fmt: skip
    with pytest.raises(ValueError, match="no BNS miner state"):
        hooks._restore(loss, argparse.Namespace(resume=str(path)))


def test_hardneg_options_are_validated_and_the_rest_passed_through():
    options, rest = parse_hardneg_args(
        ["--hardneg-loss", "hcl", "--hardneg-loss-arg", "beta=0.5", "--model", "RN50"]
    )
    assert options.hardneg_loss == "hcl" and dict(options.hardneg_loss_arg) == {"beta": 0.5}
    assert rest == ["--model", "RN50"]
    with pytest.raises(SystemExit):
        parse_hardneg_args(["--hardneg-miner", "bns", "--hardneg-bns-arg", "kk=3"])
    with pytest.raises(SystemExit):
        parse_hardneg_args(["--hardneg-bns-arg", "k=3"])  # without the miner
