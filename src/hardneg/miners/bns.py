r"""BACL's boundary-aware negative sampler (BNS): a learned, curriculum-tilted negative miner.

Reference: "Aligning by Misaligning: Boundary-aware Curriculum Learning for Multimodal
Alignment" (BACL, NeurIPS 2025, arXiv:2511.08399), §3 "Boundary-aware Negative Sampler". No
code is public; hardneg's reading of it:

1. boundary score ``BS_ij = s_ij − s_ii`` (detached cosine, ``s_ii`` = the anchor's positive);
2. a 2-layer policy MLP g on ``[s_ij, s_ii, BS_ij, rank-percentile of s_ij in its row, α(η)]``;
   the priority is ``p_ij = α(η)·g_ij``;
3. selection logit ``ℓ_ij = p_ij − α(η)·BS_ij/τ`` with the logistic curriculum α(η) and the
   contrastive loss's temperature τ (BS on the logit scale the loss sees);
4. straight-through Gumbel top-k picks k negatives per anchor;
5. the policy is trained "through Gumbel-Softmax using the boundary score as reward":
   ``R_ij = −α(η)·BS_ij`` and ``L_policy = −mean_i Σ_j soft_ij R_ij − w_H·mean_i H(softmax(ℓ_i))``.

:class:`BoundaryAwareMiner` is a miner in the pytorch-metric-learning sense: it picks, a
contrastive loss scores. Its one handshake: a loss's prepared pairs (similarities, positives)
and the training progress in → :class:`~hardneg.miners.result.MinedNegatives` out, which the
loss scores. The trainer, every framework integration and the README use it the same way.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hardneg.losses.base import ContrastiveLoss
from hardneg.losses.distributed import world_info
from hardneg.losses.pairs import ContrastivePairs
from hardneg.miners.config import BNSConfig
from hardneg.miners.curriculum import LogisticCurriculum
from hardneg.miners.gumbel import gumbel_topk
from hardneg.miners.result import MinedNegatives, Picks, rank_percentile

logger = logging.getLogger(__name__)


class BoundaryAwareMiner(nn.Module):
    r"""Learned boundary-aware negative mining with an easy-to-hard curriculum (BACL BNS).

    For anchor i and candidate j (image anchors among all captions, then any extra
    hard-negative captions; caption anchors among all images), with detached cosines ``s``:

    .. math::
        BS_{ij} = s_{ij} - s^+_i,\quad
        p_{ij} = \alpha(\eta)\,g_\phi([s_{ij}, s^+_i, BS_{ij}, r_{ij}, \alpha(\eta)]),\quad
        \ell_{ij} = p_{ij} - \alpha(\eta)\,BS_{ij}/\tau
                 = -\alpha(\eta)\,\big(BS_{ij}/\tau - g_{ij}\big)

    (``r_ij`` the rank-percentile of ``s_ij`` among row i's allowed candidates, g_φ a 2-layer
    MLP, τ the contrastive loss's temperature: ``logit_scale = 1/τ``, default
    :attr:`BNSConfig.logit_scale`). BS/τ is the logit gap the loss itself sees; in cosine units
    the tilt was too small against the Gumbel noise to move the picks.

    Why ``p = α·g`` and α as an input: the reward ``−α·BS`` is odd in α, so the best tilt at
    −α is the mirror of the one at α. The policy learns a correction g of the hardness BS/τ,
    and α sets direction and strength, so the learned preference flips with the curriculum at
    α = 0 instead of lagging it (``α = 0`` is uniform selection). Then
    :func:`~hardneg.miners.gumbel.gumbel_topk` picks k negatives per row with Gumbel
    temperature ``τ_g(η) = τ_start (τ_end/τ_start)^{η/total}``. The policy loss, with reward
    ``R_ij = −α(η)·BS_ij`` (all features and BS detached), summed over the two directions, is

    .. math::
        \mathcal L_{policy} = -\frac1B\sum_i\sum_j \mathrm{soft}_{ij} R_{ij}
        \; - \; w_H \frac1B\sum_i H\big(\mathrm{softmax}_{j\,\mathrm{allowed}}(\ell_{ij})\big)

    Its gradient reaches only the policy MLP (through ``soft``; the picks and weights are
    returned detached, so a loss weighted by them cannot train the policy to pick easy
    negatives).

    **The handshake** (:meth:`forward`): a loss's prepared pairs + progress →
    :class:`~hardneg.miners.result.MinedNegatives`; the loss scores ``mined.restrict(pairs)``.
    :meth:`mine_features` does the same from raw features.

    **Training the policy** happens inside the miner, whatever the host loop does with the
    contrastive loss: in training mode with gradients enabled, each call back-propagates its
    policy loss (it reaches only the policy MLP) and, unless :attr:`defer_policy_step` is set,
    takes the policy's Adam step at once. With ``defer_policy_step = True`` (the hardneg trainer,
    and the framework callbacks under gradient accumulation) the calls only accumulate and
    :meth:`step_policy` steps once per optimiser step on their mean gradient — averaged over
    ranks under ``torch.distributed``, so every rank keeps the same policy.

    **DDP**: each rank mines for its own anchors (``pairs.offset`` …) among all ranks'
    candidates; the Gumbel noise of the whole global batch is drawn from the same seeded
    generator on every rank and each rank uses its rows, so the picks are exactly those of a
    single process on the global batch.

    **Short batches**: a batch in which some anchor has fewer than ``k`` allowed candidates (a
    short last batch) is mined with ``k`` clipped to that number, with one logged warning per
    size, instead of an error mid-epoch.

    ``state_dict()`` holds the MLP, the policy's Adam state and the noise generator, so a resumed
    run draws the same picks.

    Args:
        config: :class:`BNSConfig`.
        train_policy: update the policy in training calls (False: a frozen policy).

    Attributes:
        defer_policy_step: see above (default False: step inside each training call).

    Example:
        >>> import torch
        >>> from hardneg.losses import InfoNCELoss
        >>> loss, miner = InfoNCELoss(), BoundaryAwareMiner(BNSConfig(k=2))
        >>> img = torch.randn(6, 16, requires_grad=True)
        >>> pairs = loss.prepare(img, torch.randn(6, 16))
        >>> mined = miner(pairs, progress=0.5, total=10.0, logit_scale=loss.scale())
        >>> loss.loss(mined.restrict(pairs)).backward()
        >>> mined.i2t.indices.shape, int(mined.t2i_keep.sum())
        (torch.Size([6, 2]), 12)
    """

    def __init__(self, config: BNSConfig | None = None, train_policy: bool = True) -> None:
        super().__init__()
        self.config = config or BNSConfig()
        cfg = self.config
        self.curriculum = LogisticCurriculum.from_preset(cfg.curriculum, cfg.midpoint)
        self.policy = nn.Sequential(nn.Linear(5, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 1))
        last = self.policy[-1]
        with torch.no_grad():
            last.weight.mul_(cfg.init_output_scale)
            last.bias.zero_()
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.train_policy = train_policy
        self.defer_policy_step = False
        self.progress = 0.0
        self.total = 1.0
        self._progress_given = False
        self._pending = 0
        self._warned_frozen = False
        self._warned_k: set[int] = set()

    # ------------------------------------------------------------------------ progress
    def set_progress(self, progress: float, total: float) -> None:
        """Set the training progress η = ``progress`` of ``total`` epochs (fractional)."""
        if not (total > 0 and math.isfinite(total)):
            raise ValueError(f"total must be the (positive) number of training epochs, got {total}")
        if not (progress >= 0 and math.isfinite(progress)):
            raise ValueError(f"progress must be ≥ 0 epochs, got {progress}")
        self.progress, self.total = float(progress), float(total)
        self._progress_given = True

    def temperature(self, progress: float, total: float) -> float:
        """Annealed Gumbel temperature ``τ_start (τ_end/τ_start)^{clamp(η/total, 0, 1)}``."""
        frac = min(max(progress / total, 0.0), 1.0)
        cfg = self.config
        return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** frac

    # -------------------------------------------------------------------------- policy
    def policy_parameters(self) -> list[nn.Parameter]:
        """Parameters of the policy MLP (updated by :meth:`step_policy`, never by the model's
        optimiser)."""
        return list(self.policy.parameters())

    def features(self, sim: Tensor, allowed: Tensor, pos_sim: Tensor, alpha: float) -> Tensor:
        """(B, C, 5) detached policy inputs ``[s_ij, s_ii, BS_ij, rank-percentile, α(η)]``."""
        sim = sim.detach()
        pos = pos_sim.detach().unsqueeze(1).expand_as(sim)
        rank = rank_percentile(sim, allowed)
        return torch.stack([sim, pos, sim - pos, rank, torch.full_like(sim, alpha)], dim=-1)

    def priorities(
        self, sim: Tensor, positive_mask: Tensor, pos_sim: Tensor, progress: float, total: float
    ) -> Tensor:
        """(B, C) policy priorities ``p_ij = α(η)·g_ij`` (with gradient to the policy)."""
        _check_inputs(sim, positive_mask, pos_sim, progress, total)
        dtype = torch.promote_types(sim.dtype, torch.float32)
        alpha = self.curriculum(progress, total)
        return self._priorities(sim.to(dtype), ~positive_mask, pos_sim.to(dtype), alpha)

    def _priorities(self, sim: Tensor, allowed: Tensor, pos_sim: Tensor, alpha: float) -> Tensor:
        feats = self.features(sim, allowed, pos_sim, alpha)
        param = next(self.policy.parameters())
        return alpha * self.policy(feats.to(param.dtype)).squeeze(-1).to(sim.dtype)

    def step_policy(self) -> None:
        """Adam step of the policy on the mean gradient of the training calls since the last
        step (averaged over the calls and, under ``torch.distributed``, over ranks), then zero
        its gradient. A gradient left by a caller's own ``picks.policy_loss.backward()`` counts
        as one call. A no-op when the policy has no gradient."""
        params = [p for p in self.policy_parameters() if p.grad is not None]
        calls, self._pending = max(self._pending, 1), 0
        if not params:
            return
        _, world = world_info()
        for param in params:
            if world > 1:
                dist.all_reduce(param.grad)
            param.grad.div_(calls * world)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # --------------------------------------------------------------------------- picks
    def pick(
        self,
        sim: Tensor,
        positive_mask: Tensor,
        pos_sim: Tensor,
        progress: float,
        total: float,
        logit_scale: float | Tensor | None = None,
        noise_rows: tuple[int, int] | None = None,
        k: int | None = None,
    ) -> Picks:
        """One direction's picks: ``k`` (default ``config.k``) negatives per anchor row.

        The building block of :meth:`forward` (which mines both directions and trains the
        policy); use it directly to mine a single similarity matrix.

        Args:
            sim: (B, C) cosine similarities of anchors vs candidates (detached inside).
            positive_mask: (B, C) bool, True for each anchor's positives (never picked).
            pos_sim: (B,) similarity of each anchor with its positive, ``s_ii``.
            progress: training progress η in (fractional) epochs.
            total: total number of epochs of the run (> 0).
            logit_scale: ``1/τ`` of the contrastive loss scaling BS in the selection logit;
                None uses :attr:`BNSConfig.logit_scale`.
            noise_rows: ``(offset, total rows)`` of these anchors in the global batch (see
                :func:`~hardneg.miners.gumbel.gumbel_topk`).
            k: picks per row (default ``config.k``).
        """
        _check_inputs(sim, positive_mask, pos_sim, progress, total)
        scale = self.config.logit_scale if logit_scale is None else float(logit_scale)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"logit_scale must be a finite 1/τ > 0, got {scale}")
        dtype = torch.promote_types(sim.dtype, torch.float32)
        sim = sim.detach().to(dtype)
        pos_sim = pos_sim.detach().to(dtype)
        allowed = ~positive_mask
        alpha = self.curriculum(progress, total)
        tau = self.temperature(progress, total)

        boundary = sim - pos_sim.unsqueeze(1)
        selection = self.config.selection
        if selection == "uniform":  # Gumbel top-k of equal logits: a uniform k-subset
            logits = torch.zeros_like(sim)
        elif selection == "schedule":  # the curriculum alone
            logits = -alpha * scale * boundary
        else:
            logits = self._priorities(sim, allowed, pos_sim, alpha) - alpha * scale * boundary
        hard, soft, indices = gumbel_topk(
            logits, k or self.config.k, tau, allowed, self.generator, noise_rows
        )

        reward = torch.where(allowed, -alpha * boundary, torch.zeros_like(boundary))
        # log π over allowed candidates; disallowed set to 0 *after* log_softmax so that their
        # p·log p term is 1·0 = 0 with a finite gradient (no −∞·0 = NaN in backward)
        log_probs = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=1)
        log_probs = log_probs.masked_fill(~allowed, 0.0)
        entropy = -(log_probs.exp() * log_probs).sum(dim=1).mean()
        policy_loss = -(soft * reward).sum(dim=1).mean() - self.config.entropy_weight * entropy
        return Picks(
            indices=indices,
            keep=hard.detach().bool(),
            weights=soft.detach(),
            boundary=boundary,
            policy_loss=policy_loss,
            entropy=entropy.detach(),
        )

    def forward(
        self,
        pairs: ContrastivePairs,
        progress: float | None = None,
        total: float | None = None,
        logit_scale: float | Tensor | None = None,
    ) -> MinedNegatives:
        """Mine both directions of a loss's prepared pairs (``ContrastiveLoss.prepare``).

        Args:
            pairs: this rank's anchors and every rank's candidates, with their positives.
            progress, total: training progress η and length of the run in epochs; given
                together they update :meth:`set_progress` first (else the last set progress).
            logit_scale: the loss's ``1/τ`` (pass ``loss.scale()``), which puts the boundary
                score on the logit scale in the selection logit (default
                :attr:`BNSConfig.logit_scale`).
        """
        if (progress is None) != (total is None):
            raise ValueError("pass progress and total together (training progress in epochs)")
        if progress is not None and total is not None:
            self.set_progress(progress, total)
        if isinstance(logit_scale, Tensor):
            logit_scale = float(logit_scale.detach())
        rows, off = pairs.image.shape[0], pairs.offset
        noise_rows = (off, pairs.all_image.shape[0])
        own = torch.arange(rows, device=pairs.image.device) + off
        with torch.no_grad():
            sim_i2t = pairs.image.detach() @ pairs.text_candidates.detach().T
            sim_t2i = pairs.text.detach() @ pairs.all_image.detach().T
        picks = []
        for sim, positives in (
            (sim_i2t, pairs.image_to_text_positives()),
            (sim_t2i, pairs.text_to_image_positives()),
        ):
            mask = positives.as_mask(sim.shape[1])
            pos_sim = sim.gather(1, own[:, None]).squeeze(1)
            k = self._k_for(mask)
            picks.append(
                self.pick(sim, mask, pos_sim, self.progress, self.total, logit_scale, noise_rows, k)
            )
        i2t, t2i = picks
        policy_loss = i2t.policy_loss + t2i.policy_loss
        trains = self.train_policy and self.config.selection == "boundary"
        if trains and self.training and torch.is_grad_enabled():
            self._train_policy(policy_loss)
        return MinedNegatives(
            i2t=i2t,
            t2i=t2i,
            alpha=self.curriculum(self.progress, self.total),
            tau=self.temperature(self.progress, self.total),
            policy_loss=policy_loss.detach(),
        )

    def mine_features(
        self,
        image_features: Tensor,
        text_features: Tensor,
        positive_ids: Tensor | None = None,
        extra_text_features: Tensor | None = None,
        progress: float | None = None,
        total: float | None = None,
        logit_scale: float | Tensor | None = None,
    ) -> MinedNegatives:
        """:meth:`forward` on raw features (e.g. open_clip's image and text features).

        Args:
            image_features, text_features: (B, d) this rank's pairs (normalised and gathered
                as hardneg's losses do).
            positive_ids: optional (B,) semantic ids; pairs sharing an id are never picked as
                each other's negatives.
            extra_text_features: optional (B, K, d) or (M, d) hard-negative captions, extra
                candidates of the image anchors.
            progress, total, logit_scale: as :meth:`forward`.
        """
        with torch.no_grad():
            layout = ContrastiveLoss(learn_temperature=False)
            pairs = layout.prepare(image_features, text_features, positive_ids, extra_text_features)
        return self(pairs, progress, total, logit_scale)

    def _k_for(self, positive_mask: Tensor) -> int:
        k = self.config.k
        fewest = int((~positive_mask).sum(dim=1).min()) if positive_mask.shape[0] else k
        if fewest >= k:
            return k
        if fewest == 0:
            raise ValueError(
                "a batch has an anchor with no allowed negative (a batch of one row, or every "
                "row sharing one id); use batches of ≥ 2 distinct pairs (drop_last)"
            )
        if fewest not in self._warned_k:
            logger.warning(
                "BNS: some anchor has only %d allowed candidates (a short batch?); picking k=%d "
                "instead of k=%d for it. Use larger batches or drop short ones to keep k fixed",
                fewest,
                fewest,
                k,
            )
            self._warned_k.add(fewest)
        return fewest

    def _train_policy(self, policy_loss: Tensor) -> None:
        if not self._progress_given and not self._warned_frozen:
            warnings.warn(
                "BoundaryAwareMiner is training without progress: the curriculum stays at its "
                "start (α_early). Pass progress/total, call set_progress(), or add "
                "hardneg.integrations.callbacks.BNSProgressCallback to the Trainer",
                stacklevel=3,
            )
            self._warned_frozen = True
        policy_loss.backward()  # reaches only the policy MLP: its inputs are detached
        self._pending += 1
        if not self.defer_policy_step:
            self.step_policy()

    def get_extra_state(self) -> dict:
        """Policy optimiser and noise generator state (saved in ``state_dict()``)."""
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        """Restore what :meth:`get_extra_state` saved."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def _check_inputs(
    sim: Tensor, positive_mask: Tensor, pos_sim: Tensor, progress: float, total: float
) -> None:
    if sim.dim() != 2 or not sim.is_floating_point():
        raise ValueError(
            f"sim must be a floating (B, C) tensor, got {sim.dtype} {tuple(sim.shape)}"
        )
    if not bool(torch.isfinite(sim).all()):
        raise ValueError("sim contains NaN or inf; check the embeddings before the miner")
    if positive_mask.shape != sim.shape or positive_mask.dtype != torch.bool:
        raise ValueError(
            f"positive_mask must be a bool tensor of shape {tuple(sim.shape)} (True at each "
            f"anchor's positives), got {positive_mask.dtype} {tuple(positive_mask.shape)}"
        )
    if pos_sim.shape != (sim.shape[0],) or not bool(torch.isfinite(pos_sim).all()):
        raise ValueError(
            f"pos_sim must be a finite ({sim.shape[0]},) tensor of anchor-positive "
            f"similarities, got shape {tuple(pos_sim.shape)}"
        )
    if not (total > 0 and math.isfinite(total) and math.isfinite(progress)):
        raise ValueError(
            f"progress and total must be finite epochs with total > 0, got {progress}, {total}"
        )
