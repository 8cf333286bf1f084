"""The training objective: a contrastive loss × an optional negative miner × cross-modal terms.

``loss = L_contrastive(pairs restricted by the miner) + w_itm·ITM + λ_local·CLA + w_mlm·MLM``
(+ the miner's own policy loss, which only reaches the miner's parameters).

- the contrastive loss (``hardneg.losses``) gathers features from every rank with gradient;
- the miner is BACL's boundary-aware sampler (:class:`~hardneg.samplers.BoundaryAwareSampler`,
  arXiv:2511.08399 §3.2), run on the *global* similarity matrices, so every rank makes the same
  choice a single process would;
- ITM scores each caption with its image against its hardest negative image (restricted to the
  miner's picks when there is a miner); CLA (BACL §3.3) compares the cross-attention maps of
  those two pairs; MLM predicts masked words given the image (the step's drawn targets).

See ``docs/methods.md`` for every method's equations and the choices made.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.losses.cla import ContrastiveLocalAttentionLoss
from hardneg.losses.distributed import gather_with_grad
from hardneg.losses.pairs import positives_from_ids
from hardneg.models.alignment import AlignmentModel
from hardneg.models.crossmodal import last_layer_attention
from hardneg.models.outputs import TextOutput
from hardneg.samplers import BoundaryAwareSampler, boundary_scores
from hardneg.train.batch import Batch
from hardneg.train.config import AuxConfig


@dataclass
class ObjectiveOutput:
    """What one micro-batch's objective returns.

    Attributes:
        loss: the model's loss (contrastive + cross-modal terms).
        policy_loss: the miner's policy loss (0 without a miner); backpropagated with ``loss``.
        logs: figures of this micro-batch (this rank's view).
        pairs: the loss's prepared pairs (global features, detached copies feed the store).
        selected_bs: boundary scores of a sample of the miner's picks (for histograms).
    """

    loss: Tensor
    policy_loss: Tensor
    logs: dict[str, float]
    pairs: object
    selected_bs: Tensor | None = None


@dataclass
class Objective:
    """A contrastive loss, an optional BNS miner and the cross-modal terms of ``aux``.

    Args:
        loss_fn: a hardneg contrastive loss (``prepare`` / ``loss`` / ``scale``).
        aux: the cross-modal terms' weights (``itm_weight``, ``cla_weight``, ``mlm_weight``)
            and CLA's ρ, β.
        selector: BACL's boundary-aware sampler, or None.
        denominator: with a selector, ``"selected"`` (the loss scores the positive + k picks)
            or ``"weighted"`` (every negative weighted by its relaxed selection weight).
        bs_samples: how many selected boundary scores a step keeps for the histograms.
    """

    loss_fn: torch.nn.Module
    aux: AuxConfig
    selector: BoundaryAwareSampler | None = None
    denominator: str = "selected"
    bs_samples: int = 64
    cla: ContrastiveLocalAttentionLoss = field(init=False)

    def __post_init__(self) -> None:
        self.cla = ContrastiveLocalAttentionLoss(
            self.aux.cla_rho, self.aux.cla_beta, detach_delta=self.aux.cla_detach_delta
        )

    @property
    def crossmodal(self) -> bool:
        """Whether any cross-modal term is on (the model then needs its cross-modal head)."""
        return bool(self.aux.itm_weight or self.aux.cla_weight or self.aux.mlm_weight)

    def __call__(
        self,
        model: AlignmentModel,
        batch: Batch,
        progress: tuple[float, float],
        autocast: Callable[[], AbstractContextManager],
    ) -> ObjectiveOutput:
        """The loss of one micro-batch; ``progress`` = (η, total) epochs for the curriculum."""
        logs: dict[str, float] = {}
        with autocast():
            img_emb, img_out = model.encode_images(batch.images)
            txt_emb, text = model.encode_texts(batch.text)
            extra = None
            if batch.hard_text is not None:
                extra = model.encode_texts(batch.hard_text)[0]
        pairs = self.loss_fn.prepare(img_emb, txt_emb, batch.ids, extra)
        policy_loss = img_emb.new_zeros(())
        keep_t2i, selected_bs = None, None
        if self.selector is not None:
            pairs, keep_t2i, policy_loss, sel_logs, selected_bs = self._select(
                pairs, batch, progress
            )
            logs.update(sel_logs)
        total = self.loss_fn.loss(pairs)
        logs["contrastive"] = float(total.detach())
        if self.crossmodal:
            with autocast():
                total = total + self._crossmodal(
                    model, pairs, text, img_out.tokens, keep_t2i, batch, logs
                )
        logs["loss"] = float(total.detach())
        return ObjectiveOutput(total, policy_loss, logs, pairs, selected_bs)

    def _select(self, pairs, batch: Batch, progress: tuple[float, float]):
        """BNS on the global similarity matrices (identical on every rank), local rows kept.

        The boundary score enters the selection on the loss's logit scale (BS/τ with the
        loss's current temperature). ``denominator`` decides what the loss scores (see
        :class:`~hardneg.train.config.SelectorConfig`).
        """
        assert self.selector is not None
        eta, total = progress
        logit_scale = float(self.loss_fn.scale().detach())
        r, off = pairs.image.shape[0], pairs.offset
        g = pairs.all_image.shape[0]
        cands = pairs.text_candidates.detach()
        all_img, all_txt = pairs.all_image.detach(), pairs.all_text.detach()
        results = []
        for anchors, cand in ((all_img, cands), (all_txt, all_img)):
            sim = anchors @ cand.T
            pos = positives_from_ids(
                pairs.all_ids, pairs.all_ids, 0, g, cand.shape[0], sim.device
            ).as_mask(cand.shape[0])
            sel = self.selector(sim, pos, sim.diagonal(), eta, total, logit_scale=logit_scale)
            results.append((sel, sim))
        (sel_i2t, _), (sel_t2i, sim_t2i) = results
        keep_i2t = sel_i2t.hard[off : off + r].bool()
        keep_t2i = sel_t2i.hard[off : off + r].bool()
        picked = sel_t2i.hard.bool()
        bs = boundary_scores(sim_t2i, torch.arange(g, device=sim_t2i.device))[picked]
        logs = {
            "alpha": sel_i2t.alpha,
            "gumbel_tau": sel_i2t.tau,
            "selected_bs_mean": float(bs.mean()),
            "policy_entropy": float(sel_i2t.entropy),
        }
        if batch.relevance is not None:
            # false negative: caption i (a text anchor) is true of the picked image j
            true_of = batch.relevance.T.to(picked.device)
            logs["selected_fn_rate"] = 100.0 * float(true_of[picked].float().mean())
        sample = bs.detach().cpu()[: self.bs_samples]
        policy_loss = sel_i2t.policy_loss + sel_t2i.policy_loss
        if self.denominator == "weighted":
            weights = (sel_i2t.soft[off : off + r], sel_t2i.soft[off : off + r])
            return pairs.reweight(*weights), keep_t2i, policy_loss, logs, sample
        return pairs.restrict(keep_i2t, keep_t2i), keep_t2i, policy_loss, logs, sample

    def mlm(self, model: AlignmentModel, text: TextOutput, image_tokens: Tensor, batch: Batch):
        """MLM loss of the shard's captions given their images, on the step's drawn targets."""
        return model.crossmodal.mlm_loss(
            model.crossmodal_text(text),
            image_tokens,
            chosen=batch.mlm_chosen,
            num_targets=batch.mlm_targets,
        )

    def _crossmodal(self, model, pairs, text, image_tokens, keep_t2i, batch, logs) -> Tensor:
        """ITM (positive vs hardest negative image), CLA on their attention maps, and MLM."""
        aux, cross = self.aux, model.crossmodal
        all_tokens = gather_with_grad(image_tokens)
        with torch.no_grad():
            sim = pairs.text @ pairs.all_image.T
            neg_ok = ~positives_from_ids(
                pairs.ids, pairs.all_ids, pairs.offset, len(text), sim.shape[1], sim.device
            ).as_mask(sim.shape[1])
            if keep_t2i is not None:
                neg_ok &= keep_t2i
            neg_idx = sim.masked_fill(~neg_ok, float("-inf")).argmax(dim=1)
        total = image_tokens.new_zeros((), dtype=torch.float32)
        if aux.itm_weight or aux.cla_weight:
            # positives and hardest negatives in one forward of 2R pairs
            both = model.crossmodal_text(text).select(torch.arange(len(text)).repeat(2))
            out = cross(both, torch.cat([image_tokens, all_tokens[neg_idx]]))
            r = len(text)
            attn = last_layer_attention(out)
            if aux.itm_weight:
                logit = out.itm_logit.float()
                target = torch.cat([torch.ones(r), torch.zeros(r)]).to(logit)
                itm = F.binary_cross_entropy_with_logits(logit, target)
                logs["itm"] = float(itm.detach())
                total = total + aux.itm_weight * itm
            if aux.cla_weight:
                cla = self.cla(attn[:r].float(), attn[r:].float(), text.mask)
                logs["cla"] = float(cla.detach())
                total = total + aux.cla_weight * cla
        if aux.mlm_weight:
            mlm = self.mlm(model, text, image_tokens, batch)
            logs["mlm"] = float(mlm.detach())
            total = total + aux.mlm_weight * mlm
        return total
