"""Per-method training-step overhead on DigitScenes, relative to InfoNCE.

Every method trains with the ``quick`` bench settings (``small`` DigitScenes, batch 64, same
seed, encoders and cached text bank) for ``--steps`` steps in its own fresh subprocess, without
evaluation. Reported per method: median step time (steps after the first 3), wall time per
step including what happens between steps (GRIT/FALCON search-space refresh at epoch ends,
FALCON's reward forwards, checkpoint-free), and the growth of the process's peak memory during
training (CUDA: max allocated); ratios are against ``infonce`` measured in the same invocation.

    python benchmarks/bench_steps.py                       # ≈ 10 min on 2 idle cores
    python benchmarks/bench_steps.py --methods infonce bacl --steps 40

Writes ``benchmarks/results/steps.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "steps.md"
DEFAULT_METHODS = [
    "infonce", "siglip", "hcl", "negclip", "ega", "ega_unnormalized", "bns", "cla", "bacl",
    "grit", "fixed_q", "falcon", "falcon_batch",
]  # fmt: skip

CELL = r"""
import json, statistics, sys, time
from hardneg.train.config import config_from_dict
from hardneg.train.memory import PeakMemory
from hardneg.train.trainer import Trainer

trainer = Trainer(config_from_dict(json.loads(sys.argv[1])))
with PeakMemory(trainer.device) as peak:
    t0 = time.perf_counter()
    history = trainer.fit()
    wall = time.perf_counter() - t0
print(json.dumps({
    "step": statistics.median(h["step_time"] for h in history[3:]),
    "wall": wall / len(history),
    "peak_mib": peak.mib,
    "device": trainer.device.type,
}))
"""


def run_cell(method: str, steps: int, workdir: Path) -> dict:
    from hardneg.bench.runner import PRESETS, run_config

    config = run_config(PRESETS["quick"], method, 0, workdir)
    config.update(steps=steps, checkpoint_every=0, log_every=steps)
    out = subprocess.run(
        [sys.executable, "-c", CELL, json.dumps(config)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--steps", type=int, default=70, help="≥ 2 epochs of 31 steps")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    methods = args.methods if "infonce" in args.methods else ["infonce", *args.methods]

    from hardneg.bench.runner import PRESETS, _prepare_data, run_config

    with tempfile.TemporaryDirectory() as tmp:
        _prepare_data(run_config(PRESETS["quick"], "infonce", 0, Path(tmp)))  # shared cache
        rows = {}
        for method in methods:
            rows[method] = run_cell(method, args.steps, Path(tmp))
            cell = rows[method]
            print(
                f"{method:18s} step {cell['step']:.3f} s  wall/step {cell['wall']:.3f} s  "
                f"peak {cell['peak_mib']:.0f} MiB",
                flush=True,
            )

    ref = rows["infonce"]
    lines = [
        "# Training-step overhead per method",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {ref['device']} "
        f"({platform.processor() or 'cpu'}), quick bench settings (DigitScenes `small`, batch 64, "
        f"seed 0), {args.steps} steps per method, each in a fresh process. Step = median time "
        "of one optimisation step (after 3 warm-up steps); wall/step also counts the work "
        "between steps (search-space refresh at epoch ends, FALCON reward forwards); peak = "
        "growth of peak RSS (CPU) or max allocated (CUDA) during training.",
        "",
        "| method | step (s) | × infonce | wall/step (s) | × infonce | peak MiB | × infonce |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method, cell in rows.items():
        lines.append(
            f"| {method} | {cell['step']:.3f} | {cell['step'] / ref['step']:.2f} | "
            f"{cell['wall']:.3f} | {cell['wall'] / ref['wall']:.2f} | {cell['peak_mib']:.0f} | "
            f"{cell['peak_mib'] / max(ref['peak_mib'], 1e-9):.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
