"""The anchor/candidate structure every contrastive loss scores.

:class:`ContrastivePairs` holds the normalised local embeddings (the anchors of this rank),
the gathered embeddings of all ranks (the candidates), optional NegCLIP extra negative
captions, and the semantic ids that decide which (anchor, candidate) pairs are positives.
:class:`Positives` describes those positives per anchor row either as one column index
(the fast path when ids are absent: pair ``i`` is the only positive) or as a boolean mask
(multi-positive: ``ids_i == ids_j``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Positives:
    """Positive candidates of each anchor row: ``index`` (R,) or ``mask`` (R, N); one is set."""

    index: Tensor | None = None
    mask: Tensor | None = None

    def as_mask(self, n_cols: int) -> Tensor:
        """Return the positives as a (R, n_cols) boolean mask."""
        if self.mask is not None:
            return self.mask
        assert self.index is not None
        rows = self.index.shape[0]
        mask = torch.zeros(rows, n_cols, dtype=torch.bool, device=self.index.device)
        mask[torch.arange(rows, device=mask.device), self.index] = True
        return mask

    def rows(self, start: int, stop: int) -> Positives:
        """The positives of anchor rows ``start:stop``."""
        if self.mask is not None:
            return Positives(mask=self.mask[start:stop])
        assert self.index is not None
        return Positives(index=self.index[start:stop])


def positives_from_ids(
    anchor_ids: Tensor | None,
    candidate_ids: Tensor | None,
    offset: int,
    n_rows: int,
    n_cols: int,
    device: torch.device,
) -> Positives:
    """Positives of ``n_rows`` anchors among ``n_cols`` candidates.

    The first ``len(candidate_ids)`` candidates are the gathered true pairs; any columns after
    them (NegCLIP extra captions) are never positives. Without ids, anchor ``i`` of this rank
    has the single positive column ``offset + i`` (labels offset by rank, as open_clip).
    """
    if anchor_ids is None or candidate_ids is None:
        return Positives(index=torch.arange(n_rows, device=device) + offset)
    mask = anchor_ids[:, None] == candidate_ids[None, :]
    if n_cols > mask.shape[1]:
        pad = torch.zeros(n_rows, n_cols - mask.shape[1], dtype=torch.bool, device=device)
        mask = torch.cat([mask, pad], dim=1)
    return Positives(mask=mask)


@dataclass(frozen=True)
class ContrastivePairs:
    """Normalised fp32 embeddings of one step, as seen from one rank.

    Attributes:
        image, text: (R, d) this rank's pairs; row ``i`` of each is a positive pair.
        all_image, all_text: (G, d) the pairs of all ranks (``G = world * R``), gathered with
            gradient; equal to ``image``/``text`` in a single process.
        extra: (M, d) extra negative captions of all ranks (NegCLIP), or None.
        ids, all_ids: semantic ids of the local and gathered pairs, or None (distinct).
        offset: index of this rank's first pair in the gathered batch (``rank * R``).
        world: number of ranks.
    """

    image: Tensor
    text: Tensor
    all_image: Tensor
    all_text: Tensor
    extra: Tensor | None
    ids: Tensor | None
    all_ids: Tensor | None
    offset: int
    world: int
    i2t_keep: Tensor | None = None
    t2i_keep: Tensor | None = None
    i2t_log_weight: Tensor | None = None
    t2i_log_weight: Tensor | None = None

    def restrict(self, i2t_keep: Tensor | None, t2i_keep: Tensor | None) -> ContrastivePairs:
        """Score only selected candidates (e.g. BNS negatives): (R, G+M) and (R, G) bool masks.

        Candidates outside the masks get logit ``-inf`` and leave every denominator; positives
        are always kept.
        """
        i2t_keep = (
            None
            if i2t_keep is None
            else i2t_keep | self.image_to_text_positives().as_mask(i2t_keep.shape[1])
        )
        t2i_keep = (
            None
            if t2i_keep is None
            else t2i_keep | self.text_to_image_positives().as_mask(t2i_keep.shape[1])
        )
        return replace(self, i2t_keep=i2t_keep, t2i_keep=t2i_keep)

    def reweight(self, i2t_weight: Tensor, t2i_weight: Tensor) -> ContrastivePairs:
        r"""Weight every negative's term of the softmax denominator: (R, G+M) and (R, G) ≥ 0.

        A negative with weight w enters as ``w·e^{z}`` (its logit becomes ``z + log w``; w = 0
        removes it); positives keep weight 1. The weights are detached: they choose how much
        each negative counts, they are not trained by the contrastive loss.
        """
        logs = []
        for weight, positives in (
            (i2t_weight, self.image_to_text_positives()),
            (t2i_weight, self.text_to_image_positives()),
        ):
            if not bool((weight >= 0).all()):
                raise ValueError("reweight() weights must be ≥ 0 (and not NaN)")
            weight = weight.detach().masked_fill(positives.as_mask(weight.shape[1]), 1.0)
            logs.append(weight.log())
        return replace(self, i2t_log_weight=logs[0], t2i_log_weight=logs[1])

    @property
    def text_candidates(self) -> Tensor:
        """Candidates of the image anchors: all true captions, then the extra negatives."""
        if self.extra is None:
            return self.all_text
        return torch.cat([self.all_text, self.extra], dim=0)

    def image_to_text_positives(self) -> Positives:
        n_cols = self.all_text.shape[0] + (0 if self.extra is None else self.extra.shape[0])
        return positives_from_ids(
            self.ids, self.all_ids, self.offset, self.image.shape[0], n_cols, self.image.device
        )

    def text_to_image_positives(self) -> Positives:
        return positives_from_ids(
            self.ids,
            self.all_ids,
            self.offset,
            self.text.shape[0],
            self.all_image.shape[0],
            self.text.device,
        )

    def symmetric_logits(self, scale: Tensor) -> tuple[Tensor, Tensor]:
        """fp32 logits ``scale * cos`` of image anchors (R, G+M) and text anchors (R, G).

        Candidates removed by :meth:`restrict` get ``-inf``; :meth:`reweight` adds ``log w``.
        In a single process the
        text-anchor logits are the transpose of the image-anchor ones, so one matrix product
        serves both directions.
        """
        z_i2t = scale * (self.image @ self.text_candidates.T)
        if self.world == 1:
            z_t2i = z_i2t[:, : self.all_image.shape[0]].T
        else:
            z_t2i = scale * (self.text @ self.all_image.T)
        if self.i2t_keep is not None:
            z_i2t = z_i2t.masked_fill(~self.i2t_keep, float("-inf"))
        if self.t2i_keep is not None:
            z_t2i = z_t2i.masked_fill(~self.t2i_keep, float("-inf"))
        if self.i2t_log_weight is not None and self.t2i_log_weight is not None:
            z_i2t = z_i2t + self.i2t_log_weight.to(z_i2t.dtype)
            z_t2i = z_t2i + self.t2i_log_weight.to(z_t2i.dtype)
        return z_i2t, z_t2i
