"""A resumed run reports exactly what the uninterrupted run reports (running sums in the
checkpoint, not averages over the steps after the resume)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hardneg.train.run import train_and_evaluate
from hardneg.train.trainer import Trainer, resolve_config
from tests.helpers.trainer_values import trainer_values

pytestmark = pytest.mark.usefixtures("one_thread")

SUMMARY_KEYS = ("selected_fn_rate", "batch_fn_rate", "summary_steps")


@pytest.mark.parametrize("method", ["bacl_dual", "grit"])
def test_interrupted_and_resumed_run_reports_the_uninterrupted_summaries(
    tmp_path, tiny_text_model, method
):
    over = {"steps": 6, "batch_sampler": {"search_space_size": 64}, "model": {"dropout": 0.0}}
    full_cfg = resolve_config(method, trainer_values(tmp_path, tiny_text_model, **over))
    full = train_and_evaluate(full_cfg)
    half_cfg = resolve_config(
        method, trainer_values(tmp_path, tiny_text_model, out_dir=str(tmp_path / "half"), **over)
    )
    first = Trainer(half_cfg)
    first.fit(stop_at=3)
    first.save()
    resumed = train_and_evaluate(half_cfg)
    assert resumed["metrics"] == full["metrics"]
    if method == "bacl_dual":
        bs_full = np.load(tmp_path / "run" / "selected_boundary_scores.npy")
        bs_half = np.load(tmp_path / "half" / "selected_boundary_scores.npy")
        assert bs_full.shape[0] > 6
        assert bs_half.shape == bs_full.shape and np.array_equal(bs_full, bs_half)
    for key in SUMMARY_KEYS:
        assert resumed.get(key) == full.get(key), key
    assert full["summary_steps"] == 6
    on_disk = json.loads((tmp_path / "half" / "metrics.json").read_text())
    assert on_disk["batch_fn_rate"] == full["batch_fn_rate"]
