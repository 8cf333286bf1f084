r"""Multi-positive image–text retrieval metrics, exact and chunked.

The metrics stream over blocks of queries *and* blocks of keys, so the largest temporary is
one ``chunk_size × key_chunk_size`` score block: an N×M similarity matrix is never
materialised, and memory stays flat as the gallery grows (benchmarks/bench_retrieval.py).

Ranking convention. Scores are inner products ``s_ij = q_i · k_j`` computed in
``promote_types(dtype, float32)`` (fp16/bf16 inputs are scored in fp32). Inputs are *not*
normalised here: pass unit vectors for cosine similarity. Everything runs on the inputs' device
(CPU or CUDA).

References:
    - Karpathy & Fei-Fei 2015, "Deep Visual-Semantic Alignments" (R@K for image–text
      retrieval on COCO/Flickr30k, 5 captions per image).
    - Manning, Raghavan & Schütze 2008, "Introduction to Information Retrieval", §8.4
      (average precision over the full ranking).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hardneg.eval.checks import check_ids
from hardneg.eval.topk import check_chunk, check_pair, scores_into

__all__ = [
    "Relevance",
    "metrics_from_items",
    "retrieval_items",
    "retrieval_metrics",
]


Relevance = Callable[[Tensor, Tensor], Tensor]
"""``relevance(image_index, text_index)`` → (len(image_index), len(text_index)) bool: is the
caption true of the image. Indices are int64 tensors on the embeddings' device."""


def _block_relevance(relevance: Relevance, i2t: bool, q_idx: Tensor, k_idx: Tensor) -> Tensor:
    """Relevance of a (query block, key block) in query × key orientation."""
    rel = relevance(q_idx, k_idx) if i2t else relevance(k_idx, q_idx).T
    if rel.dtype != torch.bool or tuple(rel.shape) != (len(q_idx), len(k_idx)):
        raise ValueError(
            f"relevance must return a ({len(q_idx)}, {len(k_idx)}) bool tensor for image index "
            f"× text index blocks, got {rel.dtype} {tuple(rel.shape)}"
        )
    return rel.to(q_idx.device)


def _positive_scores(
    buffer: Tensor, block: Tensor, q_idx: Tensor, keys: Tensor, rel_of, key_chunk: int
) -> tuple[Tensor, Tensor]:
    """Scores of every (query, positive key) pair of a query block, as (row, score).

    The scores come from the same ``block @ key_block.T`` products that :func:`_rank_counts`
    recomputes, so a positive and a negative with equal embeddings score bit-identically
    and the tie rule applies exactly. Only key blocks holding a positive are scored.
    """
    rows, scores = [], []
    for start in range(0, keys.shape[0], key_chunk):
        rel = rel_of(q_idx, start, min(keys.shape[0], start + key_chunk))
        if not bool(rel.any()):
            continue
        s = scores_into(buffer, block, keys[start : start + key_chunk])
        r, c = rel.nonzero(as_tuple=True)
        rows.append(r)
        scores.append(s[r, c])
    if not rows:
        return q_idx.new_zeros(0), block.new_zeros(0)
    rows, scores = torch.cat(rows), torch.cat(scores)
    order = torch.sort(rows, stable=True).indices  # (row, column) order
    return rows[order], scores[order]


def _rank_counts(
    buffer: Tensor,
    block: Tensor,
    q_idx: Tensor,
    keys: Tensor,
    rel_of,
    key_chunk: int,
    pos_rows: Tensor,
    pos_scores: Tensor,
) -> Tensor:
    """For each (query, positive) pair, the number of negative keys scoring ``≥`` it."""
    counts = torch.zeros_like(pos_rows)
    step = max(1, block.shape[0])
    for start in range(0, keys.shape[0], key_chunk):
        s = scores_into(buffer, block, keys[start : start + key_chunk])
        s.masked_fill_(rel_of(q_idx, start, min(keys.shape[0], start + key_chunk)), -torch.inf)
        for p in range(0, pos_rows.shape[0], step):
            rows, thr = pos_rows[p : p + step], pos_scores[p : p + step, None]
            counts[p : p + step] += (s[rows] >= thr).sum(dim=1, dtype=torch.int64)
    return counts


