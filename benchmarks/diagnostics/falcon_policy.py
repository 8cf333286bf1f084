"""Does FALCON's policy learn? Reward signal against noise per update, in the bench's regime.

Trains ``falcon`` (or another policy arm) with the ``compositional`` preset's settings and the
cached pre-training stage, keeps every step's logs (no evaluation) and reports:

- the batch mean hardness q at the start and the end (first / last 10 % of the hard-batch steps);
- the per-step reward ``Δ = L_MLM(before) − L_MLM(after)``: mean and std, and the ordinary
  least-squares slope of Δ on the batch mean q with its standard error (the signal a REINFORCE
  update can follow: a batch whose q is higher by ``std(q)`` earns ``slope·std(q)`` more reward,
  against a residual noise of ``std(residual)`` per update);
- the correlation of Δ with the batch's false-negative rate (the reward's own bias: an MLM drop
  measured on the batch just trained may favour duplicate-rich batches, which are easy to fit);
- the mean q of anchors whose search space holds a same-meaning item vs the others at the end.

    python benchmarks/diagnostics/falcon_policy.py --out benchmarks/results/falcon_policy.md
    python benchmarks/diagnostics/falcon_policy.py --set batch_sampler.falcon_lr=0.1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from hardneg.bench.aggregate import hardness_trend


def _column(history: list[dict], key: str) -> np.ndarray:
    return np.array([h.get(key, np.nan) for h in history], dtype=float)


def summarise(history: list[dict]) -> dict[str, float]:
    """The figures of the module docstring from a run's per-step logs."""
    q, reward = _column(history, "batch_q_mean"), _column(history, "falcon_reward")
    fn = _column(history, "batch_fn_rate")
    hard = np.isfinite(q) & np.isfinite(reward)
    q, reward, fn = q[hard], reward[hard], fn[hard]
    x = q - q.mean()
    slope = float((x * (reward - reward.mean())).sum() / (x * x).sum())
    residual = reward - reward.mean() - slope * x
    stderr = float(np.sqrt((residual**2).sum() / (len(q) - 2) / (x * x).sum()))
    columns = ("batch_q_mean", "batch_q_dup_mean", "batch_q_nodup_mean")
    out = {
        "hard_steps": float(len(q)),
        # q at the start and the end, as the bench reports them (results.json)
        **hardness_trend({key: _column(history, key)[hard] for key in columns}),
        "reward_mean": float(reward.mean()),
        "reward_std": float(reward.std(ddof=1)),
        "slope_reward_on_q": slope,
        "slope_stderr": stderr,
        "signal_per_update": abs(slope) * float(q.std(ddof=1)),
        "noise_per_update": float(residual.std(ddof=1)),
        "corr_reward_fn_rate": float(np.corrcoef(reward, fn)[0, 1]),
    }
    return out


def main() -> None:
    from hardneg.bench.presets import PRESETS, run_config
    from hardneg.train.config import parse_overrides
    from hardneg.train.trainer import Trainer, resolve_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="falcon")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides")
    parser.add_argument("--out", type=Path, help="append the figures to this markdown file")
    args = parser.parse_args()
    overrides = {**parse_overrides(args.overrides), "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        values = run_config(PRESETS["compositional"], args.method, args.seed, Path(tmp), overrides)
        values["progress"] = True
        history = Trainer(resolve_config(args.method, values)).fit()
    figures = summarise(history)
    lines = [f"{k}: {v:.4g}" for k, v in figures.items()]
    print("\n".join(lines))
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(f"\n## {args.method}, {args.steps} steps, seed {args.seed}, --set "
                    f"{' '.join(args.overrides) or '(none)'}\n\n")  # fmt: skip
            f.write("\n".join(f"- {line}" for line in lines) + "\n")


if __name__ == "__main__":
    main()
