"""Bench report: tables, tidy CSV, JSON, paired differences, claims and plots of a synthetic
run tree (3 methods × 2 seeds)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hardneg.bench.aggregate import POLICY_TREND
from hardneg.bench.plots import curriculum_curves, mean_curve
from hardneg.bench.report import write_report
from hardneg.bench.tree import BenchRun, load_bench
from hardneg.eval.items import pack_items

METHODS = ["infonce", "bacl_dual", "falcon"]
SEEDS = [0, 1]
KINDS = ["flip_relation", "swap_colours"]
SPLIT_METRICS = [
    "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_mAP", "t2i_mAP",
    "rsum", *[f"comp_{k}" for k in KINDS], "comp_overall", "itm_comp_overall", "ael",
]  # fmt: skip
TRAIN_METRICS = [
    "step_time", "peak_mem_mib", "selected_fn_rate", "batch_fn_rate", "fn_rate", "mem_ratio",
]  # fmt: skip
PLOTS = [
    "recall_bars.png", "training_curves.png", "bacl_curriculum.png",
    "selected_hardness.png", "falcon_q.png", "fn_rate.png",
]  # fmt: skip
STEPS = 100
N_ITEMS = 100  # test queries of the fake per_item.npz

# hand-chosen per-seed values of the cells the tests check
I2T_R1 = {"infonce": (30.0, 32.0), "bacl_dual": (40.0, 44.0), "falcon": (50.0, 50.0)}
STEP_TIME = {"infonce": (0.1, 0.1), "bacl_dual": (0.2, 0.3), "falcon": (0.12, 0.14)}
SELECTED_FN = {"infonce": (None, None), "bacl_dual": (2.0, 4.0), "falcon": (None, None)}
BATCH_FN = {"infonce": (10.0, 12.0), "bacl_dual": (9.0, 9.0), "falcon": (5.0, 7.0)}


def _split(method: str, seed: int, offset: float) -> dict[str, float]:
    values = {k: 10.0 + offset + seed for k in SPLIT_METRICS}
    values["i2t_R@1"] = I2T_R1[method][seed] + offset
    if method == "falcon" and seed == 1:
        values["ael"] = math.nan  # e.g. no probe: must be flagged, not averaged in
    return values


def _log_rows(method: str, seed: int) -> list[dict[str, object]]:
    rows = []
    for step in range(5, STEPS + 1, 5):
        row: dict[str, object] = {
            "step": step,
            "epoch": step / 25,
            "loss": 2.0 - step / 100 + 0.1 * seed,
            "lr": 1e-3,
            "step_time": 0.1,
        }
        if method != "infonce":
            row["contrastive"] = 1.5 - step / 200
        if method == "bacl_dual":
            row["alpha"] = 0.3 - 0.8 * step / STEPS
            row["cla"] = "" if step == 5 else 0.2  # empty cell = not logged
            row["selected_fn_rate"] = 3.0
        if method == "falcon":
            q = step / STEPS
            row.update(batch_q_mean=q, batch_q_p10=q * 0.8, batch_q_p90=min(1.0, q * 1.2))
        rows.append(row)
    return rows


def _write_run(root: Path, method: str, seed: int) -> None:
    out = root / method / f"seed{seed}"
    out.mkdir(parents=True)
    (out / "config.json").write_text(
        json.dumps({"method": method, "seed": seed, "steps": STEPS,
                    "miner": {"curriculum": "default"}})
    )  # fmt: skip
    rows = _log_rows(method, seed)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with (out / "train_log.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    metrics = {
        "method": method,
        "seed": seed,
        "steps": STEPS,
        "step_time": STEP_TIME[method][seed],
        "peak_mem_mib": 100.0 + 10 * seed,
        "selected_fn_rate": SELECTED_FN[method][seed],
        "batch_fn_rate": BATCH_FN[method][seed],
        "metrics": {"test": _split(method, seed, 0.0), "test_novel": _split(method, seed, -5.0)},
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    # per-item I→T hits whose mean is the run's R@1: the first R@1 % of the queries hit, so
    # every method's hits contain infonce's (the paired differences are all ≥ 0)
    items = {
        split: {"i2t_hit@1": np.arange(N_ITEMS) < I2T_R1[method][seed] + offset}
        for split, offset in (("test", 0.0), ("test_novel", -5.0))
    }
    np.savez(out / "per_item.npz", **pack_items(items))
    if method == "bacl_dual":
        rng = np.random.default_rng(seed)
        steps = np.repeat(np.arange(STEPS), 4).astype(float)
        scores = np.stack([steps, rng.normal(size=len(steps))], 1)
        np.save(out / "selected_boundary_scores.npy", scores)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bench")
    (root / "bench.json").write_text(
        json.dumps({"preset": "quick", "methods": METHODS, "seeds": [0, 1, 2], "steps": STEPS,
                    "batch_size": 32, "reference": "infonce"})
    )  # fmt: skip
    for method in METHODS:
        for seed in SEEDS:
            _write_run(root, method, seed)
    # seed 2: bacl crashed (error.log), falcon was interrupted, infonce never started
    (root / "bacl_dual" / "seed2").mkdir()
    (root / "bacl_dual" / "seed2" / "error.log").write_text("Traceback ...")
    (root / "falcon" / "seed2").mkdir()
    (root / "falcon" / "seed2" / "train_log.csv").write_text("step,loss\n5,1.0\n")
    return root, write_report(root)


def _row(markdown: str, section: str, method: str) -> list[str]:
    """The cells of ``method``'s row in the first table after the heading ``section``."""
    text = markdown.split(f"## {section}\n", 1)[1]
    for line in text.splitlines():
        if line.startswith(f"| {method} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row for {method} under {section}")


