"""Hard-negative mining: ``hardneg.mining.mine_hard_negatives`` vs. faiss ``IndexFlatIP`` + the
same filters in numpy.

Data: N images and 5·N captions, d=512, fp32 unit vectors (seed 0): images are random, a
caption is its image plus noise (cosine ≈ 0.45 with its image, ≈ 0 with the others). Both
directions are mined (per caption 10 negative images, per image 10 negative captions) with
``num_negatives=10, range_max=10, relative_margin=0.05, sampling="top"``: each method fetches
``range_max + #positives`` keys per query, drops the positives, keeps ranks below
``range_max`` and the keys under 95 % of the positive's score, and takes the first 10.

Each (method, round) runs in a fresh subprocess (rounds interleaved, best time kept); peak =
growth of the peak resident set during the timed call (:class:`hardneg.train.memory.
PeakMemory`, inputs excluded). Before timing, the picks of ``mine_hard_negatives`` are
asserted equal to a brute-force reference (full score matrix in fp64, a sort per query) on a
small case.

    python benchmarks/bench_mining.py            # N = 20k images, 100k captions (≈ 3 min, 2 cores)
    python benchmarks/bench_mining.py --images 2000 --rounds 1   # quick

Writes ``benchmarks/results/mining.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_retrieval import _cpu_name  # this folder is on sys.path when run as a script

from hardneg.mining import mine_hard_negatives
from hardneg.train.memory import PeakMemory

RESULTS = Path(__file__).parent / "results"
METHODS = ("hardneg", "faiss")
CAPTIONS_PER_IMAGE = 5
OPTIONS = {"num_negatives": 10, "range_max": 10, "relative_margin": 0.05}
#: the section benchmarks/mining_digitscenes.py writes into the same file (kept on rewrite)
DIGITSCENES_HEADER = "## False negatives on DigitScenes"


def make_data(n_images: int, dim: int, dtype=torch.float32):
    """(images (N, d), captions (5N, d), caption → image (5N,)), identical in every process."""
    gen = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=gen, dtype=dtype))
    items = torch.arange(n_images).repeat_interleave(CAPTIONS_PER_IMAGE)
    noise = torch.randn(len(items), dim, generator=gen, dtype=dtype) / dim**0.5
    v = torch.nn.functional.normalize(0.5 * u[items] + noise)
    return u, v, items


def filtered_top(values: np.ndarray, indices: np.ndarray, positive: np.ndarray, pos_score):
    """The numpy baseline's filters on fetched (values, indices) sorted best first."""
    n, end, margin = OPTIONS["num_negatives"], OPTIONS["range_max"], OPTIONS["relative_margin"]
    negative = ~positive
    rank = np.cumsum(negative, axis=1) - 1
    p = pos_score[:, None]
    valid = negative & (rank < end) & (values <= p - np.abs(p) * margin)
    order = np.argsort(~valid, axis=1, kind="stable")[:, :n]
    return np.where(np.take_along_axis(valid, order, 1), np.take_along_axis(indices, order, 1), -1)


def faiss_mine(u: torch.Tensor, v: torch.Tensor, items: torch.Tensor):
    """Both directions with faiss IndexFlatIP top-k and numpy filters."""
    import faiss

    un, vn, it = u.numpy(), v.numpy(), items.numpy()
    pos_caption = np.einsum("ij,ij->i", vn, un[it])
    pos_image = np.full(len(un), np.inf, dtype=np.float32)
    np.minimum.at(pos_image, it, pos_caption)
    out = []
    for queries, keys, k, positive_of, pos in (
        (vn, un, OPTIONS["range_max"] + 1, lambda idx: idx == it[:, None], pos_caption),
        (un, vn, OPTIONS["range_max"] + CAPTIONS_PER_IMAGE,
         lambda idx: it[idx] == np.arange(len(un))[:, None], pos_image),
    ):  # fmt: skip
        index = faiss.IndexFlatIP(keys.shape[1])
        index.add(keys)
        values, indices = index.search(queries, k)
        out.append(filtered_top(values, indices, positive_of(indices), pos))
    return out


def hardneg_mine(u: torch.Tensor, v: torch.Tensor, items: torch.Tensor):
    mined = mine_hard_negatives(u, v, items, **OPTIONS)
    return [mined.caption_to_image.indices.numpy(), mined.image_to_caption.indices.numpy()]


def brute_force(u: torch.Tensor, v: torch.Tensor, items: torch.Tensor):
    """Per query, the full score row sorted (score desc, index asc), the same rules applied."""
    scores = (u @ v.T).numpy()
    it = items.numpy()
    n, end, margin = OPTIONS["num_negatives"], OPTIONS["range_max"], OPTIONS["relative_margin"]
    out = []
    for direction in ("caption_to_image", "image_to_caption"):
        s = scores.T if direction == "caption_to_image" else scores
        picks = np.full((s.shape[0], n), -1)
        for q in range(s.shape[0]):
            if direction == "caption_to_image":
                positive, p = {int(it[q])}, s[q, it[q]]
            else:
                positive = set(np.flatnonzero(it == q).tolist())
                p = min(s[q, c] for c in positive)
            order = np.lexsort((np.arange(s.shape[1]), -s[q]))
            window = [k for k in order if k not in positive][:end]
            kept = [k for k in window if s[q, k] <= p - abs(p) * margin][:n]
            picks[q, : len(kept)] = kept
        out.append(picks)
    return out


