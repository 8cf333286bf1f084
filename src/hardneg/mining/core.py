r"""Offline cross-modal hard-negative mining on precomputed embeddings.

After sentence-transformers' ``util.mine_hard_negatives``, in both directions of an
image–caption source: each caption gets hard negative *images*, each image hard negative
*captions*. Definitions, for one query ``q`` (a caption, or an image) and its keys (the images,
or the captions), with ``s(q, k) = ⟨q, k⟩`` (cosine for unit-norm embeddings):

- **positives** of ``q`` are never negatives: a caption's own image, an image's own captions
  (all captions of one item; the data sources merge rows with the same image path into one
  item), and, with ``meaning_ids``, every item with the same meaning (e.g. DigitScenes'
  semantic ids);
- **positive score** ``p(q)``: a caption's score with its own image; an image's *lowest* score
  with its own captions (the hardest positive, sentence-transformers' conservative choice);
- **rank** ``r(q, k)``: the 0-based position of ``k`` among the keys that are not positives of
  ``q``, ordered by score descending, lower key index first among equal scores. Ranks are
  counted *before* the score filters, so the window ``range_min ≤ r < range_max`` is fixed and
  the search is exact when it fetches the ``range_max + max #positives`` best keys per query;
- **filters** keep a windowed key when ``s ≤ max_score``, ``s ≥ min_score``,
  ``s ≤ p − absolute_margin`` and ``s ≤ p − |p|·relative_margin`` (each only when set).
  The margins are NV-Retriever's positive-aware filters (Moreira et al. 2024,
  arXiv:2407.15831: ``relative_margin=0.05`` is their TopK-PercPos at 95 %);
- the kept keys, hardest first, are the **candidates** ``C`` (``L = |C|``); ``sampling`` picks
  ``n = num_negatives`` of them: ``"top"`` the first ``n``; ``"random"`` a uniformly random
  ``n``-subset (without replacement, seeded); ``"quantile"`` the ``n`` consecutive candidates
  from position ``⌊quantile · (L − n)⌋``, a fixed hardness quantile (FALCON's knob,
  arXiv:2505.11192: ``quantile=0`` the hardest, ``1`` the easiest of the window). Picks are
  returned hardest first; a query with ``L < n`` gets its ``L`` candidates, padded with -1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from hardneg.eval.checks import check_matrix
from hardneg.eval.topk import chunked_topk

__all__ = ["SAMPLINGS", "MinedDirection", "MinedNegatives", "MiningOptions", "mine_hard_negatives"]

Sampling = Literal["top", "random", "quantile"]
SAMPLINGS: tuple[str, ...] = ("top", "random", "quantile")


@dataclass(frozen=True)
class MiningOptions:
    """The options of :func:`mine_hard_negatives` (see the module docstring for semantics).

    ``range_max=None`` derives it as sentence-transformers does: ``range_min + num_negatives``,
    or ``range_min + 10·num_negatives`` when a score filter or a non-``top`` sampling is set.
    """

    num_negatives: int = 3
    range_min: int = 0
    range_max: int | None = None
    max_score: float | None = None
    min_score: float | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    sampling: Sampling = "top"
    quantile: float = 0.5
    seed: int = 0

    def window_end(self) -> int:
        """``range_max``, or its derived default."""
        if self.range_max is not None:
            return self.range_max
        filtered = any(
            v is not None
            for v in (self.max_score, self.min_score, self.absolute_margin, self.relative_margin)
        )
        wide = filtered or self.sampling != "top"
        return self.range_min + self.num_negatives * (10 if wide else 1)

    def check(self) -> None:
        """ValueError naming the option and the fix."""
        for name in ("num_negatives", "range_min", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be ≥ 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise ValueError(f"range_min must be ≥ 0, got {self.range_min}")
        end = self.window_end()
        if isinstance(end, bool) or not isinstance(end, int):
            raise ValueError(f"range_max must be an integer, got {end!r}")
        if self.num_negatives > end - self.range_min:
            raise ValueError(
                f"num_negatives={self.num_negatives} is larger than the {end - self.range_min} "
                f"candidates of the rank window [range_min={self.range_min}, range_max={end}); "
                "raise range_max or lower num_negatives"
            )
        if self.sampling not in SAMPLINGS:
            raise ValueError(
                f"sampling={self.sampling!r} is unknown; use one of {', '.join(SAMPLINGS)}"
            )
        if not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {self.quantile!r}")
        for name in ("absolute_margin", "relative_margin"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")
        if self.max_score is not None and self.min_score is not None:
            if self.min_score > self.max_score:
                raise ValueError(
                    f"min_score={self.min_score} is above max_score={self.max_score}: no "
                    "candidate can pass both; swap them"
                )


@dataclass
class MinedDirection:
    """Hard negatives of one direction.

    Attributes:
        indices: (Q, num_negatives) int64 key indices, hardest first; -1 pads a query with
            fewer candidates.
        scores: (Q, num_negatives) their scores (NaN for padding); None unless ``with_scores``.
        positive_scores: (Q,) the positive score ``p(q)`` the margins compare against.
        short: number of queries that got fewer than ``num_negatives`` negatives.
    """

    indices: Tensor
    scores: Tensor | None
    positive_scores: Tensor
    short: int


@dataclass
class MinedNegatives:
    """Both directions: ``caption_to_image`` (per caption, negative image items) and
    ``image_to_caption`` (per image item, negative caption indices)."""

    caption_to_image: MinedDirection
    image_to_caption: MinedDirection


def _check_groups(
    caption_items: Tensor, n_images: int, n_captions: int, meaning_ids: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(per image, per caption) group ids: meaning ids when given, else the item index."""
    items = torch.as_tensor(caption_items)
    if items.dim() != 1 or items.shape[0] != n_captions or items.is_floating_point():
        raise ValueError(
            f"caption_items must be a 1-D integer tensor of {n_captions} image indices (one per "
            f"caption), got shape {tuple(items.shape)} dtype {items.dtype}"
        )
    items = items.long()
    if n_captions and (int(items.min()) < 0 or int(items.max()) >= n_images):
        raise ValueError(f"caption_items must lie in [0, {n_images}) (the image rows)")
    if meaning_ids is None:
        image_groups = torch.arange(n_images)
    else:
        image_groups = torch.as_tensor(meaning_ids).long()
        if image_groups.shape != (n_images,):
            raise ValueError(
                f"meaning_ids must hold one id per image ({n_images}), got shape "
                f"{tuple(image_groups.shape)}"
            )
    return image_groups, image_groups[items]


