"""The ``hardneg`` command line: ``train``, ``eval``, ``data``, ``mine``, ``bench``, ``report``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# `hardneg train` options that set one config key each
_TRAIN_KEYS = {
    "data": ("data", "dataset"),
    "model": ("model", "spec"),
    "pretrained": ("model", "pretrained"),
    "images": ("data", "images"),
    "csv_img_key": ("data", "csv_img_key"),
    "csv_caption_key": ("data", "csv_caption_key"),
    "hf_image_key": ("data", "hf_image_key"),
    "hf_caption_key": ("data", "hf_caption_key"),
    "negatives": ("data", "negatives"),
}

_TRAIN_EPILOG = """\
data specs (--data, config key data.dataset):
  digitscenes[:PRESET]        the built-in synthetic scenes (default; PRESET tiny|small|quick|full)
  karpathy:PATH.json[:SPLIT]  COCO / Flickr30k Karpathy split; images under --images DIR
  csv:PATH                    open_clip-style csv / tsv (--csv-img-key, --csv-caption-key)
  hf:PATH                     a `datasets` save_to_disk directory or an imagefolder
  wds:PATTERN                 webdataset tar shards, streamed (e.g. shards/{000..099}.tar)
model specs (--model, config key model.spec):
  builtin                     the DigitScenes towers (trained here) + frozen MiniLM text
  open_clip:NAME              an open_clip model name or model-config JSON (--pretrained FILE)
  hf_clip:DIR                 a Hugging Face CLIP save_pretrained directory
Nothing is downloaded. The whole config is checked before any data is read: a bad key or
value exits with one line `hardneg: error: ...` naming it. See docs/data.md, docs/models.md."""


def _train_values(args: argparse.Namespace) -> dict[str, Any]:
    from hardneg.train.config import load_yaml, merge, parse_overrides

    values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    values.pop("method", None)
    options: dict[str, Any] = {}
    for option, (section, key) in _TRAIN_KEYS.items():
        if getattr(args, option) is not None:
            options.setdefault(section, {})[key] = getattr(args, option)
    if args.out is not None:
        options["out_dir"] = args.out
    if args.steps is not None:
        options["steps"] = args.steps
    # the options, then --set on top (the most specific wins)
    return merge(merge(values, options), parse_overrides(args.set or []))


def cmd_train(args: argparse.Namespace) -> int:
    """Train one method, evaluate it on test and test_novel, write metrics.json.

    The config is resolved and validated in full before anything is built or read.
    """
    from hardneg.errors import user_errors
    from hardneg.train.paths import absolute_paths
    from hardneg.train.validate import resolve_config

    with user_errors():
        try:
            config = absolute_paths(resolve_config(args.method, _train_values(args)))
        except TypeError as err:  # a config value a check could not handle: still a usage error
            raise ValueError(str(err)) from None

    from hardneg.train.run import train_and_evaluate
    from hardneg.train.run_lock import exit_on_signals

    with exit_on_signals():  # SIGTERM/SIGHUP unwind normally: the run lock is released
        result = train_and_evaluate(config, resume=not args.restart)
    if result is not None:
        print(json.dumps(result["metrics"], indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Re-evaluate the checkpoint of a finished run."""
    from hardneg.train.run import evaluate_run

    options = {
        key: getattr(args, option)
        for option, (section, key) in _TRAIN_KEYS.items()
        if section == "data" and key != "dataset" and getattr(args, option) is not None
    }
    metrics = evaluate_run(
        Path(args.run),
        data=args.data,
        compositional=args.compositional,
        rerank=args.rerank,
        data_options=options,
    )
    text = json.dumps(metrics, indent=2)
    print(text)
    out = Path(args.out) if args.out else Path(args.run) / "eval.json"
    record = {
        "data": args.data,
        "compositional": args.compositional,
        "rerank": args.rerank,
        "data_options": options,
        "metrics": metrics,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"hardneg: wrote {out}", file=sys.stderr)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from hardneg.data.digitscenes import commands
    from hardneg.errors import user_errors

    with user_errors():  # a preset, a folder to read or write: the user's
        if args.action == "generate":
            commands.generate(args.out, preset=args.preset, seed=args.seed)
        elif args.action == "inspect":
            commands.inspect(args.path, split=args.split, n=args.n)
        else:
            return _data_check(args)
    return 0


def _data_config(spec: str, args: argparse.Namespace) -> Any:
    """The ``DataConfig`` of data spec ``spec`` and the data-reading options (_data_options)."""
    from hardneg.train.config import DataConfig

    options = {
        key: getattr(args, option)
        for option, (section, key) in _TRAIN_KEYS.items()
        if section == "data" and option != "data" and getattr(args, option, None) is not None
    }
    return DataConfig(dataset=spec, **options)


