"""Per-method training-step overhead on DigitScenes, relative to InfoNCE.

Every method trains with a bench preset's settings (``--preset``, default ``quick``: ``small``
DigitScenes, batch 64; ``compositional``: the same data from the cached pre-training stage,
frozen image tower; same seed, encoders and cached text bank; ``--set KEY=VALUE`` on top) for
``--steps`` steps in its own fresh subprocess, without evaluation. The first epoch (31 steps,
random batches for every method while the embedding store fills) is not timed; over the rest,
reported per method: median step time (after 3 steps), wall time per step including what
happens between steps (GRIT/FALCON search-space refresh at the epoch boundary, FALCON's reward
forwards) and the growth of the process's peak memory (CUDA: max allocated). The methods run
in interleaved rounds (every method once per round, the order rotated between rounds), and each
ratio is taken against ``infonce`` *of the same round*, then summarised by the median (and
range) over rounds: a slow phase of this noisy VM then affects both sides of a ratio instead of
one method. Set ``OMP_NUM_THREADS=1`` to time what a bench worker runs.

    python benchmarks/bench_steps.py                       # ≈ 30 min on 2 idle cores
    python benchmarks/bench_steps.py --methods infonce bacl --steps 40 --rounds 2
    python benchmarks/bench_steps.py --preset compositional --reference albef --methods grit falcon
    python benchmarks/bench_steps.py --preset compositional --methods infonce negclip ega bacl \
        grit falcon

Writes ``benchmarks/results/steps.md`` (``steps_<preset>.md`` for another preset).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report_table import write_table  # a sibling module (benchmarks/ is on sys.path)

from hardneg.bench.presets import PRESETS, run_config
from hardneg.bench.runner import prepare_data
from hardneg.train.config import parse_overrides

RESULTS = Path(__file__).parent / "results" / "steps.md"
DEFAULT_METHODS = [
    "infonce", "siglip", "hcl", "negclip", "ega", "bns", "cla", "bacl", "grit", "falcon",
    "falcon_batch",
]  # fmt: skip

CELL = r"""
import json, statistics, sys, time
import torch
from hardneg.train.config import config_from_dict
from hardneg.train.memory import PeakMemory
from hardneg.train.trainer import Trainer

trainer = Trainer(config_from_dict(json.loads(sys.argv[1])))
trainer.fit(stop_at=trainer.steps_per_epoch)  # untimed: epoch 1 is random batches for all
with PeakMemory(trainer.device) as peak:
    t0 = time.perf_counter()
    history = trainer.fit()
    wall = time.perf_counter() - t0
print(json.dumps({
    "step": statistics.median(h["step_time"] for h in history[3:]),
    "wall": wall / len(history),
    "peak_mib": peak.mib,
    "device": trainer.device.type,
    "threads": torch.get_num_threads(),
}))
"""


def run_cell(method: str, steps: int, workdir: Path, preset: str, overrides: dict) -> dict:
    config = run_config(PRESETS[preset], method, 0, workdir, overrides)
    config.update(steps=steps, checkpoint_every=0, log_every=steps)
    out = subprocess.run(
        [sys.executable, "-c", CELL, json.dumps(config)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--steps", type=int, default=55, help="31 untimed + the timed rest")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides")
    parser.add_argument("--out", type=Path, help="default: results/steps[_PRESET].md")
    parser.add_argument(
        "--reference", default="infonce", help="the method every ratio is against (e.g. albef)"
    )
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    out = args.out or RESULTS.with_name(
        "steps.md" if args.preset == "quick" else f"steps_{args.preset}.md"
    )
    if args.steps < 40:
        parser.error("--steps must be ≥ 40 (31 untimed steps of epoch 1, then ≥ 9 timed)")
    ref = args.reference
    methods = args.methods if ref in args.methods else [ref, *args.methods]

    with tempfile.TemporaryDirectory() as tmp:
        # the shared cache (and the preset's pre-training stage)
        prepare_data(run_config(PRESETS[args.preset], "infonce", 0, Path(tmp), overrides))
        rounds: list[dict[str, dict]] = []
        for r in range(args.rounds):
            order = methods[r % len(methods) :] + methods[: r % len(methods)]
            cells = {}
            for method in order:
                cells[method] = cell = run_cell(
                    method, args.steps, Path(tmp), args.preset, overrides
                )
                print(
                    f"round {r + 1}: {method:18s} step {cell['step']:.3f} s  wall/step "
                    f"{cell['wall']:.3f} s  peak {cell['peak_mib']:.0f} MiB",
                    flush=True,
                )
            rounds.append(cells)

    def ratio(method: str, key: str) -> str:
        values = sorted(c[method][key] / max(c[ref][key], 1e-9) for c in rounds)
        return f"{statistics.median(values):.2f} ({values[0]:.2f}–{values[-1]:.2f})"

    device = rounds[0][ref]["device"]
    threads = rounds[0][ref]["threads"]
    lines = [
        "# Training-step overhead per method",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {device} "
        f"({platform.processor() or 'cpu'}, {threads} thread(s) per process), {args.preset} "
        "bench settings"
        + (f" with --set {' '.join(args.overrides)}" if args.overrides else "")
        + f", {args.steps} steps per method, "
        f"each in a fresh process, the first epoch untimed; {args.rounds} interleaved rounds. "
        "Step = median time of one optimisation step; wall/step also counts the work between "
        "steps (search-space refresh at the epoch boundary, FALCON reward forwards); peak = "
        "growth of peak RSS (CPU) or max allocated (CUDA) while timed. Each ratio is against "
        f"{ref} in the same round: median (min–max) over rounds.",
        "",
        f"| method | step (s) | step × {ref} | wall/step × {ref} | peak MiB | peak × {ref} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method in methods:
        step = statistics.median(c[method]["step"] for c in rounds)
        peak = statistics.median(c[method]["peak_mib"] for c in rounds)
        lines.append(
            f"| {method} | {step:.3f} | {ratio(method, 'step')} | {ratio(method, 'wall')} | "
            f"{peak:.0f} | {ratio(method, 'peak_mib')} |"
        )
    write_table(lines, out)


if __name__ == "__main__":
    main()
