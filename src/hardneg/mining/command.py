"""``hardneg mine``: a source → embeddings (cached) → hard negatives → a file the trainer reads.

Every option and path is checked before the model is built or an image is read; the
embeddings are cached in ``OUT.cache/`` (:mod:`hardneg.mining.embed`), so a killed run,
started again with the same arguments, resumes and writes the same output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hardneg.data.sources import check_data_config, open_source
from hardneg.mining.core import MiningOptions, mine_hard_negatives
from hardneg.mining.embed import embed_source, load_encoder
from hardneg.mining.output import check_output, column_names, write_negatives

__all__ = ["cache_dir", "mine_source"]


def cache_dir(out: str | Path) -> Path:
    """Where the embeddings of a run writing ``out`` are cached: ``OUT.cache/``."""
    out = Path(out)
    return out.with_name(out.name + ".cache")


def mine_source(
    data: Any,
    out: str | Path,
    options: MiningOptions,
    run: str | Path | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    use_faiss: bool = False,
    with_scores: bool = False,
    caption_column: str = "hard_negatives",
    image_column: str = "hard_negative_images",
    batch_size: int = 64,
    chunk: int = 1024,
    progress: bool = True,
) -> dict[str, Any]:
    """Mine the karpathy / csv / hf source of the ``DataConfig`` ``data`` and write ``out``.

    Returns:
        A summary: ``images``, ``captions``, ``short_captions`` / ``short_images`` (queries
        that got fewer than ``num_negatives``), ``out``.

    Raises:
        ValueError / FileNotFoundError / KeyError: a bad option, spec, path or column (one
            line naming it and the fix).
    """
    options.check()
    kind = check_data_config(data).kind
    if kind not in ("karpathy", "csv", "hf"):
        raise ValueError(
            f"--data {data.dataset!r}: hardneg mine reads karpathy, csv and hf sources (got {kind})"
        )
    encoder = load_encoder(run, model, pretrained)
    dataset = open_source(data, encoder.image_size)
    names = column_names(caption_column, image_column, with_scores)
    check_output(dataset, kind, out, names)
    embeddings = embed_source(
        dataset, encoder, cache_dir(out), batch_size=batch_size, chunk=chunk, progress=progress
    )
    mined = mine_hard_negatives(
        embeddings.images.to(encoder.device),
        embeddings.captions.to(encoder.device),
        embeddings.caption_items,
        num_negatives=options.num_negatives,
        range_min=options.range_min,
        range_max=options.range_max,
        max_score=options.max_score,
        min_score=options.min_score,
        absolute_margin=options.absolute_margin,
        relative_margin=options.relative_margin,
        sampling=options.sampling,
        quantile=options.quantile,
        seed=options.seed,
        with_scores=with_scores,
        use_faiss=use_faiss,
    )
    path = write_negatives(dataset, kind, data, mined, out, caption_column, image_column)
    return {
        "images": len(embeddings.images),
        "captions": len(embeddings.captions),
        "short_captions": mined.caption_to_image.short,
        "short_images": mined.image_to_caption.short,
        "out": str(path),
    }
