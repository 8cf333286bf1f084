"""A hardneg contrastive loss scored on every negative or on the negatives a miner picked.

The one code path the trainer's integrations share: validate/normalise/gather the embeddings
with the loss's own :meth:`~hardneg.losses.ContrastiveLoss.prepare`, let a
:class:`~hardneg.miners.BoundaryAwareMiner` mine the prepared pairs, and score
:meth:`~hardneg.miners.MinedNegatives.restrict` with the loss's own
:meth:`~hardneg.losses.ContrastiveLoss.loss`. No loss math lives here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hardneg.losses.base import ContrastiveLoss
from hardneg.miners.bns import BoundaryAwareMiner
from hardneg.miners.result import MinedNegatives


class MinedLoss(nn.Module):
    r"""``loss`` on {positives ∪ mined negatives}, or on the whole batch without a miner.

    With mined negatives, each anchor's denominator keeps its positives and its ``k`` picks
    (BACL, arXiv:2511.08399 §3); the rest get logit ``−∞``.

    The ``miner`` is used only in training (module in training mode and gradients enabled).
    Evaluation — the hosts' ``evaluate()`` runs under ``torch.no_grad()`` — scores every
    negative: mining is a training curriculum with Gumbel noise, so an evaluation on it would
    be random; on all negatives it is deterministic and comparable with runs without BNS. A
    ``negatives=`` result given explicitly is always applied.

    Args:
        loss: any :class:`~hardneg.losses.ContrastiveLoss` (its temperature, normalisation
            and DDP gathering are used as they are).
        miner: optional :class:`~hardneg.miners.BoundaryAwareMiner` that mines every call that
            is not given ``negatives``.

    Example:
        >>> import torch
        >>> from hardneg.losses import EGALoss
        >>> from hardneg.miners import BNSConfig
        >>> crit = MinedLoss(EGALoss(), BoundaryAwareMiner(BNSConfig(k=3)))
        >>> crit.miner.set_progress(0.0, 5.0)
        >>> crit(torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)).backward()
    """

    def __init__(self, loss: ContrastiveLoss, miner: BoundaryAwareMiner | None = None) -> None:
        super().__init__()
        if not isinstance(loss, ContrastiveLoss):
            raise ValueError(
                f"loss must be a hardneg.losses.ContrastiveLoss, got {type(loss).__name__}"
            )
        self.loss = loss
        self.miner = miner

    def forward(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        positive_ids: Tensor | None = None,
        extra_text_emb: Tensor | None = None,
        negatives: MinedNegatives | None = None,
        image_to_text_only: bool = False,
    ) -> Tensor:
        """Scalar loss; arguments as :meth:`hardneg.losses.ContrastiveLoss.forward`.

        Args:
            negatives: negatives mined beforehand on the same features (takes precedence
                over ``miner``).
            image_to_text_only: score the image (anchor) → text direction only,
                ``L = (1/B) Σ_i ℓ_i2t``: every text anchor keeps only its positives, so its row
                loss and gradient are exactly 0, and the symmetric mean ``½(i2t + t2i)`` is
                doubled. Valid for the softmax-row losses (InfoNCE, EGA, HCL, DCL, decoupled),
                whose row without negatives is 0.
        """
        pairs = self.loss.prepare(image_emb, text_emb, positive_ids, extra_text_emb)
        if negatives is None and self.miner is not None and self.in_training():
            negatives = self.miner(pairs, logit_scale=self.loss.scale())
        if negatives is not None:
            pairs = negatives.restrict(pairs)
        if not image_to_text_only:
            return self.loss.loss(pairs)
        none = torch.zeros(pairs.text.shape[0], pairs.all_image.shape[0], dtype=torch.bool)
        pairs = pairs.restrict(pairs.i2t_keep, none.to(pairs.text.device))
        return 2.0 * self.loss.loss(pairs)

    def in_training(self) -> bool:
        """True when the miner is used: training mode with gradients enabled."""
        return self.training and torch.is_grad_enabled()