def _search(queries: Tensor, keys: Tensor, k: int, chunk_size: int, use_faiss: bool):
    """The ``k`` best keys per query: exact chunked search, or faiss ``IndexFlatIP``."""
    if not use_faiss:
        # wide key blocks: fewer top-k merges per query block (faster than square blocks on
        # CPU in benchmarks/bench_mining.py, same 64 MiB fp32 block at the default)
        return chunked_topk(queries, keys, k, chunk_size=chunk_size, key_chunk_size=4 * chunk_size)
    try:
        import faiss
    except ImportError as err:
        raise ValueError("use_faiss=True needs faiss (pip install faiss-cpu)") from err
    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(keys.detach().float().cpu().contiguous().numpy())
    values, indices = index.search(queries.detach().float().cpu().contiguous().numpy(), k)
    return torch.from_numpy(values), torch.from_numpy(indices).long()


def _pick(valid: Tensor, options: MiningOptions, generator: torch.Generator) -> Tensor:
    """Boolean (Q, K) mask of the picked columns among the ``valid`` ones (sorted hardest
    first along each row)."""
    n = options.num_negatives
    order = valid.long().cumsum(dim=1) - 1  # position among the candidates
    if options.sampling == "top":
        return valid & (order < n)
    if options.sampling == "quantile":
        count = valid.sum(dim=1, keepdim=True).double()
        start = torch.floor(options.quantile * (count - n).clamp(min=0)).long()
        return valid & (order >= start) & (order < start + n)
    draws = torch.rand(valid.shape, generator=generator, dtype=torch.float64)
    draws[~valid] = math.inf
    kth = draws.topk(min(n, valid.shape[1]), dim=1, largest=False).values[:, -1:]
    return valid & (draws <= kth)


def _max_positives(query_groups: Tensor, key_groups: Tensor) -> int:
    """The largest number of keys that share a query's group."""
    groups, counts = key_groups.unique(return_counts=True)
    at = torch.searchsorted(groups, query_groups).clamp(max=len(groups) - 1)
    return int(torch.where(groups[at] == query_groups, counts[at], 0).max())


def _mine_direction(
    key_name: str,
    queries: Tensor,
    keys: Tensor,
    query_groups: Tensor,
    key_groups: Tensor,
    positive_scores: Tensor,
    options: MiningOptions,
    generator: torch.Generator,
    chunk_size: int,
    use_faiss: bool,
    with_scores: bool,
) -> MinedDirection:
    n, end = options.num_negatives, options.window_end()
    max_positives = _max_positives(query_groups, key_groups)
    left = keys.shape[0] - max_positives
    if n > left:
        raise ValueError(
            f"num_negatives={n} is larger than the {left} {key_name} left for some query once "
            "its positives are excluded; lower num_negatives"
        )
    k = min(keys.shape[0], end + max_positives)
    values, indices = _search(queries, keys, k, chunk_size, use_faiss)
    values, indices = values.cpu().to(positive_scores.dtype), indices.cpu()
    negative = key_groups[indices] != query_groups[:, None]
    rank = negative.long().cumsum(dim=1) - 1
    valid = negative & (rank >= options.range_min) & (rank < end)
    p = positive_scores[:, None]
    if options.max_score is not None:
        valid &= values <= options.max_score
    if options.min_score is not None:
        valid &= values >= options.min_score
    if options.absolute_margin is not None:
        valid &= values <= p - options.absolute_margin
    if options.relative_margin is not None:
        valid &= values <= p - p.abs() * options.relative_margin
    picked = _pick(valid, options, generator)
    # picked columns first, in their (hardest-first) order
    column = torch.arange(k).expand_as(picked)
    order = torch.where(picked, column, column + k).argsort(dim=1)[:, : min(n, k)]
    kept = picked.gather(1, order)
    out = torch.full((queries.shape[0], n), -1, dtype=torch.long)
    out[:, : order.shape[1]] = torch.where(kept, indices.gather(1, order), -1)
    scores = None
    if with_scores:
        scores = torch.full((queries.shape[0], n), math.nan, dtype=values.dtype)
        scores[:, : order.shape[1]] = torch.where(kept, values.gather(1, order), math.nan)
    short = int((picked.sum(dim=1) < n).sum())
    return MinedDirection(out, scores, positive_scores, short)


