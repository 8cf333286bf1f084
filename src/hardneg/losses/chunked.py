"""Blockwise (recompute-in-backward) InfoNCE/EGA rows whose memory does not grow as B².

The forward pass streams over blocks of ``chunk`` anchors: each block's logits
``scale · A_b Cᵀ`` are formed, reduced to the per-row statistics of :mod:`hardneg.losses.nce`
and freed. The backward pass recomputes each block and accumulates ``∂A``, ``∂C`` and
``∂scale``. Peak extra memory is ``O(chunk · N)`` instead of ``O(R · N)``, at the price of
one more matrix product per block. Values and gradients equal :func:`nce_rows` on the full
logit matrix (same math, same functions). The backward is not itself differentiable: double
backward (``create_graph=True``) raises and needs the plain path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hardneg.losses.checks import check_int
from hardneg.losses.nce import RowStats, nce_forward, nce_grad
from hardneg.losses.pairs import Positives, positives_from_ids


class _ChunkedNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchors, cands, scale, anchor_ids, cand_ids, offset, opts):  # type: ignore[override]
        chunk, _, _, aggregate, _ = opts
        losses, stats = [], []
        for start in range(0, anchors.shape[0], chunk):
            block = anchors[start : start + chunk]
            pos = _block_positives(anchor_ids, cand_ids, offset, start, block.shape[0], cands)
            loss, st = nce_forward(scale * (block @ cands.T), pos, aggregate)
            losses.append(loss)
            stats.append(st)
        lse_neg = torch.cat([s.lse_neg for s in stats])
        z_pos = torch.cat([s.z_pos for s in stats])
        lse_all = None if stats[0].lse_all is None else torch.cat([s.lse_all for s in stats])
        ctx.save_for_backward(anchors, cands, scale, anchor_ids, cand_ids, lse_neg, z_pos, lse_all)
        ctx.offset, ctx.opts = offset, opts
        return torch.cat(losses)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: the recomputed blocks have no graph
            raise RuntimeError(
                "double backward (create_graph=True, e.g. a gradient penalty) is not supported "
                "with chunk_size (blockwise backward); use chunk_size=None"
            )
        anchors, cands, scale, anchor_ids, cand_ids, lse_neg, z_pos, lse_all = ctx.saved_tensors
        chunk, alpha, ratio, _, renormalize = ctx.opts
        grad_a = torch.empty_like(anchors)
        grad_c = torch.zeros_like(cands)
        grad_scale = torch.zeros((), dtype=anchors.dtype, device=anchors.device)
        for start in range(0, anchors.shape[0], chunk):
            stop = min(start + chunk, anchors.shape[0])
            block = anchors[start:stop]
            pos = _block_positives(anchor_ids, cand_ids, ctx.offset, start, stop - start, cands)
            cos = block @ cands.T
            stats = RowStats(
                lse_neg=lse_neg[start:stop],
                z_pos=z_pos[start:stop],
                lse_all=None if lse_all is None else lse_all[start:stop],
            )
            dz = nce_grad(scale * cos, pos, stats, alpha, ratio, renormalize)
            dz.mul_(grad_out[start:stop, None])
            grad_scale += (dz * cos).sum()
            dz.mul_(scale)
            grad_a[start:stop] = dz @ cands
            grad_c.addmm_(dz.T, block)
        return grad_a, grad_c, grad_scale, None, None, None, None


def _block_positives(
    anchor_ids: Tensor | None,
    cand_ids: Tensor | None,
    offset: int,
    start: int,
    rows: int,
    cands: Tensor,
) -> Positives:
    ids = None if anchor_ids is None else anchor_ids[start : start + rows]
    return positives_from_ids(ids, cand_ids, offset + start, rows, cands.shape[0], cands.device)


def chunked_nce_rows(
    anchors: Tensor,
    candidates: Tensor,
    scale: Tensor,
    anchor_ids: Tensor | None,
    candidate_ids: Tensor | None,
    offset: int,
    chunk: int,
    alpha: float = 0.0,
    hardness_ratio: float = 1.0,
    aggregate: str = "mean",
    renormalize: bool = True,
) -> Tensor:
    """Per-anchor InfoNCE/EGA loss (R,) of ``scale · anchors @ candidatesᵀ``, computed blockwise.

    Args:
        anchors: (R, d) normalised anchor embeddings.
        candidates: (N, d) normalised candidates; the first ``len(candidate_ids)`` (or, without
            ids, the pair at ``offset + i``) are the true pairs, the rest extra negatives.
        scale: scalar tensor ``1/τ`` (receives a gradient).
        anchor_ids, candidate_ids: semantic ids (multi-positive) or None.
        offset: column of anchor 0's own pair (``rank * R`` under DDP).
        chunk: anchors per block.
        alpha, hardness_ratio, aggregate, renormalize: as :func:`hardneg.losses.nce.nce_rows`.
    """
    check_int("chunk_size", chunk)
    opts = (chunk, alpha, hardness_ratio, aggregate, renormalize)
    return _ChunkedNCE.apply(anchors, candidates, scale, anchor_ids, candidate_ids, offset, opts)
