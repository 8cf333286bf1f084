r"""Multi-positive InfoNCE rows with an optional EGA gradient amplifier (one autograd Function).

For anchor row ``i`` with logits ``z_i·`` (fp32), positives ``P(i)`` and negatives ``N(i)``:

.. math::

    z^+_i = \log \frac{1}{|P(i)|} \sum_{p \in P(i)} e^{z_{ip}} \quad(\text{log-mean; log-sum
    with } \texttt{aggregate="sum"}),\qquad
    \ell_i = \operatorname{softplus}\Big(\log \sum_{n \in N(i)} e^{z_{in}} - z^+_i\Big)
           = -\log \frac{e^{z^+_i}}{e^{z^+_i} + \sum_{n} e^{z_{in}}}.

The positives are aggregated into one term and removed from each other's denominators, so a
duplicated caption is never a negative; with a single positive this is the usual
cross-entropy (open_clip's ``ClipLoss``). A row without negatives has loss 0 and zero gradient.

EGA (Li et al. 2025, "Explicit Gradient Amplifier", arXiv:2506.02020, §3): the InfoNCE
gradient on a negative is ``∂ℓ_i/∂z_in = P̃_in`` (its share of the softmax). EGA keeps the
forward value and reweights the negatives' probabilities in the backward pass by the detached

.. math::  w_{in} = 1 + \alpha h_{in},\qquad h_{in} = \min\big(1, \exp((s_{in} - s^+_i)/\tau_h)\big)

(``s`` cosines, ``s^+_i = z^+_i τ``; ``τ_h = τ`` by default so that ``h = p_in / p_i^+``).

- ``renormalize=True`` (default): ``P̄_i = P̃_i ⊙ w_i / Σ_j P̃_ij w_ij`` (positives weight 1)
  and the gradient is ``P̄ − target``, the gradient of the weighted cross-entropy
  ``−log(e^{z⁺} / (e^{z⁺} + Σ_n sg(w_n) e^{z_n}))``. Each row sums to 0 as InfoNCE's does.
- ``renormalize=False`` (literal): ``∂ℓ_i/∂z_in = P̃_in w_in``, positives unchanged; rows
  sum to ``α Σ_n P̃_in h_in > 0``, the gradient of the surrogate
  ``ℓ(z + sg(α h ⊙ 1_N) ⊙ (z − sg(z)))``. Unstable from scratch (a net push of every logit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.losses.pairs import Positives


@dataclass(frozen=True)
class RowStats:
    """What the backward pass needs of a forward pass over a block of rows."""

    lse_neg: Tensor  # (R,) log Σ_n e^{z_in}; -inf for rows without negatives (mask path)
    z_pos: Tensor  # (R,) aggregated positive logit z⁺
    lse_all: Tensor | None  # (R,) log Σ_j e^{z_ij} (index path only)


def positive_logit(z: Tensor, pos_mask: Tensor, aggregate: str = "mean") -> Tensor:
    """Aggregated positive logit ``z⁺`` per row: log-mean-exp (or log-sum-exp) of positives."""
    z_pos = torch.logsumexp(z.masked_fill(~pos_mask, float("-inf")), dim=1)
    if aggregate == "mean":
        z_pos = z_pos - pos_mask.sum(dim=1).clamp(min=1).to(z.dtype).log()
    return z_pos


def nce_forward(z: Tensor, pos: Positives, aggregate: str = "mean") -> tuple[Tensor, RowStats]:
    """Per-row loss ``ℓ_i`` of fp32 logits ``z`` (R, N) and the statistics for its gradient."""
    if pos.index is not None:
        lse_all = torch.logsumexp(z, dim=1)
        z_pos = z.gather(1, pos.index[:, None]).squeeze(1)
        loss = lse_all - z_pos
        return loss, RowStats(lse_neg=lse_all, z_pos=z_pos, lse_all=lse_all)
    mask = pos.mask
    assert mask is not None
    lse_neg = torch.logsumexp(z.masked_fill(mask, float("-inf")), dim=1)
    z_pos = positive_logit(z, mask, aggregate)
    return F.softplus(lse_neg - z_pos), RowStats(lse_neg=lse_neg, z_pos=z_pos, lse_all=None)


_AMPLIFY_BLOCK = 1 << 16  # elements per block: the temporary stays in cache


def _amplify_(grad: Tensor, row_shift: Tensor, alpha: float, ratio: float) -> None:
    """In place ``grad *= 1 + α·min(1, e^{z − z⁺})^ratio`` on the entries of ``grad``.

    ``grad`` holds ``e^{z − c}`` for a per-row constant ``c`` and ``row_shift = c − z⁺``, so
    ``e^{z − z⁺} = grad · e^{row_shift}``: the hardness costs no extra ``exp`` over the matrix.
    The shift is clamped at 80 (e^80 is finite in fp32); entries it affects have
    ``grad < e^{-80}`` and no gradient to amplify. Rows are processed in blocks of about
    64k entries so that the hardness temporary never leaves the cache: the amplifier adds
    one streaming pass over ``grad``, not three and a matrix-sized allocation.
    """
    scale = row_shift.clamp(max=80.0).exp()[:, None]
    rows = max(1, _AMPLIFY_BLOCK // max(1, grad.shape[1]))
    for start in range(0, grad.shape[0], rows):
        block = grad[start : start + rows]
        h = block * scale[start : start + rows]
        h.clamp_(max=1.0)
        if ratio != 1.0:
            h.pow_(ratio)
        block.addcmul_(block, h, value=alpha)


def nce_grad(
    z: Tensor,
    pos: Positives,
    stats: RowStats,
    alpha: float = 0.0,
    ratio: float = 1.0,
    renormalize: bool = True,
) -> Tensor:
    """``∂ℓ_i/∂z_ij`` for every entry (EGA-amplified on negatives when ``alpha > 0``).

    With ``renormalize`` (default) the amplified probabilities ``P̄`` are renormalised over
    each row before ``P̄ − target``, so every row of the gradient sums to zero as InfoNCE's
    does; without it the negatives' gradients are only multiplied by ``1 + α·h``.
    """
    if pos.index is not None:
        assert stats.lse_all is not None
        grad = (z - stats.lse_all[:, None]).exp_()
        p_pos = grad.gather(1, pos.index[:, None])
        if alpha:
            _amplify_(grad, stats.lse_all - stats.z_pos, alpha, ratio)
            if renormalize:  # the positive keeps weight 1: remove its (1+α) amplification
                norm = grad.sum(dim=1, keepdim=True) - alpha * p_pos
                grad.div_(norm)
                p_pos = p_pos / norm
        grad.scatter_(1, pos.index[:, None], p_pos - 1.0)
        return grad
    mask = pos.mask
    assert mask is not None
    # share of the loss gradient that goes to the negatives: σ(lse_neg − z⁺) ∈ [0, 1]
    neg_share = torch.sigmoid(stats.lse_neg - stats.z_pos)[:, None]
    # rows without negatives: lse_neg = -inf; any finite stand-in keeps exp() NaN-free
    lse_neg = torch.where(torch.isfinite(stats.lse_neg), stats.lse_neg, 0.0)
    grad = (z - lse_neg[:, None]).exp_().masked_fill_(mask, 0.0)
    norm = torch.ones_like(neg_share)
    if alpha:
        _amplify_(grad, lse_neg - stats.z_pos, alpha, ratio)
        if renormalize:
            norm = neg_share * grad.sum(dim=1, keepdim=True) + (1.0 - neg_share)
    lse_pos = torch.logsumexp(z.masked_fill(~mask, float("-inf")), dim=1)
    pos_grad = torch.exp(z - lse_pos[:, None]).masked_fill_(~mask, 0.0)
    # negatives: P̄ = share·q(1+αh)/norm; positives: P̄ − target = softmax_pos·((1−share)/norm − 1)
    return grad.mul_(neg_share / norm).add_(pos_grad.mul_((1.0 - neg_share) / norm - 1.0))


def _differentiable_grad(
    z: Tensor, pos: Positives, aggregate: str, alpha: float, grad_out: Tensor
) -> Tensor:
    """``∂(Σ grad_out·ℓ)/∂z`` with a graph, for double backward (``create_graph=True``).

    The fast :func:`nce_grad` works in place on statistics saved without a graph, so its
    result cannot be differentiated again; here the forward is recomputed with autograd from
    ``z`` instead. EGA's amplified gradient is not the gradient of a function of ``z`` and has
    no such recomputation.
    """
    if alpha:
        raise RuntimeError(
            "double backward (create_graph=True, e.g. a gradient penalty) is not supported by "
            "EGA's amplified gradient (a custom backward); use alpha=0 (plain InfoNCE)"
        )
    with torch.enable_grad():
        loss, _ = nce_forward(z, pos, aggregate)
        (grad,) = torch.autograd.grad(loss, z, grad_out, create_graph=True)
    return grad


class _NCERows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, pos_index, pos_mask, opts):  # type: ignore[override]
        alpha, ratio, aggregate, renormalize = opts
        pos = Positives(index=pos_index, mask=pos_mask)
        loss, stats = nce_forward(z, pos, aggregate)
        ctx.save_for_backward(z, pos_index, pos_mask, stats.lse_neg, stats.z_pos, stats.lse_all)
        ctx.alpha, ctx.ratio, ctx.aggregate, ctx.renormalize = alpha, ratio, aggregate, renormalize
        return loss

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        z, pos_index, pos_mask, lse_neg, z_pos, lse_all = ctx.saved_tensors
        pos = Positives(index=pos_index, mask=pos_mask)
        if torch.is_grad_enabled():  # create_graph=True: the gradient must be differentiable
            return (
                _differentiable_grad(z, pos, ctx.aggregate, ctx.alpha, grad_out),
                None,
                None,
                None,
            )
        stats = RowStats(lse_neg=lse_neg, z_pos=z_pos, lse_all=lse_all)
        grad = nce_grad(z, pos, stats, ctx.alpha, ctx.ratio, ctx.renormalize)
        return grad.mul_(grad_out[:, None]), None, None, None


def nce_rows(
    z: Tensor,
    positives: Positives,
    alpha: float = 0.0,
    hardness_ratio: float = 1.0,
    aggregate: str = "mean",
    renormalize: bool = True,
) -> Tensor:
    """Per-anchor multi-positive InfoNCE loss (R,) of fp32 logits ``z`` (R, N).

    Args:
        z: logits ``s/τ``.
        positives: the positive column(s) of each row.
        alpha: EGA amplification α (0 gives the plain InfoNCE gradient).
        hardness_ratio: ``τ/τ_h`` of the EGA hardness (1 means ``τ_h = τ``).
        aggregate: ``"mean"`` (log-mean-exp) or ``"sum"`` (log-sum-exp) of the positives.
        renormalize: renormalise EGA's amplified probabilities per row (default; False is the
            literal, unstable form; see the module docstring).
    """
    if aggregate not in ("mean", "sum"):
        raise ValueError(f"aggregate must be 'mean' or 'sum', got {aggregate!r}")
    opts = (alpha, hardness_ratio, aggregate, renormalize)
    return _NCERows.apply(z, positives.index, positives.mask, opts)