def _header(markdown: str, section: str) -> list[str]:
    text = markdown.split(f"## {section}\n", 1)[1]
    line = next(line for line in text.splitlines() if line.startswith("|"))
    return [c.strip() for c in line.strip("|").split("|")]


def _cell(markdown: str, section: str, method: str, column: str) -> str:
    return _row(markdown, section, method)[_header(markdown, section).index(column)]


def test_markdown_cell_is_hand_computed_mean_and_sample_std(bench):
    root, _ = bench
    md = (root / "results.md").read_text()
    # bacl I→T R@1 over seeds (40, 44): mean 42, sample std sqrt(2² + 2²) = 2.83
    assert _cell(md, "Test", "bacl_dual", "I→T R@1") == "42.0 ± 2.8"
    # test_novel is offset by −5: (35, 39)
    assert (
        _cell(md, "Test (novel digit–colour combinations)", "bacl_dual", "I→T R@1") == "37.0 ± 2.8"
    )
    # no step-time or memory ratio: the bench's runs share the CPU and a worker process, so
    # their step times and peaks are not comparable (the JSON keeps mem_ratio)
    assert "Time ×" not in _header(md, "Test") and "Mem ×" not in _header(md, "Test")


def test_bold_marks_the_best_higher_and_lower_is_better(bench):
    root, _ = bench
    md = (root / "results.md").read_text()
    assert _cell(md, "Test", "falcon", "I→T R@1") == "**50.0 ± 0.0**"
    assert "**" not in _cell(md, "Test", "bacl_dual", "I→T R@1")
    # FN rate (lower is better): bacl uses its selected rate (3.00)
    assert _cell(md, "Test", "bacl_dual", "FN rate %") == "**3.00 ± 1.41**"
    assert _cell(md, "Test", "infonce", "FN rate %") == "11.00 ± 1.41"


def test_markdown_states_budget_and_per_kind_table(bench):
    root, _ = bench
    md = (root / "results.md").read_text()
    assert "Preset **quick**" in md and "100 steps" in md and "batch size 32" in md
    assert "seeds 0, 1, 2" in md
    header = _header(md, "Compositional accuracy per perturbation kind (test, cosine)")
    assert header == ["Method", "flip relation", "swap colours", "overall"]


def test_nan_value_is_flagged_not_averaged(bench):
    root, _ = bench
    md = (root / "results.md").read_text()
    # falcon AEL: seed 0 = 10.0, seed 1 = NaN → 10.0 from one seed, flagged
    assert _cell(md, "Test", "falcon", "AEL") == "10.0†"
    assert "† some seeds had no value" in md