def check_against_brute_force(n_images: int = 300, dim: int = 32) -> str:
    u, v, items = make_data(n_images, dim, dtype=torch.float64)
    for ours, ref in zip(hardneg_mine(u, v, items), brute_force(u, v, items), strict=True):
        assert np.array_equal(ours, ref), "mine_hard_negatives differs from the brute force"
    return f"{n_images} images × {n_images * CAPTIONS_PER_IMAGE} captions, d={dim}, fp64"


def worker(args: argparse.Namespace) -> None:
    u, v, items = make_data(args.images, args.dim)
    mine = hardneg_mine if args.worker == "hardneg" else faiss_mine
    mine(u[:500], v[: 500 * CAPTIONS_PER_IMAGE], items[: 500 * CAPTIONS_PER_IMAGE])  # warm-up
    with PeakMemory("cpu") as peak:
        t0 = time.perf_counter()
        picks = mine(u, v, items)
        elapsed = time.perf_counter() - t0
    np.savez(args.result, caption_to_image=picks[0], image_to_caption=picks[1])
    print(json.dumps({"time": elapsed, "peak_mib": peak.mib}))


def run_cell(method: str, args: argparse.Namespace, result: Path) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", method, "--images", str(args.images),
        "--dim", str(args.dim), "--result", str(result),
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def agreement(queries: np.ndarray, keys: np.ndarray, a: np.ndarray, b: np.ndarray) -> str:
    """Share of identical rows; the others must hold picks of equal fp64 scores (to 1e-5):
    near-tie swaps, as the two searches sum in different orders."""
    differ = np.flatnonzero((a != b).any(axis=1))
    for row in differ:
        q = queries[row].astype(np.float64)
        s_a = np.sort(keys[a[row][a[row] >= 0]].astype(np.float64) @ q)
        s_b = np.sort(keys[b[row][b[row] >= 0]].astype(np.float64) @ q)
        if len(s_a) != len(s_b) or np.abs(s_a - s_b).max(initial=0.0) > 1e-5:
            return f"MISMATCH in row {row}"
    swaps = f", {len(differ)} row(s) differ only by near-tie swaps" if len(differ) else ""
    return f"{100.0 * (1 - len(differ) / len(a)):.2f}% of rows identical{swaps}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--out", type=Path, default=RESULTS / "mining.md")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    started, load = time.perf_counter(), os.getloadavg()[0]
    small = check_against_brute_force()
    print(f"brute-force check passed: {small}", flush=True)
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    picks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for method in METHODS:
                path = Path(tmp) / f"{method}.npz"
                cell = run_cell(method, args, path)
                runs[method].append(cell)
                picks[method] = dict(np.load(path))
                print(f"{method:8s} {cell['time']:8.2f} s  peak +{cell['peak_mib']:7.0f} MiB")
    best = {m: min(r["time"] for r in runs[m]) for m in METHODS}
    peak = {m: max(r["peak_mib"] for r in runs[m]) for m in METHODS}
    u, v, _ = make_data(args.images, args.dim)
    sides = {"caption_to_image": (v.numpy(), u.numpy()), "image_to_caption": (u.numpy(), v.numpy())}
    checks = "; ".join(
        f"{d.replace('_to_', '→')}: {agreement(*sides[d], picks['hardneg'][d], picks['faiss'][d])}"
        for d in sides
    )
    import faiss

    lines = [
        "# Mining benchmark: `mine_hard_negatives` vs faiss IndexFlatIP + numpy filters",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {_cpu_name()} ({os.cpu_count()} cores, "
        "shared with other jobs), "
        f"{torch.get_num_threads()} torch threads, faiss {faiss.__version__} with "
        f"{faiss.omp_get_max_threads()} OpenMP threads, torch {torch.__version__}. "
        f"{args.images:,} images × {args.images * CAPTIONS_PER_IMAGE:,} captions, "
        f"d={args.dim}, fp32 unit vectors (seed 0), both directions, options {OPTIONS} "
        f"(top sampling). Time = best of {args.rounds} interleaved rounds, each in a fresh "
        "process; peak = growth of peak RSS during the call (inputs excluded), largest over "
        "rounds. Ratios come from this one invocation.",
        "",
        "| method | time (s) | × faiss time | peak extra MiB |",
        "|---|---:|---:|---:|",
    ]
    for method in METHODS:
        lines.append(
            f"| {method} | {best[method]:.2f} | {best[method] / best['faiss']:.2f} | "
            f"{peak[method]:.0f} |"
        )
    lines += [
        "",
        f"Picks, hardneg vs faiss at full size: {checks}.",
        f"Brute-force check (asserted): identical picks on {small}.",
        "",
        f"Total wall time of this run: {time.perf_counter() - started:.0f} s; 1-minute load "
        f"average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = args.out.read_text() if args.out.is_file() else ""
    kept = old[old.index(DIGITSCENES_HEADER) :] if DIGITSCENES_HEADER in old else ""
    args.out.write_text("\n".join(lines) + "\n" + ("\n" + kept if kept else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
