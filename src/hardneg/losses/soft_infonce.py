r"""Soft-InfoNCE: InfoNCE with per-negative weights in the denominator.

Reference: Li et al. 2023, "Rethinking Negative Pairs in Code Search", EMNLP, §3
(Alex-HaochenLi/Soft-InfoNCE): weight terms ``w_ij`` are inserted before each negative, with
``Σ_n w_in = N`` so that uniform weights recover InfoNCE; negatives more similar to the query
(likelier false negatives, "less negative") are pushed away less.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.losses.base import SymmetricRowLoss
from hardneg.losses.checks import check_number
from hardneg.losses.nce import positive_logit
from hardneg.losses.pairs import Positives


def soft_infonce_rows(z: Tensor, pos_mask: Tensor, log_w: Tensor) -> Tensor:
    r"""Per-row ``−log e^{z⁺} / (e^{z⁺} + Σ_n w_n e^{z_n})`` given log-weights ``log_w`` (R, N).

    Entries of ``log_w`` on positives are ignored. Rows without negatives give 0.
    """
    lse_neg = torch.logsumexp((z + log_w).masked_fill(pos_mask, float("-inf")), dim=1)
    loss = F.softplus(lse_neg - positive_logit(z, pos_mask))
    return torch.where(torch.isfinite(lse_neg), loss, torch.zeros_like(loss))


def similarity_log_weights(cos: Tensor, excluded: Tensor, weight_temperature: float) -> Tensor:
    r"""Default weights ``w_in = N_i · softmax_n(−s_in / τ_w)`` over the negatives (detached).

    Less similar negatives weigh more; ``τ_w → ∞`` gives uniform weights (plain InfoNCE).
    Returned as ``log w`` (R, N), ``-inf`` on ``excluded`` entries (positives, unselected).
    """
    n_neg = (~excluded).sum(dim=1, keepdim=True).clamp(min=1).to(cos.dtype)
    scores = (-cos.detach() / weight_temperature).masked_fill(excluded, float("-inf"))
    return torch.log_softmax(scores, dim=1) + n_neg.log()


class SoftInfoNCELoss(SymmetricRowLoss):
    r"""Soft-InfoNCE with similarity-derived negative weights (symmetric).

    .. math::
        \ell_i = -\log\frac{e^{z^+_i}}{e^{z^+_i} + \sum_{n} w_{in} e^{z_{in}}},\qquad
        w_{in} = N_i\,\operatorname{softmax}_{n}\!\big(-s_{in}/\tau_w\big)\ \text{(detached)}

    Args:
        weight_temperature: τ_w of the weights (default 1.0; larger is closer to InfoNCE).
        temperature, learn_temperature, normalize, max_logit_scale: see ``ContrastiveLoss``.

    Example:
        >>> import torch
        >>> from hardneg.losses import SoftInfoNCELoss
        >>> SoftInfoNCELoss(weight_temperature=0.5)(torch.randn(8, 32), torch.randn(8, 32)).dim()
        0
    """

    def __init__(
        self,
        weight_temperature: float = 1.0,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        normalize: bool = True,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__(temperature, learn_temperature, normalize, max_logit_scale)
        self.weight_temperature = check_number(
            "weight_temperature", weight_temperature, low=0.0, low_open=True
        )

    def row_loss(self, logits: Tensor, positives: Positives, scale: Tensor) -> Tensor:
        mask = positives.as_mask(logits.shape[1])
        excluded = mask | ~torch.isfinite(logits)  # positives and unselected candidates
        log_w = similarity_log_weights(logits / scale, excluded, self.weight_temperature)
        return soft_infonce_rows(logits, mask, log_w)
