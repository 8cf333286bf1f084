"""Forward+backward time and peak memory of hardneg's losses vs. open_clip's ``ClipLoss``.

Every (loss, B) cell runs in its own fresh subprocess so that peak memory (CUDA: max allocated;
CPU: growth of the peak resident set during one fwd+bwd) is not polluted by other cells; the
ratios are computed from cells measured in the same invocation of this script.

    python benchmarks/bench_losses.py                 # B ∈ {256, 1024, 4096, 16384}
    python benchmarks/bench_losses.py --sizes 256 1024 --repeats 5

Writes ``benchmarks/results/losses.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from report_table import write_table  # a sibling module (benchmarks/ is on sys.path)

RESULTS = Path(__file__).parent / "results" / "losses.md"

# name -> (constructor expression, largest B it runs at: the B² baselines are skipped at 16384
# where they would take minutes each on a CPU without telling anything new)
LOSSES = {
    "open_clip ClipLoss": ("OPEN_CLIP", 16384),
    "InfoNCE": ("InfoNCELoss(normalize=False)", 16384),
    "EGA": ("EGALoss(normalize=False)", 16384),
    "InfoNCE chunked": ("InfoNCELoss(normalize=False, chunk_size=1024)", 16384),
    "EGA chunked": ("EGALoss(normalize=False, chunk_size=1024)", 16384),
    "SigLIP": ("SigLIPLoss(normalize=False)", 4096),
    "HCL": ("HCLLoss(normalize=False)", 4096),
    "DCL": ("DCLLoss(normalize=False)", 4096),
    "Decoupled": ("DecoupledInfoNCELoss(normalize=False)", 4096),
    "Soft-InfoNCE": ("SoftInfoNCELoss(normalize=False)", 4096),
}

CELL = r"""
import json, sys, time
import torch
import torch.nn.functional as F
from hardneg.losses import *
from hardneg.train.memory import PeakMemory
from open_clip.loss import ClipLoss

B, D, REPEATS, EXPR = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dev = "cuda" if torch.cuda.is_available() else "cpu"
g = torch.Generator(device="cpu").manual_seed(0)
u = F.normalize(torch.randn(B, D, generator=g), dim=-1).to(dev).requires_grad_(True)
v = F.normalize(torch.randn(B, D, generator=g), dim=-1).to(dev).requires_grad_(True)
if EXPR == "OPEN_CLIP":
    scale = torch.tensor(1 / 0.07, device=dev, requires_grad=True)
    clip = ClipLoss()
    def step():
        clip(u, v, scale).backward()
else:
    loss_fn = eval(EXPR).to(dev)
    def step():
        loss_fn(u, v).backward()

def sync():
    if dev == "cuda":
        torch.cuda.synchronize()

with PeakMemory(dev) as peak:
    step(); sync()
times = []
for _ in range(REPEATS):
    u.grad = v.grad = None
    t0 = time.perf_counter(); step(); sync(); times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"time": times[0], "peak_mib": peak.mib, "device": dev}))
"""


def run_cell(expr: str, b: int, d: int, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CELL, str(b), str(d), str(repeats), expr],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows: dict[tuple[str, int], dict] = {}
    for b in args.sizes:
        repeats = 1 if b >= 16384 else args.repeats
        for name, (expr, max_b) in LOSSES.items():
            if b > max_b:
                continue
            cell = run_cell(expr, b, args.dim, repeats)
            rows[(name, b)] = cell
            print(
                f"B={b:6d} {name:22s} {cell['time']:8.3f} s  peak {cell['peak_mib']:9.1f} MiB",
                flush=True,
            )

    device = next(iter(rows.values()))["device"]
    lines = [
        "# Loss benchmark: forward + backward",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {device} ({platform.processor() or 'cpu'}, "
        f"torch threads default), d={args.dim}, best of {args.repeats} runs "
        "(1 at B=16384), each cell in a fresh process. Peak memory = growth of the process's "
        "peak RSS (CPU) or max allocated (CUDA) during one fwd+bwd, inputs excluded.",
        "",
        "| loss | B | time (s) | × open_clip time | × InfoNCE time | peak MiB | × naive peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (name, b), cell in rows.items():
        ref = rows.get(("open_clip ClipLoss", b))
        infonce = rows.get(("InfoNCE", b))
        naive_name = name.replace(" chunked", "")
        naive = rows.get((naive_name, b)) if name.endswith("chunked") else None
        ratio_oc = f"{cell['time'] / ref['time']:.2f}" if ref else "–"
        ratio_nce = f"{cell['time'] / infonce['time']:.3f}" if infonce else "–"
        mem_ratio = f"{cell['peak_mib'] / max(naive['peak_mib'], 1e-9):.3f}" if naive else "–"
        lines.append(
            f"| {name} | {b} | {cell['time']:.3f} | {ratio_oc} | {ratio_nce} | "
            f"{cell['peak_mib']:.0f} | {mem_ratio} |"
        )
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
