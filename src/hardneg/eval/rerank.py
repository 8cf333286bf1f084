r"""Re-ranked retrieval (ALBEF): the dual encoder's top-k candidates re-ordered by a pair score.

ALBEF (Li et al. 2021, arXiv:2107.07651, §"Image-Text Retrieval" of the downstream tasks)
retrieves with both of its halves: for each query the dual encoder's (ITC) cosine similarity
picks the top-k candidates, and the cross-modal transformer's image-text matching (ITM) score
re-orders those k; GRIT-VLP, FALCON and BACL report retrieval the same way. For a query
:math:`q` with ITC similarities :math:`s_{qj}`, let :math:`T_q` be its k best candidates by
:math:`s_{qj}`. The re-ranked list is

.. math::
    \underbrace{T_q \text{ sorted by } c_{qj}}_{\text{positions } 1..k},\quad
    \underbrace{\text{the rest sorted by } s_{qj}}_{\text{positions } k+1..},\qquad
    c_{qj} = \begin{cases} \mathrm{itm}(q, j) & \texttt{combine="itm"} \\
    \mathrm{itm}(q, j) + s_{qj} & \texttt{combine="itm+itc"} \end{cases}

``"itm"`` is ALBEF's (its code ranks the k by the ITM logit alone); ``"itm+itc"`` is BLIP's
(Li et al. 2022, arXiv:2201.12086), which adds the cosine. Candidates outside the top-k keep
their ITC order below it, so ``R@K`` for ``K ≥ k`` equals the ITC one. R@K and AP are then
read off this ranking exactly as :func:`~hardneg.eval.retrieval.retrieval_items` reads them off
the ITC ranking, with the same pessimistic tie rule (among equal scores, in the top-k choice
as in either order, a non-relevant candidate ranks first) and the same relevance.

Cost: ``k`` pair scores per query, ``(N + M)·k`` in all; the ITC scores are formed one
``chunk_size × gallery`` block at a time (never N×M).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from hardneg.eval.retrieval import (
    Relevance,
    _block_relevance,
    _check_ks,
    metrics_from_items,
)
from hardneg.eval.topk import check_chunk, check_pair

__all__ = [
    "RERANK_K",
    "RERANK_SUFFIX",
    "Combine",
    "PairScorer",
    "rerank_evaluation",
    "rerank_items",
]

#: The default number of ITC candidates re-ranked per query (ALBEF's configs: 256 on COCO's 5k
#: test images, 128 on Flickr30k's 1k; 16 keeps the evaluation after training cheap).
RERANK_K = 16
#: Appended to the metric and per-item names of re-ranked retrieval (``i2t_R@1_rerank``).
RERANK_SUFFIX = "_rerank"

PairScorer = Callable[[Tensor, Tensor], Tensor]
"""``score_pairs(text_rows, image_rows)`` → ``(n,)`` score of each row-aligned (caption, image)
pair, higher = better match (e.g. the ITM logit). Rows are int64 indices into the captions and
images, on the embeddings' device."""

Combine = Literal["itm", "itm+itc"]


def rerank_items(
    image_emb: Tensor,
    text_emb: Tensor,
    relevance: Relevance,
    score_pairs: PairScorer,
    k: int = RERANK_K,
    combine: Combine = "itm",
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 256,
    chunk_size: int = 256,
) -> dict[str, Tensor]:
    """Per-query outcomes of the re-ranked retrieval, both directions (see the module).

    I→T re-ranks each image's k best captions, T→I each caption's k best images.

    Args:
        image_emb: (N, d) image embeddings (normalised by the caller for cosine similarity).
        text_emb: (M, d) caption embeddings on the same device.
        relevance: as for :func:`~hardneg.eval.retrieval.retrieval_items`.
        score_pairs: the pair score (see :data:`PairScorer`), called with at most
            ``batch_size`` pairs at a time.
        k: candidates re-ranked per query, ≥ 1; clipped to the gallery's size.
        combine: ``"itm"`` (ALBEF: the pair score alone) or ``"itm+itc"`` (BLIP: plus the
            cosine) orders the top-k.
        ks: recall cut-offs, distinct positive integers.
        batch_size: pairs per ``score_pairs`` call.
        chunk_size: queries per block of ITC scores (each block is ``chunk_size × gallery``).

    Returns:
        the keys and shapes of :func:`~hardneg.eval.retrieval.retrieval_items`
        (``i2t_hit@K``, ``i2t_ap``, ``t2i_hit@K``, ``t2i_ap``), so that
        :func:`~hardneg.eval.retrieval.metrics_from_items` reads them.

    Example:
        >>> img = torch.eye(2)
        >>> txt = torch.tensor([[0.6, 0.8], [0.8, 0.6]])  # caption j is true of image j only
        >>> same = lambda i, t: i[:, None] == t[None, :]
        >>> itm = lambda t, i: (t == i).float()  # a perfect matcher
        >>> out = rerank_items(img, txt, same, itm, k=2)
        >>> out["i2t_hit@1"].tolist(), out["t2i_hit@1"].tolist()
        ([True, True], [True, True])
        >>> rerank_items(img, txt, same, itm, k=1)["i2t_hit@1"].tolist()  # ITC's top-1 stays
        [False, False]
    """
    dtype = check_pair("image_emb", image_emb, "text_emb", text_emb)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer ≥ 1 (candidates re-ranked per query), got {k!r}")
    if combine not in get_args(Combine):
        raise ValueError(f"combine must be one of {get_args(Combine)}, got {combine!r}")
    if not callable(relevance) or not callable(score_pairs):
        raise ValueError("relevance and score_pairs must be callables (see hardneg.eval.rerank)")
    batch_size = check_chunk("batch_size", batch_size)
    chunk_size = check_chunk("chunk_size", chunk_size)
    ks = _check_ks(ks)
    image_emb, text_emb = image_emb.to(dtype), text_emb.to(dtype)
    out: dict[str, Tensor] = {}
    for name, q, key, i2t in (
        ("i2t", image_emb, text_emb, True),
        ("t2i", text_emb, image_emb, False),
    ):
        pair_scores = partial(_pair_scores, score_pairs, i2t, batch_size)
        hits, aps = _direction(q, key, relevance, pair_scores, i2t, k, combine, ks, chunk_size)
        out.update({f"{name}_hit@{c}": hits[:, j] for j, c in enumerate(ks)})
        out[f"{name}_ap"] = aps
    return out


