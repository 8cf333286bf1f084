"""False negatives among mined hard negatives on DigitScenes, where every caption's meaning is
known: no filter vs. positive-aware relative margins (NV-Retriever, arXiv:2407.15831).

A builtin model is trained briefly on ``digitscenes:PRESET`` (or ``--run DIR`` is loaded), the
scenes and captions of its ``test`` split are embedded — full captions and the *partial* ones
that name a single object, which are true of every scene holding that object — and both
directions are mined with ``mine_hard_negatives`` (top sampling, one row per filter setting).
A mined negative is false when its caption is true of the query scene (or the query caption
true of the negative scene): :meth:`hardneg.train.data.SplitTensors.relevance`.

    python benchmarks/mining_digitscenes.py --steps 100      # trains digitscenes:tiny first

Adds (or replaces) the section "False negatives on DigitScenes" of
``benchmarks/results/mining.md``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_mining import DIGITSCENES_HEADER as HEADER  # this folder is on sys.path

from hardneg.cli import main as cli_main
from hardneg.eval.runner import bank_text_embeddings
from hardneg.mining import mine_hard_negatives
from hardneg.train.config import config_from_dict
from hardneg.train.trainer import Trainer

RESULTS = Path(__file__).parent / "results" / "mining.md"
SETTINGS = [
    ("no filter", {}),
    ("relative_margin=0.05", {"relative_margin": 0.05}),
    ("relative_margin=0.1", {"relative_margin": 0.1}),
]


def load_run(run: Path) -> Trainer:
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    trainer = Trainer(replace(config_from_dict(state["config"]), progress=False))
    trainer.load_state_dict(state)
    return trainer


@torch.no_grad()
def embed_split(trainer: Trainer, name: str):
    """(u, v, caption scene, caption meaning) of every scene and caption (full + partial)."""
    recipe, split = trainer.recipe, trainer.splits[name]
    model, device = recipe.model.eval(), trainer.device
    u = torch.cat(
        [
            F.normalize(model.encode_images(split.images_of(idx, device))[0].float(), dim=-1)
            for idx in torch.arange(len(split)).split(256)
        ]
    ).cpu()
    rows = torch.cat([split.caption_rows, split.partial_rows], dim=1)
    meanings = split.caption_meanings()
    present = meanings >= 0
    scene = torch.arange(len(split))[:, None].expand_as(rows)[present]
    v = bank_text_embeddings(model, recipe.bank, rows[present], device, 64).cpu()
    return split, u, v, scene, meanings[present]


def false_negative_rates(split, u, v, scene, meaning, options: dict) -> dict[str, float | None]:
    """Share of mined negatives that are true of their query, per direction, and the mean
    number of negatives found per query (of 3)."""
    mined = mine_hard_negatives(u, v, scene, num_negatives=3, range_max=30, **options)
    relevant = split.relevance(torch.arange(len(u)), meaning)  # (scenes, captions)
    out: dict[str, float | None] = {}
    for name, picks, table in (
        ("caption→image", mined.caption_to_image.indices, relevant.T),
        ("image→caption", mined.image_to_caption.indices, relevant),
    ):
        found = picks >= 0
        false = table.gather(1, picks.clamp(min=0))[found]
        out[f"{name} FN %"] = 100.0 * float(false.float().mean()) if len(false) else None
        out[f"{name} found"] = float(found.sum(dim=1).float().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained builtin DigitScenes run")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            argv = ["train", "--data", f"digitscenes:{args.preset}", "--out", str(run)]
            argv += ["--steps", str(args.steps), "--set", "progress=false", "checkpoint_every=0"]
            argv += ["crossmodal.itm_weight=0", "crossmodal.mlm_weight=0"]  # contrastive only
            assert cli_main(argv) == 0
        trainer = load_run(run)
        split, u, v, scene, meaning = embed_split(trainer, "test")
    shared = int((split.relevance(torch.arange(len(u)), meaning).sum(dim=0) > 1).sum())
    model = "`--run`" if args.run else f"builtin infonce (contrastive only), {args.steps} steps"
    lines = [
        HEADER,
        "",
        f"{model} on "
        f"digitscenes:{args.preset}, its test split: {len(u)} scenes, {len(v)} captions (full "
        f"and partial; {shared} of them are true of more than one scene). Both directions, "
        "`num_negatives=3, range_max=30`, top sampling; a negative is false when the caption is "
        "true of the scene (`SplitTensors.relevance`). Found = mean negatives per query (of 3).",
        "",
        "| filter | caption→image FN % | found | image→caption FN % | found |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, options in SETTINGS:
        r = false_negative_rates(split, u, v, scene, meaning, options)
        cells = [
            "–" if r[f"{d} FN %"] is None else f"{r[f'{d} FN %']:.1f}"
            for d in ("caption→image", "image→caption")
        ]
        lines.append(
            f"| {label} | {cells[0]} | {r['caption→image found']:.2f} | "
            f"{cells[1]} | {r['image→caption found']:.2f} |"
        )
    lines += [
        "",
        "An image's positive score is the lowest of its own captions' (sentence-transformers' "
        "rule), here usually a partial caption naming one object, which scores low: a relative "
        "margin then drops nearly every windowed caption (found ≈ 0; the FN rate is then taken "
        "over a handful of negatives, or undefined: –). On real data an image's captions are "
        "all full captions.",
        "",
        f"Wall time: {time.perf_counter() - started:.0f} s.",
    ]
    text = args.out.read_text() if args.out.is_file() else ""
    head = text.split(HEADER)[0].rstrip()
    args.out.write_text((head + "\n\n" if head else "") + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
