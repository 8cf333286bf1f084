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

The sampler is a miner in the pytorch-metric-learning sense: it picks, a contrastive loss scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hardneg.samplers.curriculum import CURRICULUM_PRESETS, LogisticCurriculum
from hardneg.samplers.gumbel import gumbel_topk
from hardneg.samplers.selection import Selection, rank_percentile


@dataclass
class BNSConfig:
    """Configuration of :class:`BoundaryAwareSampler`.

    Attributes:
        k: negatives selected per anchor.
        hidden: hidden width of the 2-layer policy MLP (paper: 64).
        tau_start: Gumbel-Softmax temperature at the start of training.
        tau_end: temperature at the end; annealed geometrically,
            ``τ_g(η) = τ_start·(τ_end/τ_start)^{η/total}``.
        entropy_weight: weight w_H of the entropy bonus of the policy.
        curriculum: name of a preset in :data:`~hardneg.samplers.CURRICULUM_PRESETS`.
        midpoint: η₀ of the curriculum in epochs; None = the preset's fraction of training.
        lr: Adam learning rate of the policy's own optimiser.
        init_output_scale: scale of the policy's last-layer initial weights (bias starts at 0);
            small, so that at the start the curriculum term ``−α·BS/τ`` decides the selection.
        seed: seed of the sampler's Gumbel noise generator.
        logit_scale: ``1/τ`` multiplying BS in the selection logit when ``forward`` gets no
            ``logit_scale`` (default 1/0.07, CLIP's initial temperature). Pass the loss's live
            ``scale()`` to ``forward`` so the tilt matches the logits the loss sees. Measured
            (B=128, k=16, negative cosines ~N(0.1, 0.15), positive 0.6): in cosine units the
            curriculum moved the mean picked BS 3 % (start) / 6 % (end) of the way from the
            uniform mean to the easiest / hardest k against the Gumbel noise (std ≈ 1.28);
            with 1/0.07, 36 % / 55 % (tests/test_bns.py requires ≥ 25 %).
    """

    k: int = 8
    hidden: int = 64
    tau_start: float = 1.0
    tau_end: float = 0.1
    entropy_weight: float = 0.01
    curriculum: str = "default"
    midpoint: float | None = None
    lr: float = 1e-3
    init_output_scale: float = 1e-3
    seed: int = 0
    logit_scale: float = 1.0 / 0.07

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"BNSConfig.k must be a positive int, got {self.k!r}")
        if self.hidden < 1:
            raise ValueError(f"BNSConfig.hidden must be ≥ 1, got {self.hidden}")
        if not (self.tau_start > 0 and self.tau_end > 0):
            raise ValueError(
                f"BNSConfig.tau_start and tau_end must be > 0, got {self.tau_start}, {self.tau_end}"
            )
        if self.entropy_weight < 0:
            raise ValueError(f"BNSConfig.entropy_weight must be ≥ 0, got {self.entropy_weight}")
        if self.curriculum not in CURRICULUM_PRESETS:
            raise ValueError(
                f"BNSConfig.curriculum={self.curriculum!r} is not a preset; choose one of "
                f"{sorted(CURRICULUM_PRESETS)}"
            )
        if not self.lr > 0:
            raise ValueError(f"BNSConfig.lr must be > 0, got {self.lr}")
        if not (self.logit_scale > 0 and math.isfinite(self.logit_scale)):
            raise ValueError(
                f"BNSConfig.logit_scale must be a finite 1/τ > 0, got {self.logit_scale}"
            )
        if self.init_output_scale < 0:
            raise ValueError(
                f"BNSConfig.init_output_scale must be ≥ 0, got {self.init_output_scale}"
            )


