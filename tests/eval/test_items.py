"""per_item.npz of a real (tiny) run: every metric is 100 × the mean of its items."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hardneg.eval.items import metric_items, read_items
from hardneg.train.run import train_and_evaluate
from hardneg.train.trainer import resolve_config
from tests.helpers.trainer_values import trainer_values

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_run_writes_per_item_outcomes_whose_means_are_the_metrics(tmp_path, tiny_text_model):
    values = trainer_values(tmp_path, tiny_text_model, steps=2, crossmodal={"itm_weight": 1.0})
    config = resolve_config("infonce", values)  # (an ITM head: re-ranked figures too)
    result = train_and_evaluate(config)
    items = read_items(tmp_path / "run" / "per_item.npz")
    assert set(items) == set(result["metrics"]) == {"test", "test_novel"}
    for split, metrics in result["metrics"].items():
        checked = set()
        for metric, value in metrics.items():
            values = metric_items(items[split], metric)
            if values is None:
                continue
            checked.add(metric)
            assert math.isclose(100.0 * float(np.mean(values)), value, abs_tol=1e-9), metric
        # every headline metric has items, the re-ranked ones (default eval_rerank_k) too;
        # only rsum (a sum of recalls) has none
        assert "i2t_mAP_rerank" in checked and "t2i_R@10_rerank" in checked
        assert set(metrics) - checked == {"rsum", "rsum_rerank"}
        kinds = set(items[split]["comp_kind"].tolist())
        assert {f"comp_{k}" for k in kinds} <= checked and "itm_comp_overall" in checked