def test_unfinished_runs_are_skipped_and_listed(bench):
    root, report = bench
    md = (root / "results.md").read_text()
    assert sorted(report["skipped"]) == [
        "bacl_dual/seed2 (failed, see error.log)",
        "falcon/seed2 (unfinished: no metrics.json)",
        "infonce/seed2 (not started)",
    ]
    assert "Skipped 3 run(s) without metrics.json" in md
    assert set(report["raw"]["bacl_dual"]) == {"0", "1"}


def test_csv_is_tidy_with_one_row_per_method_seed_split_metric(bench):
    root, _ = bench
    with (root / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    trend = [r for r in rows if r["metric"] in POLICY_TREND]  # only runs that log q
    assert {r["method"] for r in trend} <= {"grit", "falcon"} and trend
    assert {r["metric"] for r in trend} == {"q_start", "q_end"}  # no duplicate split logged
    rows = [r for r in rows if r["metric"] not in POLICY_TREND]
    expected = len(METHODS) * len(SEEDS) * (2 * len(SPLIT_METRICS) + len(TRAIN_METRICS))
    assert len(rows) == expected
    keys = {(r["method"], r["seed"], r["split"], r["metric"]) for r in rows}
    assert len(keys) == expected
    value = {(r["method"], r["seed"], r["split"], r["metric"]): r["value"] for r in rows}
    assert float(value["bacl_dual", "1", "test", "i2t_R@1"]) == 44.0
    assert float(value["falcon", "0", "train", "mem_ratio"]) == pytest.approx(100 / 105)
    assert value["falcon", "1", "test", "ael"] == ""  # NaN → empty, not "nan"
    assert value["infonce", "0", "train", "selected_fn_rate"] == ""


def test_json_holds_aggregate_and_raw_values(bench):
    root, report = bench
    data = json.loads((root / "results.json").read_text())
    cell = data["aggregate"]["infonce"]["test"]["i2t_R@1"]
    assert cell["mean"] == pytest.approx(31.0)
    assert cell["std"] == pytest.approx(math.sqrt(2.0))
    assert cell["n"] == 2
    assert data["raw"]["falcon"]["1"]["test"]["ael"] is None
    assert data["aggregate"]["bacl_dual"]["train"]["mem_ratio"]["mean"] == pytest.approx(1.0)
    assert data["reference"] == "infonce"
    assert {Path(p).name for p in report["files"]} >= {"results.md", "results.csv", *PLOTS}


def test_every_plot_is_a_readable_png(bench):
    root, report = bench
    for name in PLOTS:
        path = root / "plots" / name
        assert str(path) in report["files"]
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width >= 600 and image.height >= 300


def test_missing_columns_skip_plots_without_failing(tmp_path):
    """A bench of plain InfoNCE runs logs no alpha / q / BNS scores: those plots are skipped."""
    out = tmp_path / "plain" / "infonce" / "seed0"
    out.mkdir(parents=True)
    (out / "train_log.csv").write_text("step,epoch,loss\n5,0.2,1.0\n10,0.4,\n")
    (out / "metrics.json").write_text(
        json.dumps({"method": "infonce", "seed": 0, "steps": 10, "step_time": None,
                    "peak_mem_mib": None, "selected_fn_rate": None, "batch_fn_rate": None,
                    "metrics": {"test": {"i2t_R@1": 20.0, "t2i_R@1": 25.0}}})
    )  # fmt: skip
    report = write_report(tmp_path / "plain")
    names = {Path(p).name for p in report["files"]}
    assert names == {"results.md", "results.csv", "results.json",
                     "recall_bars.png", "training_curves.png"}  # fmt: skip
    md = (tmp_path / "plain" / "results.md").read_text()
    # one seed: just the mean; absent metrics and ratios show a dash
    assert _cell(md, "Test", "infonce", "I→T R@1") == "20.0"
    assert _cell(md, "Test", "infonce", "AEL") == "–"


def test_missing_run_dir_raises_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "no_such_bench"
    with pytest.raises(FileNotFoundError, match="no_such_bench"):
        write_report(missing)
    empty = tmp_path / "empty_bench"
    (empty / "infonce" / "seed0").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no finished run"):
        load_bench(empty)


def test_mean_curve_averages_seeds_per_step_ignoring_nan():
    a = BenchRun("m", 0, Path("a"), {}, log={"step": np.array([5.0, 10, 15]),
                                             "loss": np.array([1.0, 2.0, np.nan])})  # fmt: skip
    b = BenchRun("m", 1, Path("b"), {}, log={"step": np.array([5.0, 10]),
                                             "loss": np.array([3.0, 6.0])})  # fmt: skip
    steps, mean = mean_curve([a, b], "loss")
    assert steps.tolist() == [5.0, 10.0]
    assert mean.tolist() == [2.0, 4.0]
    assert mean_curve([a, b], "alpha") is None


def test_curriculum_curves_follow_the_logistic_formula():
    """α(η) = α_late + (α_early − α_late)·σ(−κ(η − η₀)), computed here by hand."""
    eta, alpha = curriculum_curves(10.0, points=11)["aggressive"]
    early, late, kappa, eta0 = 0.3, -1.0, 3.0, 3.5
    expected = [late + (early - late) / (1 + math.exp(kappa * (e - eta0))) for e in eta]
    assert np.allclose(alpha, expected)
    with pytest.raises(ValueError, match="total_epochs"):
        curriculum_curves(0.0)


def test_json_comparisons_are_paired_differences_with_intervals(bench):
    _, report = bench
    comparisons = report["comparisons"]
    assert "infonce" not in comparisons  # the reference is not compared with itself
    c = comparisons["bacl_dual"]["test"]["i2t_R@1"]
    # seeds (40 − 30, 44 − 32) → Δ = 11 points over the 100 paired items of both seeds
    assert c["diff"] == pytest.approx(11.0) and c["n"] == N_ITEMS and c["seeds"] == 2
    # per-item seed-mean differences d̄ (0.5 on items 30, 31, 40–43; 1 on 32–39): the
    # interval is ≈ Δ ± 1.96 · sd(d̄)/√n
    d = np.zeros(N_ITEMS)
    d[[30, 31, 40, 41, 42, 43]], d[32:40] = 0.5, 1.0
    se = 100 * d.std() / math.sqrt(N_ITEMS)
    assert c["hi"] - c["lo"] == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert 0 < c["lo"] < 11.0 < c["hi"] and c["significant"]
    assert comparisons["falcon"]["test_novel"]["i2t_R@1"]["diff"] == pytest.approx(19.0)
    # run-level scalar: paired over seeds, falcon − infonce = (5 − 10, 7 − 12) → exactly −5
    fn = comparisons["falcon"]["train"]["batch_fn_rate"]
    assert (fn["diff"], fn["lo"], fn["hi"], fn["significant"]) == (-5.0, -5.0, -5.0, True)
    # metrics without per-item outcomes in this fake tree get no comparison
    assert "t2i_R@1" not in comparisons["bacl_dual"]["test"]


def test_markdown_shows_differences_and_claims(bench):
    root, report = bench
    md = (root / "results.md").read_text()
    cell = _cell(md, "Paired differences vs infonce", "bacl_dual", "I→T R@1")
    assert cell.startswith("**+11.0 [") and cell.endswith("]\\***")
    assert _cell(md, "Paired differences vs infonce", "bacl_dual", "T→I R@1") == "–"
    claims = {c["claim"]: c for c in report["claims"]}
    text = "dual-encoder variant (hardneg's): R@1 I→T gain over InfoNCE"
    assert claims[text]["verdict"] == "reproduced"
    assert claims["full BACL > BNS alone"]["verdict"] == "not run"  # not in this bench
    assert claims["fewer false negatives than GRIT"]["verdict"] == "not run"
    claim_rows = md.split("## Claims\n", 1)[1].splitlines()
    line = next(r for r in claim_rows if f"| {text} |" in r)
    row = [c.strip() for c in line.strip("|").split("|")]
    assert row[1:3] == [text, "bacl_dual − infonce"]
    assert row[4].startswith("+11.0 [") and row[5] == "+11.3" and row[6] == "reproduced"