def rerank_evaluation(
    image_emb: Tensor,
    text_emb: Tensor,
    relevance: Relevance,
    score_pairs: PairScorer,
    k: int = RERANK_K,
    combine: Combine = "itm",
    batch_size: int = 256,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """What the evaluators store: :func:`rerank_items`' metrics (R@1/5/10, mAP, rsum) and
    per-item arrays, every name suffixed :data:`RERANK_SUFFIX` (``i2t_R@1_rerank``,
    ``i2t_hit@1_rerank``, ``t2i_ap_rerank``, …)."""
    items = rerank_items(
        image_emb, text_emb, relevance, score_pairs, k, combine, batch_size=batch_size
    )
    metrics = {f"{m}{RERANK_SUFFIX}": v for m, v in metrics_from_items(items).items()}
    return metrics, {f"{n}{RERANK_SUFFIX}": v.cpu().numpy() for n, v in items.items()}


def _pair_scores(
    score_pairs: PairScorer, i2t: bool, batch_size: int, q_idx: Tensor, top: Tensor
) -> Tensor:
    """``score_pairs`` of each query of ``q_idx`` with its candidates ``top`` (Q, k), called
    ``batch_size`` pairs at a time and checked: (Q, k) scores."""
    queries, candidates = q_idx.repeat_interleave(top.shape[1]), top.reshape(-1)
    text, image = (candidates, queries) if i2t else (queries, candidates)
    out = []
    for start in range(0, len(text), batch_size):
        rows = slice(start, start + batch_size)
        n = len(text[rows])
        got = score_pairs(text[rows], image[rows])
        if not isinstance(got, Tensor) or tuple(got.shape) != (n,):
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise ValueError(
                f"score_pairs must return a ({n},) tensor, one score per (text, image) pair, "
                f"got {shape}"
            )
        if not bool(torch.isfinite(got).all()):
            raise ValueError("score_pairs returned NaN/inf scores; check the cross-modal head")
        out.append(got.detach().to(top.device))
    return torch.cat(out).view_as(top)


def _ranking(scores: Tensor, relevant: Tensor) -> Tensor:
    """Each row's columns ordered by score (descending), a non-relevant column first among
    equal scores, then the lower column."""
    by_relevance = relevant.to(torch.uint8).sort(dim=1, stable=True).indices
    by_score = scores.gather(1, by_relevance).sort(dim=1, descending=True, stable=True).indices
    return by_relevance.gather(1, by_score)


def _direction(
    queries: Tensor,
    keys: Tensor,
    relevance: Relevance,
    pair_scores: Callable[[Tensor, Tensor], Tensor],
    i2t: bool,
    k: int,
    combine: Combine,
    ks: Sequence[int],
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """Per query of one direction: re-ranked hit@K (Q, len(ks)) bool and AP (Q,) float64."""
    device = queries.device
    key_index = torch.arange(keys.shape[0], device=device)
    ks_t = torch.tensor(list(ks), device=device)
    hits, aps = [], []
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size]
        q_idx = torch.arange(start, start + block.shape[0], device=device)
        sim = block @ keys.T
        rel = _block_relevance(relevance, i2t, q_idx, key_index)
        if not bool(rel.any(dim=1).all()):
            raise ValueError(
                f"{'image' if i2t else 'caption'} queries {q_idx[~rel.any(dim=1)][:5].tolist()} "
                "have no relevant candidate, so they have nothing to retrieve; fix the relevance"
            )
        order = _ranking(sim, rel)
        top = order[:, :k]
        combined = pair_scores(q_idx, top).to(sim.dtype)
        if combine == "itm+itc":
            combined = combined + sim.gather(1, top)
        top = top.gather(1, _ranking(combined, rel.gather(1, top)))
        ranked = rel.gather(1, torch.cat([top, order[:, k:]], dim=1))
        # the positives in rank order, row by row: the m-th of a row at rank (column + 1)
        rows, cols = ranked.nonzero(as_tuple=True)
        n_pos = torch.bincount(rows, minlength=block.shape[0])
        m = torch.arange(1, len(rows) + 1, device=device) - (n_pos.cumsum(0) - n_pos)[rows]
        ap = torch.zeros(block.shape[0], dtype=torch.float64, device=device)
        aps.append(ap.index_add_(0, rows, m.double() / (cols + 1).double()) / n_pos)
        best = torch.empty_like(n_pos).index_put_((rows[m == 1],), cols[m == 1] + 1)
        hits.append(best[:, None] <= ks_t[None, :])
    return torch.cat(hits), torch.cat(aps)
