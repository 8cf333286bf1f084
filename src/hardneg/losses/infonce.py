r"""InfoNCE (CLIP) and NegCLIP losses.

References:
    - Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
      Supervision" (CLIP), §2.3: symmetric cross-entropy over the B×B logit matrix.
    - van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding".
    - Yuksekgonul et al. 2023, "When and why vision-language models behave like bags-of-words"
      (NegCLIP), §5: hard-negative captions appended to the image→text denominator.
"""

from __future__ import annotations

from torch import Tensor

from hardneg.losses.base import SymmetricRowLoss
from hardneg.losses.checks import check_int
from hardneg.losses.chunked import chunked_nce_rows
from hardneg.losses.nce import nce_rows
from hardneg.losses.pairs import ContrastivePairs, Positives


class InfoNCELoss(SymmetricRowLoss):
    r"""Symmetric multi-positive InfoNCE, the CLIP objective.

    .. math::
        \mathcal L = \tfrac12\Big(\tfrac1B\sum_i \ell^{I\to T}_i + \tfrac1B\sum_j
        \ell^{T\to I}_j\Big),\quad \ell_i = -\log\frac{e^{z^+_i}}{e^{z^+_i}
        + \sum_{n\in N(i)} e^{z_{in}}},\quad z = s/\tau

    with ``z⁺`` the log-mean-exp of the anchor's positives (:mod:`hardneg.losses.nce`).
    With distinct ids it equals open_clip's ``ClipLoss`` (parity-tested to 1e-6).

    Args:
        temperature, learn_temperature, normalize, max_logit_scale: see
            :class:`~hardneg.losses.base.ContrastiveLoss`.
        aggregate: ``"mean"`` (default) or ``"sum"`` over multiple positives.
        chunk_size: if set, compute blockwise with that many anchors per block so that memory
            does not grow as B² (:mod:`hardneg.losses.chunked`); same value and gradients,
            but no double backward (``create_graph=True`` needs ``chunk_size=None``).

    Inputs: see :meth:`~hardneg.losses.base.ContrastiveLoss.forward`.

    Example:
        >>> import torch
        >>> from hardneg.losses import InfoNCELoss
        >>> loss_fn = InfoNCELoss()
        >>> img, txt = torch.randn(8, 32, requires_grad=True), torch.randn(8, 32)
        >>> loss = loss_fn(img, txt, positive_ids=torch.tensor([0, 1, 2, 3, 4, 5, 6, 6]))
        >>> loss.backward()
    """

    #: EGA amplification α, hardness ratio τ/τ_h and renormalisation; α=0 is plain InfoNCE.
    alpha: float = 0.0
    hardness_ratio: float = 1.0
    renormalize: bool = True

    def __init__(
        self,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        normalize: bool = True,
        max_logit_scale: float = 100.0,
        aggregate: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(temperature, learn_temperature, normalize, max_logit_scale)
        if aggregate not in ("mean", "sum"):
            raise ValueError(f"aggregate must be 'mean' or 'sum', got {aggregate!r}")
        self.aggregate = aggregate
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size)

    def row_loss(self, logits: Tensor, positives: Positives, scale: Tensor) -> Tensor:
        return nce_rows(
            logits, positives, self.alpha, self.hardness_ratio, self.aggregate, self.renormalize
        )

    def loss(self, pairs: ContrastivePairs) -> Tensor:
        if self.chunk_size is None:
            return super().loss(pairs)
        if pairs.i2t_keep is not None or pairs.t2i_keep is not None:
            raise ValueError(
                "chunk_size (blockwise mode) scores every candidate; it cannot be combined with "
                "a negative selector (restrict()): use chunk_size=None with BNS"
            )
        scale = self.scale().to(pairs.image.dtype)
        opts = dict(
            offset=pairs.offset,
            chunk=self.chunk_size,
            alpha=self.alpha,
            hardness_ratio=self.hardness_ratio,
            aggregate=self.aggregate,
            renormalize=self.renormalize,
        )
        i2t = chunked_nce_rows(
            pairs.image, pairs.text_candidates, scale, pairs.ids, pairs.all_ids, **opts
        )
        t2i = chunked_nce_rows(pairs.text, pairs.all_image, scale, pairs.ids, pairs.all_ids, **opts)
        return 0.5 * (i2t.mean() + t2i.mean())


class NegCLIPLoss(InfoNCELoss):
    """InfoNCE whose image→text denominator also holds hard-negative captions (NegCLIP).

    Identical to :class:`InfoNCELoss` called with ``extra_text_emb``; this class only insists
    that the extra negatives are given. Text→image uses the true captions only (as
    vinid/neg_clip). Labels stay right under DDP: positives are offset by rank and the extra
    captions of every rank are gathered as negatives of every image anchor.
    """

    def forward(self, image_emb, text_emb, positive_ids=None, extra_text_emb=None) -> Tensor:
        if extra_text_emb is None:
            raise ValueError(
                "NegCLIPLoss needs extra_text_emb (hard-negative caption embeddings, (B, K, d) "
                "or (M, d)); use InfoNCELoss when there are none"
            )
        return super().forward(image_emb, text_emb, positive_ids, extra_text_emb)
