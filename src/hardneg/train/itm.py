r"""Image–text matching (ITM) pairs: ALBEF's sampled negatives and the hardest negative image.

ALBEF (Li et al. 2021, arXiv:2107.07651 §3.2; GRIT-VLP and FALCON train the same term): for
each image a negative caption and for each caption a negative image are *sampled* from the
softmax of the detached ITC similarities, every positive excluded, and the cross-modal head
classifies the 3B pairs (B positives, 2B negatives) as matched or not:

.. math::
    j \sim \mathrm{softmax}_j\big(s\,\langle v_i, u_j\rangle\big)_{j \notin P(i)},\qquad
    \mathcal L_{ITM} = \frac{1}{3B}\sum_{(T, I)} \mathrm{CE}\big(y_{TI}, p_{itm}(T, I)\big)

with ``s`` the contrastive loss's logit scale and ``P(i)`` the anchor's positives: the same
item (``ids``) and, where the data knows meanings, every image its caption is true of (the
exact false negatives). The head gives one logit ``z``; ALBEF's 2-way softmax over
``(0, z)`` is ``σ(z)``, so its cross-entropy is the binary cross-entropy used here.

The hardest negative image (argmax instead of a draw; caption anchors only) is the pair
BACL's contrastive local attention compares with the positive, and ITM's
``itm_negatives="hardest"`` option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.losses.distributed import gather_no_grad, gather_with_grad, world_info
from hardneg.losses.pairs import positives_from_ids
from hardneg.models.outputs import ImageOutput, TextOutput

__all__ = ["albef_itm_loss", "gather_text_output", "hardest_negative_images", "itm_negatives"]


def _not_positive(pairs, relevance: Tensor | None, text_anchors: bool) -> Tensor:
    """``(R, G)`` True where a candidate may be a negative of this rank's anchor: not the same
    item and, with ``relevance`` (``(G, G)``, ``[i, j]`` = caption j true of item i), not a
    caption true of the image (either direction)."""
    r, g = pairs.text.shape[0], pairs.all_image.shape[0]
    device = pairs.text.device
    ids = pairs.ids
    positive = positives_from_ids(ids, pairs.all_ids, pairs.offset, r, g, device).as_mask(g)
    if relevance is not None:
        rel = relevance.to(device)
        rows = slice(pairs.offset, pairs.offset + r)
        positive = positive | (rel.T[rows] if text_anchors else rel[rows])
    return ~positive


def itm_negatives(
    pairs, scale: Tensor | float, relevance: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Draw ALBEF's negatives for this rank's anchors (see the module docstring).

    Returns:
        ``(neg_image, has_image, neg_text, has_text)``: for each caption the global index of
        a negative image and whether it has one (a caption true of every image in the batch
        has none), and for each image a negative caption likewise. Draws use the global
        torch generator.
    """
    with torch.no_grad():
        s = float(scale)
        draws = []
        for anchors, candidates, text_anchors in (
            (pairs.text, pairs.all_image, True),
            (pairs.image, pairs.all_text, False),
        ):
            ok = _not_positive(pairs, relevance, text_anchors)
            logits = (s * anchors @ candidates.T).float().masked_fill(~ok, float("-inf"))
            has = ok.any(dim=1)
            probs = torch.where(has[:, None], logits.softmax(dim=1).nan_to_num(0.0), 1.0)
            draws += [torch.multinomial(probs, 1).squeeze(1), has]
    return draws[0], draws[1], draws[2], draws[3]


def hardest_negative_images(pairs, keep: Tensor | None = None) -> Tensor:
    """For each of this rank's captions the global index of its most similar non-positive
    image (within ``keep`` ``(R, G)``, a miner's picks, when given)."""
    with torch.no_grad():
        sim = pairs.text @ pairs.all_image.T
        r, g = sim.shape
        ok = ~positives_from_ids(pairs.ids, pairs.all_ids, pairs.offset, r, g, sim.device).as_mask(
            g
        )
        if keep is not None:
            ok &= keep
        return sim.masked_fill(~ok, float("-inf")).argmax(dim=1)


def gather_text_output(text: TextOutput) -> TextOutput:
    """Every rank's captions, padded to the longest on any rank (itself in one process)."""
    _, world = world_info()
    if world == 1:
        return text
    length = torch.tensor([text.mask.shape[1]], device=text.mask.device)
    torch.distributed.all_reduce(length, op=torch.distributed.ReduceOp.MAX)
    padded = text.pad_to(int(length))
    return TextOutput(
        gather_with_grad(padded.tokens),
        gather_no_grad(padded.mask),
        gather_with_grad(padded.pooled),
        gather_no_grad(padded.input_ids),
    )


def albef_itm_loss(
    model, pairs, text: TextOutput, image: ImageOutput, scale, relevance: Tensor | None = None
) -> Tensor:
    """ALBEF's ITM loss on this rank's 3R pairs (see the module docstring): ``text`` and
    ``image`` as ``model.encode_texts`` / ``encode_images`` return them, ``pairs`` the
    contrastive loss's prepared pairs, ``scale`` its logit scale."""
    r = len(text)
    neg_image, has_image, neg_text, has_text = itm_negatives(pairs, scale, relevance)
    # the cross-modal inputs once per caption and image (the heads' states under fusion)
    states, patches = model.crossmodal_text(text), model.crossmodal_image(image)
    all_states, all_patches = gather_text_output(states), gather_with_grad(patches)
    rows = torch.arange(r, device=neg_image.device)
    captions = TextOutput.cat(
        [states.select(torch.cat([rows, rows[has_image]])), all_states.select(neg_text[has_text])]
    )
    images = torch.cat([patches, all_patches[neg_image[has_image]], patches[rows[has_text]]])
    logit = model.crossmodal(captions, images).itm_logit.float()
    target = torch.zeros_like(logit)
    target[:r] = 1.0
    return F.binary_cross_entropy_with_logits(logit, target)
