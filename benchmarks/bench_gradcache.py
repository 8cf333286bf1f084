"""Peak memory and step time of a plain vs a GradCache step of a small open_clip CLIP.

A random-init open_clip ``CLIP`` (ViT image tower and text transformer, sizes below) trains
one InfoNCE step (``hardneg.losses.InfoNCELoss``, forward + backward + SGD step) on random
images and token ids, at each batch size ``B`` with the whole batch at once (plain) and with
:func:`hardneg.train.gradcache.gradcache_backward` in chunks of ``--chunk``. Modes and batch
sizes run in interleaved rounds in one process (order rotated between rounds); time is the
median over rounds, memory the maximum.

Memory is the growth of the process's peak resident set during the step
(:class:`hardneg.train.memory.PeakMemory`: ``VmHWM`` reset through ``/proc/self/clear_refs``).
RSS counts what the step really held (activations, gradients, the logit matrix), unlike
``tracemalloc``, which does not see torch's allocations. It is only honest if freed tensors go
back to the OS: glibc keeps freed heap memory resident and raises its mmap threshold after
large frees, so a later step could reuse pages a previous (bigger) step left behind and look
smaller. The benchmark therefore fixes glibc's mmap threshold (``mallopt``; every tensor above
64 KiB is its own mapping, unmapped when freed) and calls ``malloc_trim`` before each step.

    OMP_NUM_THREADS=1 python benchmarks/bench_gradcache.py            # writes results/gradcache.md
    python benchmarks/bench_gradcache.py --batch-sizes 256 1024 --rounds 2

Targets (issue "Large batches and large data"): at B=4096 the GradCache peak ≤ 1/4 of the
plain step's, its time ≤ 1.4×.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import platform
import statistics
import time
from pathlib import Path

import torch
from report_table import write_table  # a sibling module (benchmarks/ is on sys.path)

from hardneg.losses import InfoNCELoss
from hardneg.train.gradcache import chunk_slices, gradcache_backward
from hardneg.train.memory import PeakMemory

RESULTS = Path(__file__).parent / "results" / "gradcache.md"
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def release_memory() -> None:
    """Free what Python and glibc hold, so the next RSS peak is the next step's own."""
    gc.collect()
    _LIBC.malloc_trim(0)


def build(args: argparse.Namespace):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(
        layers=args.layers,
        width=args.width,
        head_width=32,
        patch_size=args.patch,
        image_size=args.image,
    )
    text = CLIPTextCfg(
        context_length=args.context,
        vocab_size=args.vocab,
        width=args.width,
        heads=args.width // 32,
        layers=args.layers,
    )
    model = CLIP(embed_dim=args.width, vision_cfg=vision, text_cfg=text)
    loss = InfoNCELoss()
    params = [*model.parameters(), *loss.parameters()]
    return model, loss, torch.optim.SGD(params, lr=1e-3)


def inputs(batch: int, args: argparse.Namespace):
    g = torch.Generator().manual_seed(batch)
    images = torch.rand(batch, 3, args.image, args.image, generator=g)
    tokens = torch.randint(1, args.vocab - 1, (batch, args.context), generator=g)
    tokens[:, -1] = args.vocab - 1  # EOT (argmax pooling) at the end
    return images, tokens


def step(model, loss_fn, optimizer, images, tokens, chunk: int | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    if chunk is None:
        loss_fn(model.encode_image(images), model.encode_text(tokens)).backward()
    else:
        slices = chunk_slices(images.shape[0], chunk)

        def encode(i):
            s = slices[i]
            return model.encode_image(images[s]), model.encode_text(tokens[s])

        gradcache_backward(encode, len(slices), loss_fn)
    optimizer.step()


def measure(model, loss_fn, optimizer, batch, chunk, args) -> dict:
    images, tokens = inputs(batch, args)
    release_memory()
    with PeakMemory("cpu") as peak:
        t0 = time.perf_counter()
        step(model, loss_fn, optimizer, images, tokens, chunk)
        seconds = time.perf_counter() - t0
    del images, tokens
    release_memory()
    return {"mib": peak.mib, "s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--image", type=int, default=64)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=49408)
    parser.add_argument(
        "--skip-plain-above", type=int, default=None, help="no plain step above this B (RAM)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    _LIBC.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    _LIBC.mallopt(_M_TRIM_THRESHOLD, 64 * 1024)
    model, loss_fn, optimizer = build(args)
    cells = [
        (b, mode)
        for b in args.batch_sizes
        for mode in ("plain", "gc")
        if not (mode == "plain" and args.skip_plain_above and b > args.skip_plain_above)
    ]
    measure(model, loss_fn, optimizer, args.chunk, None, args)  # warm-up (allocations, threads)
    results: dict[tuple[int, str], list[dict]] = {cell: [] for cell in cells}
    start = time.perf_counter()
    for r in range(args.rounds):
        order = cells[r % len(cells) :] + cells[: r % len(cells)]
        for batch, mode in order:
            chunk = args.chunk if mode == "gc" else None
            out = measure(model, loss_fn, optimizer, batch, chunk, args)
            results[(batch, mode)].append(out)
            print(f"round {r + 1} B={batch} {mode}: {out['s']:.2f} s {out['mib']:.0f} MiB")
    total = time.perf_counter() - start

    def summary(batch: int, mode: str) -> tuple[float, float] | None:
        runs = results.get((batch, mode))
        if not runs:
            return None
        return max(x["mib"] for x in runs), statistics.median(x["s"] for x in runs)

    lines = [
        "# GradCache: peak memory and step time",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or 'cpu'} "
        f"({torch.get_num_threads()} thread(s), torch {torch.__version__}), "
        f"`benchmarks/bench_gradcache.py`: a random-init open_clip CLIP (ViT width "
        f"{args.width}, {args.layers} layers, patch {args.patch}, image {args.image}; text "
        f"width {args.width}, {args.layers} layers, context {args.context}), one InfoNCE step "
        f"(forward, backward, SGD) on random inputs; GradCache in chunks of {args.chunk}. "
        f"{args.rounds} interleaved rounds ({total / 60:.1f} min): time = median, memory = "
        "max over rounds. Peak = growth of the process's peak RSS during the step, with "
        "glibc's mmap threshold fixed at 64 KiB and malloc_trim before each step, so freed "
        "tensors leave the resident set.",
        "",
        "| B | plain peak MiB | GC peak MiB | GC / plain | plain s/step | GC s/step | GC / plain |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch in args.batch_sizes:
        plain, cached = summary(batch, "plain"), summary(batch, "gc")
        assert cached is not None
        if plain is None:
            lines.append(
                f"| {batch} | not run | {cached[0]:.0f} | – | not run | {cached[1]:.2f} | – |"
            )
            continue
        lines.append(
            f"| {batch} | {plain[0]:.0f} | {cached[0]:.0f} | {cached[0] / plain[0]:.2f} | "
            f"{plain[1]:.2f} | {cached[1]:.2f} | {cached[1] / plain[1]:.2f} |"
        )
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
