"""The training objective: a contrastive loss × an optional negative miner × cross-modal terms.

``loss = L_contrastive(pairs restricted by the miner) + w_itm·ITM + λ_local·CLA + w_mlm·MLM``
(the miner trains its own policy: :class:`~hardneg.miners.BoundaryAwareMiner`).

- the contrastive loss (``hardneg.losses``) gathers features from every rank with gradient;
- the miner is BACL's boundary-aware miner (:class:`~hardneg.miners.BoundaryAwareMiner`,
  arXiv:2511.08399 §3.2): each rank mines its anchors among every rank's candidates and picks
  exactly what a single process would;
- ITM scores each caption with its image against its hardest negative image (restricted to the
  miner's picks when there is a miner); CLA (BACL §3.3) compares the cross-attention maps of
  those two pairs; MLM predicts masked words given the image (the step's drawn targets).

See ``docs/methods.md`` for every method's equations and the choices made.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.losses.cla import ContrastiveLocalAttentionLoss
from hardneg.losses.distributed import gather_with_grad
from hardneg.miners import BoundaryAwareMiner, MinedNegatives
from hardneg.models.alignment import AlignmentModel
from hardneg.models.crossmodal import last_layer_attention
from hardneg.models.inputs import Texts
from hardneg.models.outputs import TextOutput
from hardneg.train.batch import Batch
from hardneg.train.config import CrossModalTermsConfig
from hardneg.train.gradcache import Chunk, check_chunkable, chunk_slices, gradcache_backward
from hardneg.train.itm import albef_itm_loss, hardest_negative_images
from hardneg.train.listwise import listwise_rerank_loss


def has_crossmodal_terms(terms: CrossModalTermsConfig) -> bool:
    """Whether ``terms`` turns on ITM, CLA, MLM or BACL's re-ranking loss (the model then needs
    a cross-modal head)."""
    return bool(terms.itm_weight or terms.cla_weight or terms.mlm_weight or terms.rerank_weight)


@dataclass
class ObjectiveOutput:
    """What one micro-batch's objective returns.

    Attributes:
        loss: the model's loss (contrastive + cross-modal terms).
        logs: figures of this micro-batch (this rank's view).
        pairs: the loss's prepared pairs (global features, detached copies feed the store).
        selected_boundary_scores: boundary scores of a sample of the miner's picks (for histograms).
    """

    loss: Tensor
    logs: dict[str, float]
    pairs: object
    selected_boundary_scores: Tensor | None = None


@dataclass
class Objective:
    """A contrastive loss, an optional BNS miner and the cross-modal terms of ``terms``.

    Args:
        loss_fn: a hardneg contrastive loss (``prepare`` / ``loss`` / ``scale``).
        terms: the cross-modal terms' weights (``itm_weight``, ``cla_weight``, ``mlm_weight``)
            and CLA's ρ, β.
        miner: BACL's boundary-aware miner, or None (its policy steps once per optimiser step:
            ``defer_policy_step`` is set here, the loop's callback steps it).
        denominator: with a miner, ``"selected"`` (the loss scores the positive + k picks)
            or ``"weighted"`` (every negative weighted by its relaxed selection weight).
        bs_samples: how many selected boundary scores a step keeps for the histograms.
        contrastive_weight: weight of the contrastive loss (0: not computed; the miner still
            mines from the pairs: BACL's re-ranker on a frozen dual encoder).
    """

    loss_fn: torch.nn.Module
    terms: CrossModalTermsConfig
    miner: BoundaryAwareMiner | None = None
    denominator: str = "selected"
    bs_samples: int = 64
    contrastive_weight: float = 1.0
    cla: ContrastiveLocalAttentionLoss = field(init=False)

    def __post_init__(self) -> None:
        if self.miner is not None:
            self.miner.defer_policy_step = True
        self.cla = ContrastiveLocalAttentionLoss(
            self.terms.cla_rho,
            self.terms.cla_beta,
            detach_delta=self.terms.cla_detach_delta,
            reduction=self.terms.cla_reduction,
        )

    @property
    def crossmodal(self) -> bool:
        """Whether any cross-modal term is on (the model then needs its cross-modal head)."""
        return has_crossmodal_terms(self.terms)

    @staticmethod
    def _encode(model: AlignmentModel, batch: Batch, rows: slice = slice(None)):
        """Embeddings (image, text[, hard-negative text]) and tower outputs of ``rows``."""
        img_emb, img_out = model.encode_images(batch.images.select(rows))
        txt_emb, text = model.encode_texts(batch.text.select(rows))
        embeddings = [img_emb, txt_emb]
        if batch.hard_text is not None:
            embeddings.append(model.encode_texts(batch.hard_text.select(rows))[0])
        return tuple(embeddings), img_out, text

    def _contrastive(self, embeddings: tuple[Tensor, ...], batch: Batch, progress):
        """The contrastive loss (restricted by the miner) of a micro-batch's embeddings."""
        extra = embeddings[2] if len(embeddings) > 2 else None
        pairs = self.loss_fn.prepare(embeddings[0], embeddings[1], batch.ids, extra)
        out = _Contrastive(pairs)
        if self.miner is not None:
            mined = self.miner(pairs, *progress, logit_scale=self.loss_fn.scale())
            out.mined = mined
            out.keep_t2i = mined.t2i_keep
            out.selected_boundary_scores = self._mining_logs(mined, pairs, batch, out.logs)
            weighted = self.denominator == "weighted"
            pairs = mined.reweight(pairs) if weighted else mined.restrict(pairs)
            out.pairs = pairs
        if self.contrastive_weight:
            out.loss = self.contrastive_weight * self.loss_fn.loss(pairs)
            out.logs["contrastive"] = float(out.loss.detach())
        else:  # nothing the contrastive loss would train (a frozen dual encoder)
            out.loss = pairs.image.new_zeros((), dtype=torch.float32)
        return out

    def __call__(
        self,
        model: AlignmentModel,
        batch: Batch,
        progress: tuple[float, float],
        autocast: Callable[[], AbstractContextManager],
    ) -> ObjectiveOutput:
        """The loss of one micro-batch; ``progress`` = (η, total) epochs for the curriculum."""
        with autocast():
            embeddings, img_out, text = self._encode(model, batch)
        c = self._contrastive(embeddings, batch, progress)
        total = c.loss
        with autocast():
            extra = self._extra_terms(model, c, text, img_out, batch)
        if extra is not None:
            total = total + extra
        c.logs["loss"] = float(total.detach())
        return ObjectiveOutput(total, c.logs, c.pairs, c.selected_boundary_scores)

    def _extra_terms(self, model, c: _Contrastive, text, img_out, batch: Batch) -> Tensor | None:
        """The terms added to the contrastive loss (here the cross-modal ones; None: none)."""
        if not self.crossmodal:
            return None
        return self._crossmodal(
            model, c.pairs, text, img_out, c.keep_t2i, batch, c.logs, mined=c.mined
        )

    def gradcache(
        self,
        model: AlignmentModel,
        batch: Batch,
        progress: tuple[float, float],
        autocast: Callable[[], AbstractContextManager],
        chunk_size: int,
        scaler: Any = None,
        weight: float = 1.0,
    ) -> ObjectiveOutput:
        """The micro-batch's loss by GradCache (:mod:`hardneg.train.gradcache`), chunks of
        ``chunk_size`` rows; back-propagates ``weight × loss`` itself (the returned loss is
        detached).

        Exact: the contrastive loss and its gradient on the full micro-batch (BNS selection and
        NegCLIP extra negatives included; DDP-global). Per chunk: the cross-modal terms — ITM's
        hardest negative image is searched among the chunk's images (every rank's chunk),
        within BNS's picks; ITM and CLA are chunk means weighted by the chunk's share of rows;
        MLM is exact (its normaliser is the micro-batch's token count). With one chunk the step
        equals the plain one, dropout masks included.
        """
        check_chunkable(model)
        slices = chunk_slices(len(batch.local), chunk_size)

        def encode(i: int) -> Chunk:
            with autocast():
                embeddings, img_out, text = self._encode(model, batch, slices[i])
            return Chunk(embeddings, (img_out, text))

        def loss_from_embeddings(*embeddings: Tensor):
            c = self._contrastive(embeddings, batch, progress)
            return weight * c.loss, c

        chunk_logs: dict[str, float] = {}

        def chunk_loss(i: int, chunk: Chunk, c: _Contrastive) -> Tensor:
            rows = slices[i]
            img_out, text = chunk.extra
            # the chunk's global candidates: its rows of every rank's shard
            r, world = len(batch.local), c.pairs.all_image.shape[0] // len(batch.local)
            cols = torch.arange(r, device=c.pairs.text.device)[rows]
            cols = torch.cat([q * r + cols for q in range(world)])
            part = replace(
                batch,
                ids=batch.ids[rows],
                mlm_chosen=batch.mlm_chosen[rows],
                mlm_text=None if batch.mlm_text is None else batch.mlm_text.select(rows),
                relevance=None if batch.relevance is None else batch.relevance[cols][:, cols],
            )
            emb = chunk.embeddings
            pairs = self.loss_fn.prepare(emb[0].detach(), emb[1].detach(), part.ids)
            share = len(text) / len(batch.local)
            # the BNS picks among the chunk's candidates
            keep = None if c.keep_t2i is None else c.keep_t2i[rows][:, cols]
            with autocast():
                value = self._crossmodal(model, pairs, text, img_out, keep, part, chunk_logs, share)
            return weight * value

        result = gradcache_backward(
            encode,
            len(slices),
            loss_from_embeddings,
            scaler=scaler,
            chunk_loss=chunk_loss if self.crossmodal else None,
        )
        c = result.outputs
        logs = c.logs | chunk_logs
        total = c.loss.detach() + sum(v / weight for v in result.chunk_losses)
        logs["loss"] = float(total)
        return ObjectiveOutput(total, logs, c.pairs, c.selected_boundary_scores)

    def _mining_logs(
        self, mined: MinedNegatives, pairs, batch: Batch, logs: dict[str, float]
    ) -> Tensor:
        """The miner's figures into ``logs``; returns a sample of the picked negatives'
        boundary scores (caption anchors) for the histograms."""
        r, off = pairs.text.shape[0], pairs.offset
        picked = mined.t2i_keep
        bs = mined.t2i.boundary[picked]
        logs["alpha"] = mined.alpha
        logs["gumbel_tau"] = mined.tau
        logs["selected_boundary_score_mean"] = float(bs.mean())
        logs["policy_entropy"] = float(mined.i2t.entropy)
        if batch.relevance is not None:
            # false negative: caption i (a text anchor) is true of the picked image j
            true_of = batch.relevance.T[off : off + r].to(picked.device)
            logs["selected_fn_rate"] = 100.0 * float(true_of[picked].float().mean())
        return bs.detach().cpu()[: self.bs_samples]

    def mlm(self, model: AlignmentModel, text: TextOutput | Texts, image, batch: Batch) -> Tensor:
        """MLM loss of the shard's captions given their images (``image``: the images' tower
        output) on the step's drawn targets, with the batch's masked captions when the recipe
        cached them (``batch.mlm_text``)."""
        return model.mlm_loss(
            text,
            image,
            chosen=batch.mlm_chosen,
            num_targets=batch.mlm_targets,
            masked=batch.mlm_text,
        )

    def _crossmodal(
        self, model, pairs, text, image, keep_t2i, batch, logs, share: float = 1.0, mined=None
    ):
        """ITM, CLA on the attention maps of (caption, positive image) vs (caption, hardest
        negative image), MLM and BACL's listwise re-ranking loss over the miner's picks
        (``mined``). ``share``: the rows' share of the micro-batch (ITM and CLA are means over
        rows, so a GradCache chunk weighs its means by it; logs are summed over chunks)."""
        weights, r = self.terms, len(text)
        sampled_itm = weights.itm_weight and weights.itm_negatives == "sampled"
        terms = []
        if weights.cla_weight or (weights.itm_weight and not sampled_itm):
            neg_idx = hardest_negative_images(pairs, keep_t2i)
            # the cross-modal inputs once per caption and image, then the positives and the
            # hardest negatives in one forward of 2R pairs
            states, patches = model.crossmodal_text(text), model.crossmodal_image(image)
            both = states.select(torch.arange(r, device=neg_idx.device).repeat(2))
            out = model.crossmodal(both, torch.cat([patches, gather_with_grad(patches)[neg_idx]]))
            if weights.itm_weight and not sampled_itm:
                target = torch.cat([torch.ones(r), torch.zeros(r)]).to(out.itm_logit.device)
                itm = F.binary_cross_entropy_with_logits(out.itm_logit.float(), target)
                terms.append(("itm", weights.itm_weight, share * itm))
            if weights.cla_weight:
                attn = last_layer_attention(out)
                cla = self.cla(attn[:r].float(), attn[r:].float(), text.mask)
                terms.append(("cla", weights.cla_weight, share * cla))
        if sampled_itm:
            itm = albef_itm_loss(model, pairs, text, image, self.loss_fn.scale(), batch.relevance)
            terms.append(("itm", weights.itm_weight, share * itm))
        if weights.mlm_weight:
            terms.append(("mlm", weights.mlm_weight, self.mlm(model, text, image, batch)))
        if weights.rerank_weight:
            rerank, extra = listwise_rerank_loss(model, text, image, mined)
            logs.update(extra)
            terms.append(("rerank", weights.rerank_weight, rerank))
        total = image.tokens.new_zeros((), dtype=torch.float32)
        for name, w, value in terms:
            logs[name] = logs.get(name, 0.0) + float(value.detach())
            total = total + w * value
        return total


@dataclass
class _Contrastive:
    """The contrastive part of a micro-batch's objective (see :meth:`Objective._contrastive`)."""

    pairs: Any
    loss: Tensor | None = None
    mined: MinedNegatives | None = None
    keep_t2i: Tensor | None = None
    selected_boundary_scores: Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)
