"""Exact top-k search: hardneg's ``chunked_topk`` vs. faiss ``IndexFlatIP`` vs. dense torch.

Queries = keys = N random unit vectors (d=512, fp32, seed 0), k=10, all three methods on the
CPU with their default thread counts. Every search runs in its own fresh subprocess so peak
memories do not mix, and at N ≤ 20k the methods are run in interleaved rounds (best time of
3) so that load from other jobs on the machine hits them alike. Peak = growth of the
process's peak resident set during the search (Linux: the high-water mark is reset through
``/proc/self/clear_refs`` right before the timed call, after data generation and a small
warm-up; elsewhere: ``ru_maxrss`` growth).
The chunked result is checked against faiss (and dense) in the same run: identical index
lists, or lists that differ only by swapping near-tied keys (re-scored in fp64, sorted scores
equal to 1e-5).

    python benchmarks/bench_retrieval.py            # N ∈ {10k, 100k}, ≈ 3 min on 2 idle cores
    python benchmarks/bench_retrieval.py --quick    # N = 10k only

Writes ``benchmarks/results/retrieval.md`` (``retrieval_quick.md`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hardneg.train.memory import PeakMemory

RESULTS = Path(__file__).parent / "results"
METHODS = ("chunked", "faiss", "dense")
DENSE_MAX_BYTES = 8 * 2**30  # never allocate an N×N fp32 matrix larger than this


def make_data(n: int, dim: int) -> np.ndarray:
    """N random unit vectors, identical in every process (seeded CPU generator)."""
    gen = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1).numpy()


def search(method: str, x: np.ndarray, k: int, chunk: int, key_chunk: int):
    """Top-k of every row of ``x`` against all rows of ``x``: (values, indices) as numpy."""
    if method == "faiss":
        import faiss

        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        return index.search(x, k)
    t = torch.from_numpy(x)
    if method == "chunked":
        from hardneg.eval import chunked_topk

        values, indices = chunked_topk(t, t, k, chunk_size=chunk, key_chunk_size=key_chunk)
    else:
        values, indices = (t @ t.T).topk(k, dim=1)
    return values.numpy(), indices.numpy()


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): robust to other jobs' load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(args: argparse.Namespace) -> None:
    """One (method, N) cell: time one search, record the peak memory growth."""
    x = make_data(args.n, args.dim)
    search(args.worker, x[:256], args.k, args.chunk_size, args.key_chunk_size)  # warm-up
    with PeakMemory("cpu") as peak:
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        values, indices = search(args.worker, x, args.k, args.chunk_size, args.key_chunk_size)
        elapsed, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    np.savez(args.result, values=values, indices=indices)
    print(json.dumps({"time": elapsed, "cpu": cpu, "peak_mib": peak.mib}))


def run_cell(method: str, n: int, args: argparse.Namespace, result: Path) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", method, "--n", str(n), "--result", str(result),
        "--dim", str(args.dim), "--k", str(args.k), "--chunk-size", str(args.chunk_size),
        "--key-chunk-size", str(args.key_chunk_size),
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(x: np.ndarray, ours: np.ndarray, ref: np.ndarray, tol: float = 1e-5) -> str:
    """Share of rows with identical index lists; the rest must be near-tie swaps."""
    differ = np.flatnonzero((ours != ref).any(axis=1))
    for row in differ:
        q = x[row].astype(np.float64)
        s_ours = np.sort(x[ours[row]].astype(np.float64) @ q)
        s_ref = np.sort(x[ref[row]].astype(np.float64) @ q)
        if np.abs(s_ours - s_ref).max() > tol:
            return f"MISMATCH in row {row} (scores differ by {np.abs(s_ours - s_ref).max():.2e})"
    same = 100.0 * (1 - len(differ) / len(ours))
    swaps = f", {len(differ)} row(s) differ only by near-tie swaps" if len(differ) else ""
    return f"identical indices on {same:.2f}% of rows{swaps}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10k only")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--key-chunk-size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds at N ≤ 20k")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    sizes = args.sizes or ([10_000] if args.quick else [10_000, 100_000])
    out_path = args.out or RESULTS / ("retrieval_quick.md" if args.quick else "retrieval.md")

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            methods = [m for m in METHODS if m != "dense" or 4 * n * n <= DENSE_MAX_BYTES]
            runs: dict[str, list[dict]] = {m: [] for m in methods}
            results = {}
            for _ in range(args.rounds if n <= 20_000 else 1):
                for method in methods:
                    path = Path(tmp) / f"{method}_{n}.npz"
                    cell = run_cell(method, n, args, path)
                    runs[method].append(cell)
                    results[method] = np.load(path)["indices"]
                    print(
                        f"N={n:7d} {method:8s} {cell['time']:8.3f} s  cpu {cell['cpu']:8.3f} s  "
                        f"peak +{cell['peak_mib']:8.1f} MiB",
                        flush=True,
                    )
            cells = {
                m: {
                    "time": min(r["time"] for r in runs[m]),
                    "cpu": min(r["cpu"] for r in runs[m]),
                    "peak_mib": max(r["peak_mib"] for r in runs[m]),
                }
                if m in runs
                else None
                for m in METHODS
            }
            x = make_data(n, args.dim)
            checks = {
                m: compare(x, results["chunked"], results[m]) for m in results if m != "chunked"
            }
            rows.append((n, cells, checks))

    lines = [
        "# Retrieval benchmark: exact top-k (queries = keys = N)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {_cpu_name()} ({os.cpu_count()} cores), "
        f"{torch.get_num_threads()} torch threads (faiss: its OpenMP default), "
        f"torch {torch.__version__}, faiss {_faiss_version()}; d={args.dim}, k={args.k}, fp32 "
        f"unit vectors (seed 0); chunked_topk with chunk_size={args.chunk_size}, "
        f"key_chunk_size={args.key_chunk_size}. Time = best of {args.rounds} interleaved rounds "
        "at N ≤ 20k, one run at 100k, every search in a fresh process; CPU s = user + "
        "system time of the process (all threads; less sensitive than wall time to other jobs "
        "sharing the cores); peak = growth of peak RSS during the search (inputs excluded; "
        "largest over rounds). All ratios come from this one invocation.",
        "",
        "| N | method | time (s) | × faiss time | × dense time | CPU s | × faiss CPU "
        "| peak extra MiB | result |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n, cells, checks in rows:
        for method in METHODS:
            cell = cells[method]
            if cell is None:
                lines.append(
                    f"| {n:,} | {method} | skipped (would need {4 * n * n / 1e9:.0f} GB) "
                    "| – | – | – | – | – | – |"
                )
                continue
            ratios = [
                f"{cell['time'] / cells[ref]['time']:.2f}" if cells.get(ref) else "–"
                for ref in ("faiss", "dense")
            ]
            if method == "chunked":
                result = "; ".join(f"vs {m}: {c}" for m, c in checks.items())
            else:
                result = "reference"
            cpu_ratio = f"{cell['cpu'] / cells['faiss']['cpu']:.2f}"
            lines.append(
                f"| {n:,} | {method} | {cell['time']:.3f} | {ratios[0]} | {ratios[1]} | "
                f"{cell['cpu']:.2f} | {cpu_ratio} | {cell['peak_mib']:.0f} | {result} |"
            )
    lines += ["", f"Total wall time of this run: {time.perf_counter() - started:.0f} s."]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {out_path}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _faiss_version() -> str:
    import faiss

    return faiss.__version__


if __name__ == "__main__":
    main()
