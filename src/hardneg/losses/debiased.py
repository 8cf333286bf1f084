r"""Debiased (DCL), hard-negative (HCL) and decoupled contrastive losses.

References:
    - Chuang et al. 2020, "Debiased Contrastive Learning", NeurIPS, Eq. (6) (chingyaoc/DCL).
    - Robinson et al. 2021, "Contrastive Learning with Hard Negative Samples", ICLR, Eq. (5)
      and the reference code joshr17/HCL (``reweight``, clamp at ``N·e^{-1/τ}``).
    - Yeh et al. 2022, "Decoupled Contrastive Learning", ECCV, Eq. (3).

In the image–text setting each anchor's negatives are the other captions (images) of the
global batch, ``N = B − |P(i)|`` per row (plus extra captions for image anchors).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hardneg.losses.base import SymmetricRowLoss
from hardneg.losses.checks import check_number
from hardneg.losses.nce import positive_logit
from hardneg.losses.pairs import Positives


def hcl_rows(z: Tensor, pos_mask: Tensor, scale: Tensor, beta: float, tau_plus: float) -> Tensor:
    r"""Per-row HCL loss (DCL when ``beta = 0``), computed stably in shifted exp space.

    With ``pos = e^{z⁺}``, ``neg_n = e^{z_n}``, ``imp_n = neg_n^β``:

    .. math::
        \text{reweight} = \frac{\sum_n imp_n\, neg_n}{\operatorname{mean}_n imp_n},\quad
        N_g = \max\Big(\frac{-\tau^+ N\,pos + \text{reweight}}{1-\tau^+},\; N e^{-1/\tau}\Big),
        \quad \ell = -\log\frac{pos}{pos + N_g}

    Every exponential is shifted by the row maximum (and ``imp`` by the negatives' maximum),
    which leaves ``ℓ`` unchanged and keeps fp32 finite for any temperature. Rows without
    negatives give 0; ``-inf`` logits (candidates removed by selection) are not negatives.
    """
    neg_mask = ~pos_mask & torch.isfinite(z)  # -inf logits are not candidates (restrict())
    n_neg = neg_mask.sum(dim=1).to(z.dtype)
    z_pos = positive_logit(z, pos_mask)
    z_neg = z.masked_fill(~neg_mask, float("-inf"))
    shift = torch.maximum(z_neg.max(dim=1).values, z_pos).detach()
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    neg = torch.exp(z_neg - shift[:, None])  # 0 on positives
    pos = torch.exp(z_pos - shift)
    if beta:
        z_neg_max = z_neg.max(dim=1, keepdim=True).values.detach()
        z_neg_max = torch.where(torch.isfinite(z_neg_max), z_neg_max, torch.zeros_like(z_neg_max))
        imp = torch.exp(beta * (z_neg - z_neg_max))
        mean_imp = imp.sum(dim=1) / n_neg.clamp(min=1)
        reweight = (imp * neg).sum(dim=1) / mean_imp.clamp(min=torch.finfo(z.dtype).tiny)
    else:
        reweight = neg.sum(dim=1)
    ng = (reweight - tau_plus * n_neg * pos) / (1.0 - tau_plus)
    floor = n_neg * torch.exp(-scale - shift)
    ng = torch.maximum(ng, floor)
    loss = torch.log(pos + ng) - (z_pos - shift)
    return torch.where(n_neg > 0, loss, torch.zeros_like(loss))


class HCLLoss(SymmetricRowLoss):
    r"""Hard-negative contrastive loss (Robinson et al. 2021), symmetric over both directions.

    Importance-weights negatives by ``e^{β z_n}`` (harder negatives weigh more) and debiases
    the negative term with class prior ``τ⁺`` (see :func:`hcl_rows` for the formula).

    Args:
        beta: concentration β of the hard-negative weighting (default 1; 0 gives DCL).
        tau_plus: class prior τ⁺ ∈ [0, 1) of false negatives (default 0.1).
        temperature, learn_temperature, normalize, max_logit_scale: see ``ContrastiveLoss``;
            the references use τ = 0.5 for SimCLR, CLIP-style training uses 0.07 (default).

    Example:
        >>> import torch
        >>> from hardneg.losses import HCLLoss
        >>> HCLLoss(beta=1.0, tau_plus=0.1)(torch.randn(8, 32), torch.randn(8, 32)).dim()
        0
    """

    def __init__(
        self,
        beta: float = 1.0,
        tau_plus: float = 0.1,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        normalize: bool = True,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__(temperature, learn_temperature, normalize, max_logit_scale)
        self.beta = check_number("beta", beta, low=0.0)
        self.tau_plus = check_number("tau_plus", tau_plus, low=0.0, high=1.0, high_open=True)

    def row_loss(self, logits: Tensor, positives: Positives, scale: Tensor) -> Tensor:
        mask = positives.as_mask(logits.shape[1])
        return hcl_rows(logits, mask, scale, self.beta, self.tau_plus)


class DCLLoss(HCLLoss):
    """Debiased contrastive loss (Chuang et al. 2020): :class:`HCLLoss` with ``β = 0``."""

    def __init__(
        self,
        tau_plus: float = 0.1,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        normalize: bool = True,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__(0.0, tau_plus, temperature, learn_temperature, normalize, max_logit_scale)


class DecoupledInfoNCELoss(SymmetricRowLoss):
    r"""Decoupled contrastive loss (Yeh et al. 2022): the positive leaves the denominator.

    .. math:: \ell_i = -z^+_i + \log\sum_{n\in N(i)} e^{z_{in}}

    Can be negative; rows without negatives give 0.

    Example:
        >>> import torch
        >>> from hardneg.losses import DecoupledInfoNCELoss
        >>> DecoupledInfoNCELoss()(torch.randn(8, 32), torch.randn(8, 32)).dim()
        0
    """

    def row_loss(self, logits: Tensor, positives: Positives, scale: Tensor) -> Tensor:
        mask = positives.as_mask(logits.shape[1])
        lse_neg = torch.logsumexp(logits.masked_fill(mask, float("-inf")), dim=1)
        loss = lse_neg - positive_logit(logits, mask)
        return torch.where(torch.isfinite(lse_neg), loss, torch.zeros_like(loss))
