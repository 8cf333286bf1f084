r"""BACL's boundary-aware negative sampler (BNS) as a self-contained hook for other frameworks.

Reference: "Aligning by Misaligning: Boundary-aware Curriculum Learning for Multimodal
Alignment" (BACL, NeurIPS 2025, arXiv:2511.08399), §3; see docs/integrations.md.

:class:`~hardneg.samplers.BoundaryAwareSampler` picks ``k`` negatives for one direction and
leaves its policy update to the caller. A foreign training loop (open_clip, a
``transformers.Trainer``, ``SentenceTransformerTrainer``) knows nothing of that protocol, so
:class:`BNSNegativeSelector` wraps it for both directions of a contrastive step:

- image anchors pick among all captions (then any extra hard-negative captions), caption
  anchors among all images, each with its own positives (ids) excluded;
- the policy is trained *inside* the call: the policy loss only depends on the policy MLP
  (every input feature is detached), so it is back-propagated right away, whatever the outer
  loop does with the contrastive loss; the policy's own Adam steps at once, or — with
  ``defer_policy_step`` (set by the framework hooks under gradient accumulation) — once per
  optimiser step in :meth:`BNSNegativeSelector.step_policy`, on the mean policy gradient of
  the micro-batches;
- under ``torch.distributed`` the policy gradients are averaged over ranks before the step,
  so every rank keeps the same policy;
- a batch too small for ``k`` (the short last batch of an epoch) gets ``k`` clipped to the
  fewest allowed candidates of a row, with a logged warning, instead of an error mid-epoch.

The result, :class:`NegativeSelection`, restricts a loss to {positives ∪ picked negatives}
through :meth:`hardneg.losses.pairs.ContrastivePairs.restrict`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hardneg.losses.base import ContrastiveLoss
from hardneg.losses.distributed import world_info
from hardneg.losses.pairs import ContrastivePairs
from hardneg.samplers.bns import BNSConfig, BoundaryAwareSampler, Selection

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NegativeSelection:
    """Negatives picked for one contrastive step, in both directions.

    Columns follow :class:`~hardneg.losses.pairs.ContrastivePairs`: for image anchors the
    captions of all ranks (``G``) then the extra hard-negative captions (``M``); for caption
    anchors the images of all ranks.

    Attributes:
        i2t_keep: (R, G+M) bool, True at the captions picked for each local image anchor.
        t2i_keep: (R, G) bool, True at the images picked for each local caption anchor.
        i2t_indices: (R, k) picked caption columns, most likely pick first.
        t2i_indices: (R, k) picked image columns.
        policy_loss: detached scalar policy loss of the step (for logging).
        alpha: curriculum α(η) used (> 0 avoids hard negatives, < 0 favours them).
        tau: Gumbel-Softmax temperature used.
    """

    i2t_keep: Tensor
    t2i_keep: Tensor
    i2t_indices: Tensor
    t2i_indices: Tensor
    policy_loss: Tensor
    alpha: float
    tau: float

    def restrict(self, pairs: ContrastivePairs) -> ContrastivePairs:
        """``pairs`` scored on their positives and the picked negatives only."""
        i2t_cols = pairs.text_candidates.shape[0]
        t2i_cols = pairs.all_image.shape[0]
        expected = ((pairs.image.shape[0], i2t_cols), (pairs.text.shape[0], t2i_cols))
        if (tuple(self.i2t_keep.shape), tuple(self.t2i_keep.shape)) != expected:
            raise ValueError(
                f"negatives were selected for candidate masks {tuple(self.i2t_keep.shape)} and "
                f"{tuple(self.t2i_keep.shape)} but this batch has {expected[0]} and "
                f"{expected[1]}; select them from the same features (and the same "
                "extra_text_features) that are passed to the loss"
            )
        return pairs.restrict(self.i2t_keep, self.t2i_keep)

    def hard_negative_texts(self, text_candidates: Tensor) -> Tensor:
        """(R, k, d) rows of ``text_candidates`` picked for each image anchor.

        Args:
            text_candidates: (G+M, d) the captions the selection was made over, in the same
                order (all ranks' captions, then the extra ones); in a single process without
                extra captions, simply the batch's text features.
        """
        cols = self.i2t_keep.shape[1]
        if text_candidates.dim() != 2 or text_candidates.shape[0] != cols:
            raise ValueError(
                f"text_candidates must be the ({cols}, d) captions the negatives were selected "
                f"from, got shape {tuple(text_candidates.shape)}"
            )
        return text_candidates[self.i2t_indices]


class BNSNegativeSelector(nn.Module):
    r"""Boundary-aware selection of ``k`` negatives per anchor, both directions, self-training.

    For image anchor ``i`` and caption ``j`` (and symmetrically for caption anchors), with
    detached cosines ``s``: boundary score ``BS_ij = s_ij − s_ii`` (``s_ii`` the anchor's own
    pair), selection logit ``ℓ_ij = α(η)·g(s_ij, s_ii, BS_ij, rank_ij, α) − α(η)·BS_ij/τ`` (τ the
    loss's temperature, passed as ``logit_scale = 1/τ``) and a
    Gumbel top-k pick (BACL §3; see :class:`~hardneg.samplers.BoundaryAwareSampler`). The
    policy losses of the two directions are summed and, in training mode with gradients enabled,
    back-propagated and stepped immediately (see module docstring).

    Training progress η drives the curriculum α(η) and the Gumbel temperature: pass
    ``progress``/``total`` (in epochs) to each call, call :meth:`set_progress`, or let
    :class:`hardneg.integrations.callbacks.BNSProgressCallback` do it in a
    ``transformers.Trainer``. Without any of these, η stays 0 (the start of the curriculum) and
    a warning says so.

    Args:
        config: :class:`~hardneg.samplers.BNSConfig` (``k``, policy width, curriculum,
            temperatures, policy learning rate, seed).
        train_policy: update the policy during training calls (False: frozen policy).

    Attributes:
        defer_policy_step: False (default): the policy steps inside each training call. True:
            each call only accumulates the policy gradient and :meth:`step_policy` steps once
            on their mean (``BNSProgressCallback`` switches this on for the Trainer's run, so
            the policy steps once per optimiser step under gradient accumulation).

    ``state_dict()`` holds the policy, its Adam state and the noise generator (the hosts'
    checkpoints store it, see docs/integrations.md).

    Example (the open_clip hook; a ``ContrastiveLoss`` takes the same ``negatives``):
        >>> import torch
        >>> from hardneg.samplers import BNSConfig
        >>> from hardneg.integrations.bns_selector import BNSNegativeSelector
        >>> selector = BNSNegativeSelector(BNSConfig(k=2))
        >>> img, txt = torch.randn(6, 16), torch.randn(6, 16)
        >>> negatives = selector(img, txt, progress=0.5, total=10)
        >>> negatives.i2t_indices.shape, int(negatives.t2i_keep.sum())
        (torch.Size([6, 2]), 12)
    """

    def __init__(self, config: BNSConfig | None = None, train_policy: bool = True) -> None:
        super().__init__()
        self.sampler = BoundaryAwareSampler(config)
        self.train_policy = train_policy
        self.progress = 0.0
        self.total = 1.0
        self.defer_policy_step = False
        self._pending = 0
        self._progress_given = False
        self._warned_frozen = False
        self._warned_k: set[int] = set()

    @property
    def config(self) -> BNSConfig:
        """The sampler's :class:`~hardneg.samplers.BNSConfig`."""
        return self.sampler.config

    def set_progress(self, progress: float, total: float) -> None:
        """Set the training progress η = ``progress`` of ``total`` epochs (fractional)."""
        if not total > 0:
            raise ValueError(f"total must be the (positive) number of training epochs, got {total}")
        if not progress >= 0:
            raise ValueError(f"progress must be ≥ 0 epochs, got {progress}")
        self.progress, self.total = float(progress), float(total)
        self._progress_given = True

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        positive_ids: Tensor | None = None,
        extra_text_features: Tensor | None = None,
        progress: float | None = None,
        total: float | None = None,
        logit_scale: float | Tensor | None = None,
    ) -> NegativeSelection:
        """Select negatives from raw features (e.g. open_clip's image and text features).

        Args:
            image_features, text_features: (B, d) this rank's pairs (normalised inside).
            positive_ids: optional (B,) semantic ids; pairs sharing an id are never picked as
                each other's negatives.
            extra_text_features: optional (B, K, d) or (M, d) hard-negative captions, extra
                candidates of the image anchors.
            progress, total: training progress η and length of the run in epochs; given
                together, they update :meth:`set_progress` first.
            logit_scale: the loss's ``1/τ``, which puts the boundary score on the logit scale
                in the selection logit (default: ``BNSConfig.logit_scale``).

        Returns:
            :class:`NegativeSelection`; pass it as ``negatives=`` to
            :class:`~hardneg.integrations.open_clip.OpenCLIPLossAdapter` with the same features.
        """
        if (progress is None) != (total is None):
            raise ValueError("pass progress and total together (training progress in epochs)")
        if progress is not None and total is not None:
            self.set_progress(progress, total)
        with torch.no_grad():
            # the loss base class validates, normalises and gathers exactly as the losses do
            layout = ContrastiveLoss(learn_temperature=False)
            pairs = layout.prepare(image_features, text_features, positive_ids, extra_text_features)
        return self.select(pairs, logit_scale)

    def select(
        self, pairs: ContrastivePairs, logit_scale: float | Tensor | None = None
    ) -> NegativeSelection:
        """Select negatives for prepared pairs (from ``ContrastiveLoss.prepare``); see
        :meth:`forward` for ``logit_scale``."""
        rows = pairs.image.shape[0]
        own = torch.arange(rows, device=pairs.image.device) + pairs.offset
        with torch.no_grad():
            sim_i2t = pairs.image @ pairs.text_candidates.T
            sim_t2i = pairs.text @ pairs.all_image.T
        pos_i2t = pairs.image_to_text_positives().as_mask(sim_i2t.shape[1])
        pos_t2i = pairs.text_to_image_positives().as_mask(sim_t2i.shape[1])
        if isinstance(logit_scale, Tensor):
            logit_scale = logit_scale.detach()
        i2t = self._pick(sim_i2t, pos_i2t, own, logit_scale)
        t2i = self._pick(sim_t2i, pos_t2i, own, logit_scale)
        # summed over the two directions, as hardneg.train.Trainer does (same policy dynamics)
        policy_loss = i2t.policy_loss + t2i.policy_loss
        if self.train_policy and self.training and torch.is_grad_enabled():
            self._update_policy(policy_loss)
        return NegativeSelection(
            i2t_keep=i2t.hard.bool(),
            t2i_keep=t2i.hard.bool(),
            i2t_indices=i2t.indices,
            t2i_indices=t2i.indices,
            policy_loss=policy_loss.detach(),
            alpha=i2t.alpha,
            tau=i2t.tau,
        )

    def step_policy(self) -> None:
        """Adam step of the policy on the mean gradient of the calls since the last step.

        Averaged over the calls and, under ``torch.distributed``, over ranks. A no-op when no
        training call happened (e.g. a step whose batches were all skipped).
        """
        if self._pending == 0:
            return
        _, world = world_info()
        for param in self.sampler.policy_parameters():
            if param.grad is not None:
                if world > 1:
                    dist.all_reduce(param.grad)
                param.grad.div_(self._pending * world)
        self._pending = 0
        self.sampler.step_policy()

    def _pick(
        self, sim: Tensor, positive_mask: Tensor, own: Tensor, logit_scale: float | Tensor | None
    ) -> Selection:
        pos_sim = sim.gather(1, own[:, None]).squeeze(1)
        k = self.config.k
        fewest = int((~positive_mask).sum(dim=1).min())
        if fewest >= k:
            return self.sampler(sim, positive_mask, pos_sim, self.progress, self.total, logit_scale)
        if fewest == 0:
            raise ValueError(
                "a batch has an anchor with no allowed negative (a batch of one row, or every "
                "row sharing one id); use batches of ≥ 2 distinct pairs (dataloader_drop_last)"
            )
        if fewest not in self._warned_k:
            logger.warning(
                "BNS: a batch has only %d allowed candidates in some row (a short last batch?); "
                "picking k=%d instead of k=%d for it. Drop short batches "
                "(dataloader_drop_last=True) to keep k fixed",
                fewest,
                fewest,
                k,
            )
            self._warned_k.add(fewest)
        config = self.sampler.config
        self.sampler.config = replace(config, k=fewest)
        try:
            return self.sampler(sim, positive_mask, pos_sim, self.progress, self.total, logit_scale)
        finally:
            self.sampler.config = config

    def _update_policy(self, policy_loss: Tensor) -> None:
        if not self._progress_given and not self._warned_frozen:
            warnings.warn(
                "BNSNegativeSelector is training without progress: the curriculum stays at its "
                "start (α_early). Pass progress/total, call set_progress(), or add "
                "hardneg.integrations.callbacks.BNSProgressCallback to the Trainer",
                stacklevel=3,
            )
            self._warned_frozen = True
        policy_loss.backward()  # reaches only the policy MLP: its inputs are detached
        self._pending += 1
        if not self.defer_policy_step:
            self.step_policy()