def _direction(
    queries: Tensor,
    keys: Tensor,
    relevance: Relevance,
    i2t: bool,
    ks: Sequence[int],
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """Per query of one direction: hit@K (Q, len(ks)) bool and AP (Q,) float64."""
    device = queries.device
    hits, aps = [], []
    ks_t = torch.tensor(list(ks), device=device)
    size = min(chunk_size, queries.shape[0]) * min(chunk_size, keys.shape[0])
    buffer = torch.empty(size, dtype=queries.dtype, device=device)
    key_index = torch.arange(keys.shape[0], device=device)

    def rel_of(q_idx: Tensor, start: int, end: int) -> Tensor:
        return _block_relevance(relevance, i2t, q_idx, key_index[start:end])

    for q_start in range(0, queries.shape[0], chunk_size):
        block = queries[q_start : q_start + chunk_size]
        q_idx = torch.arange(q_start, q_start + block.shape[0], device=device)
        rows, scores = _positive_scores(buffer, block, q_idx, keys, rel_of, chunk_size)
        n_pos = torch.bincount(rows, minlength=block.shape[0])
        if bool((n_pos == 0).any()):
            first = (q_idx[n_pos == 0][:5]).tolist()
            what = ("image", "caption") if i2t else ("caption", "image")
            raise ValueError(
                f"{int((n_pos == 0).sum())} {what[0]} quer(ies) (e.g. {first}) have no relevant "
                f"{what[1]}, so they have nothing to retrieve; drop them or fix the relevance/ids"
            )
        n_neg = _rank_counts(buffer, block, q_idx, keys, rel_of, chunk_size, rows, scores)
        # Pad the positives of each query into a (c, P_max) table, best positive first.
        within = torch.arange(rows.shape[0], device=device) - (n_pos.cumsum(0) - n_pos)[rows]
        width = int(n_pos.max())
        shape = (block.shape[0], width)
        s_pad = torch.full(shape, -torch.inf, dtype=scores.dtype, device=device)
        n_pad = torch.zeros(shape, dtype=torch.long, device=device)
        s_pad[rows, within], n_pad[rows, within] = scores, n_neg
        order = s_pad.sort(dim=1, descending=True, stable=True).indices
        m = torch.arange(1, width + 1, device=device)
        rank = m + n_pad.gather(1, order)  # rank of the m-th best positive in the full list
        valid = m[None, :] <= n_pos[:, None]
        aps.append(((m.double() / rank) * valid).sum(dim=1).div(n_pos))
        hits.append(rank[:, :1] <= ks_t[None, :])
    return torch.cat(hits), torch.cat(aps)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks must not repeat a cut-off, got {ks!r}")
    return ks


def retrieval_items(
    image_emb: Tensor,
    text_emb: Tensor,
    relevance: Relevance,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, Tensor]:
    r"""Per-query retrieval outcomes with an arbitrary (exact) relevance relation.

    The same ranking and tie rule as :func:`retrieval_metrics`, whose metrics are the means of
    these items (×100), but the positives of image ``i`` are the captions ``j`` with
    ``relevance(i, j)`` — e.g. every caption whose meaning is true of the scene, including
    captions written for another image — and symmetrically for caption queries. Relevance is
    asked one ``chunk_size × chunk_size`` block at a time, so no N×M matrix is formed.

    Args:
        image_emb: (N, d) image embeddings (normalised by the caller for cosine similarity).
        text_emb: (M, d) caption embeddings on the same device.
        relevance: ``relevance(image_index, text_index)`` → bool block (see :data:`Relevance`);
            every image and every caption needs at least one relevant partner.
        ks: recall cut-offs, distinct positive integers.
        chunk_size: rows per query block and per key block.

    Returns:
        ``{"i2t_hit@K": (N,) bool, "i2t_ap": (N,) float64, "t2i_hit@K": (M,) bool,
        "t2i_ap": (M,) float64}`` on the inputs' device (AP in [0, 1]).
    """
    dtype = check_pair("image_emb", image_emb, "text_emb", text_emb)
    chunk_size = check_chunk("chunk_size", chunk_size)
    ks = _check_ks(ks)
    if not callable(relevance):
        raise ValueError("relevance must be a callable (image_index, text_index) -> bool block")
    image_emb, text_emb = image_emb.to(dtype), text_emb.to(dtype)
    out: dict[str, Tensor] = {}
    for name, q, k, i2t in (
        ("i2t", image_emb, text_emb, True),
        ("t2i", text_emb, image_emb, False),
    ):
        hits, aps = _direction(q, k, relevance, i2t, ks, chunk_size)
        out.update({f"{name}_hit@{c}": hits[:, j] for j, c in enumerate(ks)})
        out[f"{name}_ap"] = aps
    return out


def metrics_from_items(
    items: dict[str, Tensor], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K, mAP (percent) and ``rsum`` of :func:`retrieval_items`' per-query outcomes."""
    out: dict[str, float] = {}
    for name in ("i2t", "t2i"):
        out.update(
            {f"{name}_R@{k}": 100.0 * float(items[f"{name}_hit@{k}"].double().mean()) for k in ks}
        )
    out["i2t_mAP"] = 100.0 * float(items["i2t_ap"].mean())
    out["t2i_mAP"] = 100.0 * float(items["t2i_ap"].mean())
    out["rsum"] = sum(out[f"{n}_R@{k}"] for n in ("i2t", "t2i") for k in ks)
    return out


def retrieval_metrics(
    image_emb: Tensor,
    text_emb: Tensor,
    image_ids: Tensor | Sequence[int],
    text_ids: Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    r"""Image→text and text→image Recall@K and mAP with multiple positives, in percent.

    Positives are defined by semantic ids: the positives of image ``i`` are all captions with
    ``text_ids == image_ids[i]`` (typically its 5 captions, plus any duplicate caption of an
    identical scene), and symmetrically for captions. Every query must have at least one
    positive. For one query with ``P`` positives, rank all keys by score and let ``r_m`` be the
    rank of its m-th best positive; then

    .. math::
        \mathrm{R@K} = \mathbb 1[r_1 \le K],\qquad
        \mathrm{AP} = \frac1P \sum_{m=1}^{P} \frac{m}{r_m},\qquad
        r_m = m + \#\{\text{negatives } j : s_j \ge s_{(m)}\},

    averaged over queries (AP over the *full* ranking). ``rsum`` is the sum of all recalls
    (the six of the default ``ks``).

    Tie rule (pessimistic): a negative that scores exactly as high as a positive ranks before
    it, so a collapsed model (all scores equal) gets the worst possible metrics rather than
    credit from the data order. Ties between positives do not change any metric. (This
    differs from :func:`chunked_topk`'s index tie-break only when a negative exactly ties a
    positive.)

    Computed in blocks of ``chunk_size`` queries × ``chunk_size`` keys: the positives' scores
    are taken from the key blocks that contain them, then each key block is scored once more
    and, per (query, positive), the negatives scoring ``≥`` it are counted. Memory is
    ``O(chunk_size²)``, never N×M; time is about one N×M matmul per direction, plus the
    key blocks holding positives and one comparison per (query-positive pair, key): about
    2 s for 5k images × 25k captions (d=256) on 2 CPU cores.

    Args:
        image_emb: (N, d) image embeddings, normalised by the caller for cosine similarity.
        text_emb: (M, d) caption embeddings on the same device.
        image_ids: (N,) integer semantic id of each image.
        text_ids: (M,) integer semantic id of each caption.
        ks: recall cut-offs, distinct positive integers.
        chunk_size: rows per query block and per key block.

    Returns:
        ``{"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", ..., "i2t_mAP", "t2i_mAP", "rsum"}``
        (keys follow ``ks``), values in percent (0–100; ``rsum`` up to ``100·2·len(ks)``).

    Example:
        >>> import torch
        >>> img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> m = retrieval_metrics(img, txt, [0, 1], [0, 1, 1], ks=(1,))
        >>> m["i2t_R@1"], m["t2i_R@1"], round(m["i2t_mAP"], 1)
        (100.0, 100.0, 100.0)
    """
    check_pair("image_emb", image_emb, "text_emb", text_emb)
    check_chunk("chunk_size", chunk_size)
    ks = _check_ks(ks)
    device = image_emb.device
    img_ids = check_ids("image_ids", image_ids, image_emb.shape[0], device)
    txt_ids = check_ids("text_ids", text_ids, text_emb.shape[0], device)
    for name, ids, other, other_name in (
        ("image_ids", img_ids, txt_ids, "text_ids"),
        ("text_ids", txt_ids, img_ids, "image_ids"),
    ):
        orphan = ~torch.isin(ids, other)
        if bool(orphan.any()):
            first = orphan.nonzero().squeeze(1)[:5].tolist()
            raise ValueError(
                f"{name} has {int(orphan.sum())} row(s) (e.g. {first}) whose id appears nowhere "
                f"in {other_name}, so they have no positive to retrieve; drop them or fix the ids"
            )

    def same_id(image_index: Tensor, text_index: Tensor) -> Tensor:
        return img_ids[image_index][:, None] == txt_ids[text_index][None, :]

    items = retrieval_items(image_emb, text_emb, same_id, ks, chunk_size)
    return metrics_from_items(items, ks)