class BoundaryAwareSampler(nn.Module):
    r"""Learned boundary-aware negative selection with an easy-to-hard curriculum (BACL BNS).

    For anchors i and candidates j (in-batch captions, optionally followed by extra hard-negative
    captions; positives given by ``positive_mask``):

    .. math::
        BS_{ij} = s_{ij} - s^+_i,\quad
        p_{ij} = \alpha(\eta)\,g_\phi([s_{ij}, s^+_i, BS_{ij}, r_{ij}, \alpha(\eta)]),\quad
        \ell_{ij} = p_{ij} - \alpha(\eta)\,BS_{ij}/\tau
                 = -\alpha(\eta)\,\big(BS_{ij}/\tau - g_{ij}\big)

    (``r_ij`` the rank-percentile of ``s_ij`` among row i's allowed candidates, g_φ a 2-layer
    MLP, τ the contrastive loss's temperature: ``forward(..., logit_scale=1/τ)``, default
    :attr:`BNSConfig.logit_scale`). BS/τ is the logit gap the loss itself sees; in cosine units
    the tilt was too small against the Gumbel noise to move the picks.

    Why ``p = α·g`` and α as an input: the reward ``−α·BS`` is odd in α, so the best tilt at
    −α is the mirror of the one at α. The policy learns a correction g of the hardness BS/τ,
    and α sets direction and strength, so the learned preference flips with the curriculum at
    α = 0 instead of lagging it. (An MLP with α only as an input, trained through the default
    schedule, still picked easier-than-uniform negatives after α turned negative; ``α = 0`` is
    uniform selection.) Then
    :func:`~hardneg.samplers.gumbel.gumbel_topk` picks k negatives per row with temperature
    :func:`~hardneg.samplers.gumbel.gumbel_topk` picks k negatives per row with Gumbel
    temperature ``τ_g(η) = τ_start (τ_end/τ_start)^{η/total}``. The policy loss, with reward
    ``R_ij = −α(η)·BS_ij`` (all features and BS detached), is

    .. math::
        \mathcal L_{policy} = -\frac1B\sum_i\sum_j \mathrm{soft}_{ij} R_{ij}
        \; - \; w_H \frac1B\sum_i H\big(\mathrm{softmax}_{j\,\mathrm{allowed}}(\ell_{ij})\big)

    Its gradient reaches only the policy MLP (through ``soft``); ``Selection.hard``/``soft`` are
    returned detached so a contrastive loss weighted by them cannot train the policy to pick
    easy negatives. For symmetric BACL call the sampler twice (``sim`` and ``sim.T``).

    Training protocol: add ``selection.policy_loss`` to the loss, ``backward()``, then
    :meth:`step_policy` (the policy has its own Adam; keep :meth:`policy_parameters` out of the
    main optimiser). ``state_dict()`` holds the MLP, the policy optimiser and the noise
    generator state, so a resumed run draws the same selections.

    Args:
        config: :class:`BNSConfig`.

    Example:
        >>> sampler = BoundaryAwareSampler(BNSConfig(k=2))
        >>> emb = torch.nn.functional.normalize(torch.randn(6, 16), dim=1)
        >>> sim = emb @ emb.T
        >>> sel = sampler(sim, torch.eye(6, dtype=torch.bool), sim.diagonal(), 0.0, 10.0)
        >>> sel.indices.shape
        torch.Size([6, 2])
        >>> sel.policy_loss.backward(); sampler.step_policy()
    """

    def __init__(self, config: BNSConfig | None = None) -> None:
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

    def policy_parameters(self) -> list[nn.Parameter]:
        """Parameters of the policy MLP (updated by :meth:`step_policy`, not the main optimiser)."""
        return list(self.policy.parameters())

    def step_policy(self) -> None:
        """Adam step of the policy on the gradients left by ``policy_loss.backward()``."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def temperature(self, progress: float, total: float) -> float:
        """Annealed Gumbel temperature ``τ_start (τ_end/τ_start)^{clamp(η/total, 0, 1)}``."""
        frac = min(max(progress / total, 0.0), 1.0)
        cfg = self.config
        return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** frac

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
        self._check_inputs(sim, positive_mask, pos_sim, progress, total)
        dtype = torch.promote_types(sim.dtype, torch.float32)
        alpha = self.curriculum(progress, total)
        return self._priorities(sim.to(dtype), ~positive_mask, pos_sim.to(dtype), alpha)

    def _priorities(self, sim: Tensor, allowed: Tensor, pos_sim: Tensor, alpha: float) -> Tensor:
        feats = self.features(sim, allowed, pos_sim, alpha)
        param = next(self.policy.parameters())
        return alpha * self.policy(feats.to(param.dtype)).squeeze(-1).to(sim.dtype)

    def forward(
        self,
        sim: Tensor,
        positive_mask: Tensor,
        pos_sim: Tensor,
        progress: float,
        total: float,
        logit_scale: float | Tensor | None = None,
    ) -> Selection:
        """Select ``config.k`` negatives per anchor.

        Args:
            sim: (B, C) cosine similarities of anchors vs candidates (detached inside).
            positive_mask: (B, C) bool, True for each anchor's positives (never picked).
            pos_sim: (B,) similarity of each anchor with its positive, ``s_ii``.
            progress: training progress η in (fractional) epochs.
            total: total number of epochs of the run (> 0).
            logit_scale: ``1/τ`` of the contrastive loss scaling BS in the selection logit;
                None uses :attr:`BNSConfig.logit_scale`.

        Returns:
            :class:`Selection`.
        """
        self._check_inputs(sim, positive_mask, pos_sim, progress, total)
        scale = self.config.logit_scale if logit_scale is None else float(logit_scale)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"logit_scale must be a finite 1/τ > 0, got {scale}")
        dtype = torch.promote_types(sim.dtype, torch.float32)
        sim = sim.detach().to(dtype)
        pos_sim = pos_sim.detach().to(dtype)
        allowed = ~positive_mask
        alpha = self.curriculum(progress, total)
        tau = self.temperature(progress, total)

        priority = self._priorities(sim, allowed, pos_sim, alpha)
        boundary = sim - pos_sim.unsqueeze(1)
        logits = priority - alpha * scale * boundary
        hard, soft, indices = gumbel_topk(logits, self.config.k, tau, allowed, self.generator)

        reward = torch.where(allowed, -alpha * boundary, torch.zeros_like(boundary))
        # log π over allowed candidates; disallowed set to 0 *after* log_softmax so that their
        # p·log p term is 1·0 = 0 with a finite gradient (no −∞·0 = NaN in backward)
        log_probs = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=1)
        log_probs = log_probs.masked_fill(~allowed, 0.0)
        entropy = -(log_probs.exp() * log_probs).sum(dim=1).mean()
        policy_loss = -(soft * reward).sum(dim=1).mean() - self.config.entropy_weight * entropy
        return Selection(
            indices=indices,
            hard=hard.detach(),
            soft=soft.detach(),
            alpha=alpha,
            tau=tau,
            policy_loss=policy_loss,
            entropy=entropy.detach(),
        )

    def _check_inputs(
        self, sim: Tensor, positive_mask: Tensor, pos_sim: Tensor, progress: float, total: float
    ) -> None:
        if sim.dim() != 2 or not sim.is_floating_point():
            raise ValueError(
                f"sim must be a floating (B, C) tensor, got {sim.dtype} {tuple(sim.shape)}"
            )
        if not bool(torch.isfinite(sim).all()):
            raise ValueError("sim contains NaN or inf; check the embeddings before the sampler")
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

    def get_extra_state(self) -> dict:
        """Policy optimiser and noise generator state (saved in ``state_dict()``)."""
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        """Restore what :meth:`get_extra_state` saved."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
