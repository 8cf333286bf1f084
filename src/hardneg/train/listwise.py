r"""BACL's re-ranking loss: a listwise contrastive loss over cross-modal pair scores.

BACL (arXiv:2511.08399) freezes the dual encoder and trains only a cross-modal transformer;
with frozen encoders retrieval can move only through that transformer, which scores (image,
caption) pairs and re-ranks the dual encoder's top-k. Its contrastive loss is therefore over
the cross-modal scores: for image anchor ``i`` with its caption ``T_i`` and the miner's ``k``
picked captions ``T_{j_1..j_k}`` (and symmetrically for caption anchors and picked images),

.. math::
    \ell^{I\to T}_i = -\log\frac{e^{f(I_i, T_i)}}{e^{f(I_i, T_i)} + \sum_{m=1}^{k}
    e^{f(I_i, T_{j_m})}},\qquad
    \mathcal L = \tfrac12\big(\mathrm{mean}_i\,\ell^{I\to T}_i + \mathrm{mean}_i\,
    \ell^{T\to I}_i\big)

with ``f`` the cross-modal transformer's match logit (``CrossModalOutput.itm_logit``, the score
re-ranking reads). ``k + 1`` pair forwards per anchor and direction: BACL's "one additional
forward pass per sample" per scored pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.losses.distributed import gather_with_grad, world_info
from hardneg.miners import MinedNegatives
from hardneg.models.outputs import TextOutput
from hardneg.train.itm import gather_text_output

__all__ = ["listwise_rerank_loss"]


def _candidate_rows(picks: Tensor, rows: int) -> Tensor:
    """``(R, k + 1)`` rows into ``cat([local, gathered])``: the anchor's own pair first."""
    own = torch.arange(rows, device=picks.device)[:, None]
    return torch.cat([own, rows + picks], dim=1)


def listwise_rerank_loss(
    model, text: TextOutput, image, mined: MinedNegatives
) -> tuple[Tensor, dict[str, float]]:
    """The loss of the module docstring on this rank's ``R`` pairs.

    Args:
        model: an ``AlignmentModel`` (its ``match`` scores pairs).
        text, image: this rank's captions and images as ``encode_texts`` / ``encode_images``
            return them (row ``i`` of each is a positive pair).
        mined: the miner's picks among every rank's candidates (``i2t``: captions per image,
            ``t2i``: images per caption; NegCLIP extra captions are not candidates here).

    Returns:
        ``(loss, logs)``: the loss and the accuracy (%) of the positive scoring first.
    """
    r = len(text)
    if int(mined.i2t.indices.max()) >= r * world_info()[1]:
        raise ValueError(
            "the miner picked a NegCLIP extra caption; BACL's re-ranking loss scores the "
            "dataset's captions only (set data.hard_negative_captions=false)"
        )
    # the cross-modal inputs once per caption and image, then selected per scored pair
    states, patches = model.crossmodal_text(text), model.crossmodal_image(image)
    all_states = TextOutput.cat([states, gather_text_output(states)])
    all_patches = torch.cat([patches, gather_with_grad(patches)])
    losses, hits = [], []
    for picks, anchors_are_images in ((mined.i2t.indices, True), (mined.t2i.indices, False)):
        rows = _candidate_rows(picks, r)
        k1 = rows.shape[1]
        anchor = torch.arange(r, device=rows.device).repeat_interleave(k1)
        if anchors_are_images:
            texts, images = all_states.select(rows.flatten()), patches[anchor]
        else:
            texts, images = states.select(anchor), all_patches[rows.flatten()]
        scores = model.crossmodal(texts, images).itm_logit.float().view(r, k1)
        target = torch.zeros(r, dtype=torch.long, device=scores.device)
        losses.append(F.cross_entropy(scores, target))
        hits.append(float((scores.argmax(dim=1) == 0).float().mean()))
    logs = {"rerank_acc": 50.0 * (hits[0] + hits[1])}
    return 0.5 * (losses[0] + losses[1]), logs