def _data_check(args: argparse.Namespace) -> int:
    """``hardneg data check``: 0 when every image decodes, 1 otherwise (the report says which)."""
    from hardneg.data.check import check_source

    report = check_source(_data_config(args.spec, args), progress=not args.quiet)
    print(report.format())
    return 1 if report.bad else 0


def cmd_mine(args: argparse.Namespace) -> int:
    """Mine hard negatives of a karpathy / csv / hf source with a trained run or a CLIP spec."""
    from hardneg.errors import user_errors
    from hardneg.mining.command import mine_source
    from hardneg.mining.core import MiningOptions

    with user_errors():  # options, specs, paths, columns: the user's
        summary = mine_source(
            _data_config(args.data, args),
            args.out,
            MiningOptions(
                num_negatives=args.num_negatives,
                range_min=args.range_min,
                range_max=args.range_max,
                max_score=args.max_score,
                min_score=args.min_score,
                absolute_margin=args.absolute_margin,
                relative_margin=args.relative_margin,
                sampling=args.sampling,
                quantile=args.quantile,
                seed=args.seed,
            ),
            run=args.run,
            model=args.model,
            pretrained=args.pretrained,
            use_faiss=args.faiss,
            with_scores=args.with_scores,
            caption_column=args.caption_column,
            image_column=args.image_column,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
    print(json.dumps(summary, indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from hardneg.bench.runner import run_bench

    run_bench(
        args.preset,
        Path(args.out),
        methods=args.methods,
        seeds=args.seeds,
        jobs=args.jobs,
        overrides=args.set or [],
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hardneg.bench.report import write_report
    from hardneg.errors import UserError

    if not Path(args.run).is_dir():
        raise UserError(f"{args.run} is not a directory; pass the --out folder of hardneg bench")
    write_report(Path(args.run))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hardneg")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _data_options(p: argparse.ArgumentParser) -> None:
    """The options that say how to read a data source (train, eval, data check)."""
    p.add_argument("--images", metavar="DIR", help="folder a karpathy/csv source's paths are in")
    p.add_argument("--csv-img-key", metavar="COL", help="image-path column of a csv source")
    p.add_argument("--csv-caption-key", metavar="COL", help="caption column of a csv source")
    p.add_argument("--hf-image-key", metavar="COL", help="image column of an hf source")
    p.add_argument(
        "--hf-caption-key",
        metavar="COL",
        help="caption column of an hf source (default: the first of caption, captions, text, "
        "sentence, sentences, title, alt_text)",
    )
    p.add_argument(
        "--negatives",
        metavar="SPEC",
        help="hard-negative captions on real data: perturb | column:NAME | none",
    )


def build_parser() -> argparse.ArgumentParser:
    from hardneg.bench.presets import PRESETS as BENCH_PRESETS
    from hardneg.train.methods import METHODS

    parser = argparse.ArgumentParser(
        prog="hardneg", description="Hard-negative contrastive learning for image-text alignment."
    )
    parser.add_argument("--version", action="version", version=f"hardneg {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train one method (DigitScenes or your own data) and evaluate it",
        description="Train one method and evaluate it. Precedence: --config, then the options "
        "below, then --set.",
        epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", default="infonce", choices=sorted(METHODS))
    p.add_argument("--config", help="YAML file of TrainConfig fields (see configs/)")
    p.add_argument(
        "--set",
        nargs="*",
        action="extend",
        metavar="KEY=VALUE",
        help="override, e.g. optim.lr=3e-4 (may be repeated: all apply, the last wins per key)",
    )
    p.add_argument("--data", metavar="SPEC", help="data spec (below; default digitscenes)")
    p.add_argument("--model", metavar="SPEC", help="model spec (below; default builtin)")
    p.add_argument("--pretrained", metavar="PATH", help="local weights of an open_clip spec")
    _data_options(p)
    p.add_argument("--out", help="run directory (default: config out_dir)")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate the checkpoint of a run directory")
    p.add_argument("run")
    p.add_argument(
        "--data",
        metavar="SPEC",
        help="evaluate on this data spec (karpathy:PATH.json:test, csv:PATH, hf:PATH): "
        "multi-positive R@1/5/10 and mAP both ways; default: the run's evaluation data",
    )
    p.add_argument(
        "--compositional",
        metavar="JSON",
        help="compositional probes: a JSON list of {image, caption, negative[, kind]} rows "
        "(the ARO / SugarCrepe layout), images relative to the run's data.images",
    )
    p.add_argument(
        "--rerank",
        type=int,
        metavar="K",
        help="also retrieval with each query's K best candidates re-ranked by the run's "
        "cross-modal head (ITM logit, as ALBEF): *_rerank metrics; 0: none; default: the "
        "run's eval_rerank_k",
    )
    p.add_argument("--out", metavar="FILE", help="write the metrics here (default RUN/eval.json)")
    _data_options(p)  # how to read --data (and the run's own data), as train reads it
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("data", help="generate or inspect DigitScenes; check a data source")
    dsub = p.add_subparsers(dest="action", required=True)
    g = dsub.add_parser("generate", help="generate, cache and draw a contact sheet")
    g.add_argument("--out", default="runs/data")
    g.add_argument("--preset", default="quick")
    g.add_argument("--seed", type=int, default=0)
    i = dsub.add_parser("inspect", help="summarise a generated split and draw a contact sheet")
    i.add_argument("path")
    i.add_argument("--split", default="train")
    i.add_argument("-n", type=int, default=16)
    c = dsub.add_parser(
        "check",
        help="decode every image of a karpathy / csv / hf source; report bad rows, captions, "
        "splits (exit 1 if an image fails)",
    )
    c.add_argument("spec", metavar="SPEC", help="data spec, as hardneg train --data")
    _data_options(c)
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser(
        "mine",
        help="mine hard-negative captions per image and images per caption of a source",
        description="Offline cross-modal hard-negative mining (after sentence-transformers' "
        "mine_hard_negatives). Ranks count a query's non-positive keys by score; the window "
        "[--range-min, --range-max) is filtered by the score bounds and the margins against "
        "the positive's score, then --sampling picks --num-negatives. See docs/data.md.",
    )
    p.add_argument("--data", metavar="SPEC", required=True, help="karpathy / csv / hf data spec")
    p.add_argument("--run", metavar="DIR", help="a trained hardneg run directory")
    p.add_argument("--model", metavar="SPEC", help="open_clip:NAME or hf_clip:DIR")
    p.add_argument("--pretrained", metavar="PATH", help="local weights of an open_clip spec")
    _data_options(p)
    p.add_argument(
        "--out",
        metavar="PATH",
        required=True,
        help="csv source: a .csv/.tsv copy; hf: a save_to_disk folder; karpathy: a .jsonl "
        "sidecar (embeddings cached in PATH.cache/)",
    )
    p.add_argument("--num-negatives", type=int, default=3, metavar="N")
    p.add_argument("--range-min", type=int, default=0, metavar="R", help="skip the R hardest")
    p.add_argument(
        "--range-max",
        type=int,
        metavar="R",
        help="ranks below R only (default: range-min + N, or + 10·N with a filter or sampling)",
    )
    p.add_argument(
        "--max-score", type=float, metavar="S", help="drop candidates scoring above this"
    )
    p.add_argument(
        "--min-score", type=float, metavar="S", help="drop candidates scoring below this"
    )
    p.add_argument("--absolute-margin", type=float, metavar="M", help="keep s ≤ positive − margin")
    p.add_argument(
        "--relative-margin",
        type=float,
        metavar="M",
        help="keep s ≤ positive − |positive|·margin (0.05: 95%%)",
    )
    p.add_argument("--sampling", default="top", metavar="MODE", help="top | random | quantile")
    p.add_argument(
        "--quantile",
        type=float,
        default=0.5,
        metavar="Q",
        help="quantile sampling: start at this fraction of the candidates (0 hardest, 1 easiest)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of random sampling")
    p.add_argument("--with-scores", action="store_true", help="also write the scores")
    p.add_argument("--faiss", action="store_true", help="search with faiss IndexFlatIP")
    p.add_argument("--caption-column", default="hard_negatives", metavar="NAME")
    p.add_argument("--image-column", default="hard_negative_images", metavar="NAME")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="embedding batch size")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_mine)

    p = sub.add_parser("bench", help="every method side by side, with tables and plots")
    p.add_argument("--preset", default="quick", choices=sorted(BENCH_PRESETS))
    p.add_argument(
        "--methods",
        nargs="*",
        help="methods, or arms at a swept setting such as grit@fn5 (GRIT with "
        "data.false_negative_percent=5); default: the preset's",
    )
    p.add_argument("--seeds", type=int, help="number of seeds (default: the preset's)")
    p.add_argument(
        "--set",
        nargs="*",
        action="extend",
        metavar="KEY=VALUE",
        help="override applied to every run, e.g. data.seed=3 (recorded in bench.json; may be "
        "repeated)",
    )
    p.add_argument("--out", default="runs/quick")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs trained at once (default: 1 on CUDA, one per CPU core up to 4)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="rebuild results tables and plots from a bench's logs")
    p.add_argument("run")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``hardneg`` command. A :class:`~hardneg.errors.UserError` (a bad config, data
    spec, file or path) prints one line and returns 2; any other exception is a bug and keeps
    its traceback."""
    from hardneg.errors import UserError, one_line

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"hardneg: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
