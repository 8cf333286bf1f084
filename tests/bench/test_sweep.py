"""The FN-rate sweep of a bench report, from a synthetic run tree: arms ``infonce`` and
``grit`` (the bench's 1 %) and ``@fn0`` / ``@fn5`` of each, 2 seeds; only GRIT's runs report
re-ranked figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hardneg.bench.aggregate import aggregate_runs
from hardneg.bench.comparisons import reference_of
from hardneg.bench.report import write_report
from hardneg.bench.sweep import sweep_points, sweep_section
from hardneg.bench.tree import load_bench
from hardneg.eval.items import pack_items

ARMS = ["infonce", "grit", "infonce@fn0", "infonce@fn5", "grit@fn0", "grit@fn5"]
RATE = {"infonce": 1.0, "grit": 1.0}  # the bench's own rate (config.json) of the plain arms
N_ITEMS = 50


def _rate(arm: str) -> float:
    return RATE.get(arm) or float(arm.split("@fn")[1])


def _r1(arm: str, seed: int) -> float:
    """I→T R@1: GRIT loses 2 points per % of false negatives, InfoNCE 0.5; seeds ±1."""
    slope = 2.0 if arm.startswith("grit") else 0.5
    return 40.0 - slope * _rate(arm) + (1.0 if seed else -1.0)


def _write_run(root: Path, arm: str, seed: int) -> None:
    out = root / arm / f"seed{seed}"
    out.mkdir(parents=True)
    method = arm.split("@")[0]
    config = {"method": method, "seed": seed, "data": {"false_negative_percent": _rate(arm)}}
    (out / "config.json").write_text(json.dumps(config))
    test = {"i2t_R@1": _r1(arm, seed), "t2i_R@1": 30.0, "i2t_mAP": 50.0 - _rate(arm),
            "t2i_mAP": 45.0}  # fmt: skip
    if method == "grit":
        test.update({f"{k}_rerank": v + 3.0 for k, v in list(test.items())})
    batch_fn = _rate(arm) * (4.0 if method == "grit" else 1.0) + 0.1 * seed
    metrics = {"method": method, "seed": seed, "steps": 10, "batch_fn_rate": batch_fn,
               "metrics": {"test": test}}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics))
    hits = np.arange(N_ITEMS) < _r1(arm, seed) * N_ITEMS / 100
    np.savez(out / "per_item.npz", **pack_items({"test": {"i2t_hit@1": hits}}))


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sweep")
    (root / "bench.json").write_text(
        json.dumps({"preset": "compositional", "methods": ARMS, "seeds": [0, 1], "steps": 10,
                    "batch_size": 8, "reference": "infonce"})
    )  # fmt: skip
    for arm in ARMS:
        for seed in (0, 1):
            _write_run(root, arm, seed)
    return root, write_report(root)


def _rows(markdown: str) -> dict[str, dict[str, str]]:
    """The sweep table as {arm: {header: cell}}."""
    text = markdown.split("## Sweep of `data.false_negative_percent`\n", 1)[1]
    table = [line for line in text.split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    return {row[2]: dict(zip(header, row)) for row in rows}


def test_points_are_each_method_by_rate_with_the_plain_arm_at_the_bench_rate(bench):
    root, _ = bench
    points = sweep_points(load_bench(root), "fn")
    assert [(p.method, p.value, p.arm) for p in points] == [
        ("infonce", 0.0, "infonce@fn0"), ("infonce", 1.0, "infonce"),
        ("infonce", 5.0, "infonce@fn5"), ("grit", 0.0, "grit@fn0"), ("grit", 1.0, "grit"),
        ("grit", 5.0, "grit@fn5"),
    ]  # fmt: skip
    assert sweep_points(load_bench(root), "none") == []


def test_sweep_table_holds_method_by_rate_with_measured_fn_and_reranked_figures(bench):
    root, _ = bench
    rows = _rows((root / "results.md").read_text())
    assert list(rows) == ["infonce@fn0", "infonce", "infonce@fn5", "grit@fn0", "grit", "grit@fn5"]
    grit5 = rows["grit@fn5"]
    assert (grit5["Method"], grit5["FN rate %"]) == ("grit", "5")
    # seeds 29 and 31: mean 30, sample std √2; batch FN 20.0 and 20.1
    assert grit5["I→T R@1"] == "30.0 ± 1.4" and grit5["I→T mAP"] == "45.0 ± 0.0"
    assert grit5["Batch FN %"] == "20.05 ± 0.07"
    assert grit5["I→T R@1 re-ranked"] == "33.0 ± 1.4"
    assert grit5["T→I mAP re-ranked"] == "48.0 ± 0.0"
    assert rows["infonce"]["FN rate %"] == "1" and rows["infonce"]["I→T R@1 re-ranked"] == "–"
    assert rows["infonce@fn0"]["Batch FN %"] == "0.05 ± 0.07"


def test_sweep_table_leaves_out_figures_no_run_reports(bench):
    root, _ = bench
    tree = load_bench(root)
    aggregate, _ = aggregate_runs(tree)
    for per_split in aggregate.values():
        for key in [k for k in per_split["test"] if k.endswith("_rerank")]:
            del per_split["test"][key]
    header = next(line for line in sweep_section(tree, aggregate, "fn") if line.startswith("|"))
    assert "re-ranked" not in header and "T→I mAP" in header and "Batch FN %" in header


def test_sweep_plot_is_a_readable_png(bench):
    root, report = bench
    path = root / "plots" / "fn_sweep.png"
    assert str(path) in report["files"]
    assert "plots/fn_sweep.png" in (root / "results.md").read_text()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 600


def test_an_arm_is_compared_with_the_reference_at_the_same_rate(bench):
    root, report = bench
    tree = load_bench(root)
    assert reference_of(tree, "grit@fn5") == "infonce@fn5"
    assert reference_of(tree, "grit") == "infonce"
    assert reference_of(tree, "infonce@fn5") is None
    # grit@fn5 − infonce@fn5 on the same items: (29 − 36.5, 31 − 38.5) rounded to 2 % items
    c = report["comparisons"]["grit@fn5"]["test"]["i2t_R@1"]
    assert c["diff"] == pytest.approx(-8.0)
    assert "infonce@fn5" not in report["comparisons"]
    md = (root / "results.md").read_text()
    assert "compared with infonce at the same point" in md


def test_a_bench_without_sweep_arms_has_no_sweep(tmp_path):
    for arm in ("infonce", "grit"):
        _write_run(tmp_path, arm, 0)
    report = write_report(tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "## Sweep" not in md and "same point" not in md
    assert not any(Path(p).name == "fn_sweep.png" for p in report["files"])
