r"""Hardness-weighted InfoNCE: a detached similarity bonus on the negative logits (LLaVE).

Reference: Lan et al. 2025, "LLaVE: Large Language and Vision Embedding Models with
Hardness-Weighted Contrastive Learning", arXiv:2503.04812, Eq. 5 (the reward model is the
policy model itself, so the weight of a negative is ``exp(α·sg(s))``), in the form of
sentence-transformers' ``MultipleNegativesRankingLoss(hardness_mode=..., hardness_strength=α)``
(v6.2; parity-tested). The bonus ``α·sg(s)`` is added to a negative's logit ``s/τ``; it is
not divided by τ, and it carries no gradient, so it only reweights the negatives' share of
the softmax: a negative of similarity ``s`` counts ``e^{α s}`` times in the denominator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hardneg.losses.base import ContrastiveLoss
from hardneg.losses.checks import check_number
from hardneg.losses.pairs import ContrastivePairs
from hardneg.losses.soft_infonce import soft_infonce_rows

#: Which negatives get the bonus (sentence-transformers' ``hardness_mode`` values).
HARDNESS_MODES = ("in_batch_negatives", "hard_negatives", "all_negatives")


def hardness_bonus(
    logits: Tensor, log_weight: Tensor | None, scale: Tensor, strength: float, penalised: Tensor
) -> Tensor:
    """``α·sg(s)`` on the ``penalised`` entries of a (R, N) logit matrix, 0 elsewhere.

    ``s = (z − log w)/scale`` is the similarity the logits were made from (``log w`` the
    :meth:`~hardneg.losses.pairs.ContrastivePairs.reweight` log-weights, if any). Candidates
    removed by ``restrict()`` (``z = −inf``) get 0: their logit already removes them.
    """
    sim = logits.detach()
    if log_weight is not None:
        sim = sim - log_weight.to(sim.dtype)
    bonus = strength * sim / scale.detach()
    return torch.where(penalised & torch.isfinite(bonus), bonus, torch.zeros_like(bonus))


class HardnessWeightedInfoNCELoss(ContrastiveLoss):
    r"""Symmetric multi-positive InfoNCE whose negatives get the detached bonus ``α·sg(s)``.

    .. math::
        \ell_i = -\log\frac{e^{z^+_i}}{e^{z^+_i} + \sum_{n\in N(i)} e^{s_{in}/\tau
        + \alpha\,\mathrm{sg}(s_{in})\,[n \in H(i)]}},\qquad
        \mathcal L = \tfrac12\big(\overline{\ell^{I\to T}} + \overline{\ell^{T\to I}}\big)

    (``s`` cosines, ``z⁺`` the log-mean-exp of the anchor's positives as in
    :class:`~hardneg.losses.InfoNCELoss`, ``H(i)`` the negatives the mode penalises). The
    gradient is that of InfoNCE with each negative's probability reweighted by ``e^{α s}``;
    ``α = 0`` is InfoNCE. Per direction this equals sentence-transformers'
    ``MultipleNegativesRankingLoss(scale=1/τ, hardness_mode=mode, hardness_strength=α)`` with
    the anchors as queries, so the symmetric loss is the mean of that loss on (image, text)
    and on (text, image). (Its ``directions=("query_to_doc", "doc_to_query")`` variant puts
    no bonus on ``doc_to_query``; here both directions get it.)

    Modes (NegCLIP captions ``extra_text_emb`` play the role of the explicit hard negatives;
    text anchors have none, so their negatives are all in-batch):

    - ``"in_batch_negatives"`` (default; LLaVE): every negative except the anchor's own hard
      negatives (other pairs' captions/images, and other pairs' extra captions).
    - ``"hard_negatives"`` (EmbeddingGemma, Schechter Vera et al. 2025, arXiv:2509.20354):
      only the anchor's own extra captions; without ``extra_text_emb`` this is InfoNCE.
    - ``"all_negatives"``: every negative.

    The first two need to know whose hard negative each extra caption is: pass
    ``extra_text_emb`` as (B, K, d), or (B·K, d) with row ``b·K + k`` the k-th hard negative
    of pair ``b``. With ``positive_ids``, the extra captions of every pair sharing the
    anchor's id are its own.

    Args:
        hardness_strength: α ≥ 0 (default 9, the value of LLaVE, arXiv:2503.04812, as
            sentence-transformers documents it; EmbeddingGemma uses 5 with
            ``"hard_negatives"``). It adds to logits of scale ``1/τ``: α = 9 at τ = 0.07
            (``1/τ ≈ 14``) is a strong reweighting.
        hardness_mode: one of ``"in_batch_negatives"``, ``"hard_negatives"``,
            ``"all_negatives"``.
        temperature, learn_temperature, normalize, max_logit_scale: see
            :class:`~hardneg.losses.base.ContrastiveLoss` (``normalize=False`` makes ``s``
            the dot product).

    Inputs: see :meth:`~hardneg.losses.base.ContrastiveLoss.forward`.

    Example:
        >>> import torch
        >>> from hardneg.losses import HardnessWeightedInfoNCELoss
        >>> loss_fn = HardnessWeightedInfoNCELoss(hardness_strength=9.0)
        >>> img = torch.randn(8, 32, requires_grad=True)
        >>> loss = loss_fn(img, torch.randn(8, 32), extra_text_emb=torch.randn(8, 2, 32))
        >>> loss.backward()
    """

    def __init__(
        self,
        hardness_strength: float = 9.0,
        hardness_mode: str = "in_batch_negatives",
        temperature: float = 0.07,
        learn_temperature: bool = True,
        normalize: bool = True,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__(temperature, learn_temperature, normalize, max_logit_scale)
        self.hardness_strength = check_number("hardness_strength", hardness_strength, low=0.0)
        if hardness_mode not in HARDNESS_MODES:
            raise ValueError(
                f"hardness_mode must be one of {HARDNESS_MODES}, got {hardness_mode!r}"
            )
        self.hardness_mode = hardness_mode

    def direction_losses(self, pairs: ContrastivePairs) -> tuple[Tensor, Tensor]:
        """Per-anchor losses (R,) of the image→text and the text→image direction."""
        scale = self.scale().to(pairs.image.dtype)
        z_i2t, z_t2i = pairs.symmetric_logits(scale)
        pos_i2t = pairs.image_to_text_positives().as_mask(z_i2t.shape[1])
        pos_t2i = pairs.text_to_image_positives().as_mask(z_t2i.shape[1])
        bonus_i2t = hardness_bonus(
            z_i2t,
            pairs.i2t_log_weight,
            scale,
            self.hardness_strength,
            self._image_anchor_penalised(pos_i2t, pairs.all_text.shape[0]),
        )
        in_batch = self.hardness_mode != "hard_negatives"
        bonus_t2i = hardness_bonus(
            z_t2i, pairs.t2i_log_weight, scale, self.hardness_strength, pos_t2i | in_batch
        )
        return (
            soft_infonce_rows(z_i2t, pos_i2t, bonus_i2t),
            soft_infonce_rows(z_t2i, pos_t2i, bonus_t2i),
        )

    def loss(self, pairs: ContrastivePairs) -> Tensor:
        i2t, t2i = self.direction_losses(pairs)
        return 0.5 * (i2t.mean() + t2i.mean())

    def _image_anchor_penalised(self, positives: Tensor, n_pairs: int) -> Tensor:
        """(R, G+M) mask of the image anchors' candidates that get the bonus.

        Entries on positives do not matter (the positives never get it).
        """
        n_extra = positives.shape[1] - n_pairs
        in_batch = self.hardness_mode != "hard_negatives"
        if self.hardness_mode == "all_negatives" or n_extra == 0:
            return positives | in_batch
        if n_extra % n_pairs:
            raise ValueError(
                f"extra_text_emb has {n_extra} rows for {n_pairs} pairs: hardness_mode="
                f"{self.hardness_mode!r} needs K hard negatives per pair, (B, K, d) or (B·K, d) "
                "pair-major; pass them so, or use hardness_mode='all_negatives'"
            )
        own = positives[:, :n_pairs].repeat_interleave(n_extra // n_pairs, dim=1)
        return torch.cat([positives[:, :n_pairs] | in_batch, own ^ in_batch], dim=1)
