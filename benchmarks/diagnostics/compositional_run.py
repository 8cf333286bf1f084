"""Train one method in the ``compositional`` bench regime and report per-kind compositional
accuracy on the TRAIN scenes and the test scenes at a few checkpoints (learnability vs
generalisation of the swaps), plus I→T R@1 and the time per fine-tuning step.

Usage (from the worktree root)::

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD/src .venv/bin/python \
        benchmarks/diagnostics/compositional_run.py negclip --every 100 \
        --set data.cache_dir=/work/main/.cache/hardneg --set model.head_layers=2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from hardneg.bench.presets import PRESETS, run_config
from hardneg.eval.runner import evaluate_split_items
from hardneg.train.config import config_from_dict, parse_overrides
from hardneg.train.trainer import Trainer

KINDS = ("replace_digit", "change_colour", "flip_relation", "swap_colours", "swap_digits")


def _row(metrics: dict[str, float]) -> dict[str, float]:
    out = {k: round(metrics[f"comp_{k}"], 1) for k in KINDS if f"comp_{k}" in metrics}
    out["i2t_R@1"] = round(metrics["i2t_R@1"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--every", type=int, default=0, help="evaluate every N steps (0: end)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="append the result here")
    parser.add_argument("--no-train-eval", action="store_true", help="score the test split only")
    parser.add_argument(
        "--reset-heads", action="store_true",
        help="re-initialise both attention heads after the pre-training stage: the methods "
        "start from the stage's image tower only (its features), not from its alignment",
    )  # fmt: skip
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    with tempfile.TemporaryDirectory() as out:
        values = run_config(PRESETS["compositional"], args.method, args.seed, Path(out), overrides)
        values["checkpoint_every"] = 0
        trainer = Trainer(config_from_dict(values))
        if args.reset_heads:  # same Parameter objects, so the optimizer still holds them
            torch.manual_seed(args.seed)
            dual = trainer.recipe.model.dual
            for head in (dual.image_head, dual.text_head):
                fresh = type(head)(
                    head.in_dim, head.out_dim, head.query.numel(), len(head.layers),
                    max_tokens=head.positions.shape[1],
                )  # fmt: skip
                with torch.no_grad():
                    for p, q in zip(head.parameters(), fresh.parameters()):
                        p.copy_(q)
        steps = trainer.cfg.steps
        marks = list(range(args.every, steps, args.every)) if args.every else []
        curve, train_time = [], 0.0
        for stop in [*marks, steps]:
            t0 = time.perf_counter()
            trainer.fit(stop_at=stop)
            train_time += time.perf_counter() - t0
            model, bank, tower = trainer.recipe.model, trainer.bank, trainer.tower
            te = evaluate_split_items(model, bank, trainer.splits["test"], tower).metrics
            point = {"step": stop, "test": _row(te)}
            if not args.no_train_eval:
                train = trainer.splits["train"]
                point["train"] = _row(evaluate_split_items(model, bank, train, tower).metrics)
            curve.append(point)
            print(json.dumps(point), flush=True)
    result = {
        "method": args.method,
        "overrides": args.overrides,
        "seed": args.seed,
        "reset_heads": args.reset_heads,
        "ms_per_step": round(1000 * train_time / steps, 1),
        "curve": curve,
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
