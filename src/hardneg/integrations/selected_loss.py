"""A hardneg contrastive loss scored on every negative or on BNS-selected ones.

The one code path the framework integrations share: validate/normalise/gather the embeddings
with the loss's own :meth:`~hardneg.losses.ContrastiveLoss.prepare`, optionally keep only the
negatives a :class:`~hardneg.integrations.bns_selector.BNSNegativeSelector` picked
(:meth:`~hardneg.losses.pairs.ContrastivePairs.restrict`), and score them with the loss's own
:meth:`~hardneg.losses.ContrastiveLoss.loss`. No loss math lives here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hardneg.integrations.bns_selector import BNSNegativeSelector, NegativeSelection
from hardneg.losses.base import ContrastiveLoss


class SelectedNegativesLoss(nn.Module):
    r"""``loss`` on {positives ∪ selected negatives}, or on the whole batch without a selector.

    With a selection, each anchor's denominator keeps its positives and its ``k`` picked
    negatives (BACL, arXiv:2511.08399 §3); the rest get logit ``−∞``.

    The ``selector`` is used only in training (module in training mode and gradients
    enabled). Evaluation — the hosts' ``evaluate()`` runs under ``torch.no_grad()`` — scores
    every negative: the selection is a training curriculum with Gumbel noise, so an evaluation
    on it would be random; on all negatives it is deterministic and comparable with runs
    without BNS. A ``negatives=`` selection given explicitly is always applied.

    Args:
        loss: any :class:`~hardneg.losses.ContrastiveLoss` (its temperature, normalisation
            and DDP gathering are used as they are).
        selector: optional :class:`~hardneg.integrations.bns_selector.BNSNegativeSelector`
            that picks the negatives of every call that is not given ``negatives``.

    Example:
        >>> import torch
        >>> from hardneg.losses import EGALoss
        >>> from hardneg.samplers import BNSConfig
        >>> crit = SelectedNegativesLoss(EGALoss(), BNSNegativeSelector(BNSConfig(k=3)))
        >>> crit.selector.set_progress(0.0, 5.0)
        >>> crit(torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)).backward()
    """

    def __init__(self, loss: ContrastiveLoss, selector: BNSNegativeSelector | None = None) -> None:
        super().__init__()
        if not isinstance(loss, ContrastiveLoss):
            raise ValueError(
                f"loss must be a hardneg.losses.ContrastiveLoss, got {type(loss).__name__}"
            )
        self.loss = loss
        self.selector = selector

    def forward(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        positive_ids: Tensor | None = None,
        extra_text_emb: Tensor | None = None,
        negatives: NegativeSelection | None = None,
        image_to_text_only: bool = False,
    ) -> Tensor:
        """Scalar loss; arguments as :meth:`hardneg.losses.ContrastiveLoss.forward`.

        Args:
            negatives: a selection made beforehand on the same features (takes precedence
                over ``selector``).
            image_to_text_only: score the image (anchor) → text direction only,
                ``L = (1/B) Σ_i ℓ_i2t``: every text anchor keeps only its positives, so its row
                loss and gradient are exactly 0, and the symmetric mean ``½(i2t + t2i)`` is
                doubled. Valid for the softmax-row losses (InfoNCE, EGA, HCL, DCL, decoupled),
                whose row without negatives is 0.
        """
        pairs = self.loss.prepare(image_emb, text_emb, positive_ids, extra_text_emb)
        if negatives is None and self.selector is not None and self.in_training():
            negatives = self.selector.select(pairs, self.loss.scale())
        if negatives is not None:
            pairs = negatives.restrict(pairs)
        if not image_to_text_only:
            return self.loss.loss(pairs)
        none = torch.zeros(pairs.text.shape[0], pairs.all_image.shape[0], dtype=torch.bool)
        pairs = pairs.restrict(pairs.i2t_keep, none.to(pairs.text.device))
        return 2.0 * self.loss.loss(pairs)

    def in_training(self) -> bool:
        """True when the selector is used: training mode with gradients enabled."""
        return self.training and torch.is_grad_enabled()