def mine_hard_negatives(
    image_embeddings: Tensor,
    caption_embeddings: Tensor,
    caption_items: Tensor,
    meaning_ids: Tensor | None = None,
    *,
    num_negatives: int = 3,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    sampling: Sampling = "top",
    quantile: float = 0.5,
    seed: int = 0,
    with_scores: bool = False,
    use_faiss: bool = False,
    chunk_size: int = 2048,
) -> MinedNegatives:
    """Mine hard negative images per caption and hard negative captions per image.

    The semantics of ranks, positives, filters and sampling are in the module docstring
    (:mod:`hardneg.mining.core`); the options follow sentence-transformers'
    ``util.mine_hard_negatives`` (``sampling_strategy`` → ``sampling``, plus ``quantile``).

    Args:
        image_embeddings: (N, d) one row per image item (normalise for cosine scores).
        caption_embeddings: (M, d) one row per caption.
        caption_items: (M,) the image row of each caption.
        meaning_ids: optional (N,) ids; items with equal ids are positives of each other.
        num_negatives ... seed: see :class:`MiningOptions`.
        with_scores: also return the negatives' scores.
        use_faiss: search with faiss ``IndexFlatIP`` (CPU, fp32) instead of
            :func:`~hardneg.eval.topk.chunked_topk` (exact; its largest temporary is one
            ``chunk_size × 4·chunk_size`` score block, 64 MiB in fp32 at the default).
        chunk_size: queries per block of the chunked search (keys per block: 4×).

    Returns:
        :class:`MinedNegatives`; indices are image rows (``caption_to_image``) and caption
        rows (``image_to_caption``).

    Raises:
        ValueError: a bad option or input (message names it and the fix), or
            ``num_negatives`` larger than the keys left once a query's positives are excluded.

    Example:
        >>> u = torch.eye(3)
        >>> v = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.2], [0.1, 0.0, 1.0]])
        >>> mined = mine_hard_negatives(u, v, torch.tensor([0, 1, 2]), num_negatives=1)
        >>> mined.caption_to_image.indices.tolist(), mined.image_to_caption.indices.tolist()
        ([[1], [2], [0]], [[2], [0], [1]])
    """
    options = MiningOptions(
        num_negatives,
        range_min,
        range_max,
        max_score,
        min_score,
        absolute_margin,
        relative_margin,
        sampling,
        quantile,
        seed,
    )
    options.check()
    check_matrix("image_embeddings", image_embeddings)
    check_matrix("caption_embeddings", caption_embeddings)
    n_images, n_captions = image_embeddings.shape[0], caption_embeddings.shape[0]
    image_groups, caption_groups = _check_groups(caption_items, n_images, n_captions, meaning_ids)
    items = torch.as_tensor(caption_items).long()
    dtype = torch.promote_types(image_embeddings.dtype, torch.float32)
    u, v = image_embeddings.to(dtype).cpu(), caption_embeddings.to(dtype).cpu()
    # each caption's score with its own image, in row blocks (no (M, d) temporary)
    caption_positive = torch.cat(
        [
            (block * u[i]).sum(dim=1)
            for block, i in zip(v.split(chunk_size), items.split(chunk_size))
        ]
    )
    image_positive = torch.full((n_images,), math.inf, dtype=dtype)
    image_positive.scatter_reduce_(0, items, caption_positive, reduce="amin")
    generator = torch.Generator().manual_seed(seed)
    common = dict(
        options=options,
        generator=generator,
        chunk_size=chunk_size,
        use_faiss=use_faiss,
        with_scores=with_scores,
    )
    to_image = _mine_direction(
        "images",
        caption_embeddings,
        image_embeddings,
        caption_groups,
        image_groups,
        caption_positive,
        **common,
    )
    to_caption = _mine_direction(
        "captions",
        image_embeddings,
        caption_embeddings,
        image_groups,
        caption_groups,
        image_positive,
        **common,
    )
    return MinedNegatives(to_image, to_caption)
