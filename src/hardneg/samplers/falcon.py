r"""FALCON's negative-mining policy: a Beta policy over the hardness quantile q.

Reference: "FALCON: False-Negative Aware Learning of Contrastive Negatives in Vision-Language
Alignment" (CVPR 2026, arXiv:2505.11192), §3 "Learnable hardness policy", "Compact
similarity input", "Permutation equivariance", and the REINFORCE objective. No code is
public; the choices left open are documented on the classes below and in ``docs/methods.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Beta

MIN_CONCENTRATION = 1e-5
"""Added after softplus so that the Beta parameters stay > 0 (the paper's ``softplus(·)+1e-5``)."""

Q_CLAMP = 1e-6
"""Sampled q are clamped to [Q_CLAMP, 1 − Q_CLAMP] so that log π(q) stays finite."""


@dataclass
class FalconConfig:
    """Configuration of :class:`FalconPolicy` (defaults: the paper's).

    Attributes:
        m: number of uniformly spaced quantiles summarising a similarity row (m ≪ |M|).
        hidden: width of the residual MLP.
        n_layers: linear layers of the MLP (input, ``n_layers − 2`` residual blocks, output).
        lr: Adam learning rate of the policy.
        entropy_weight: weight of the Beta entropy bonus.
        update_interval: reinforce() calls (training steps) between two Adam steps (1: the
            paper updates φ from each step's reward).
        baseline_momentum: momentum of the moving-average reward baseline.
        instance_level: one q per anchor (True, FALCON) or one q per batch from the mean-pooled
            input (False, the paper's "batch-level" ablation).
        init_concentration: a = b at initialisation (q starts centred on 0.5; Beta(2, 2) by
            default, i.e. unimodal with std ≈ 0.22).
    """

    m: int = 32
    hidden: int = 128
    n_layers: int = 4
    lr: float = 1e-2
    entropy_weight: float = 0.01
    update_interval: int = 1
    baseline_momentum: float = 0.9
    instance_level: bool = True
    init_concentration: float = 2.0

    def __post_init__(self) -> None:
        if self.m < 2:
            raise ValueError(f"FalconConfig.m must be ≥ 2 quantiles, got {self.m}")
        if self.hidden < 1 or self.n_layers < 2:
            raise ValueError(
                f"FalconConfig needs hidden ≥ 1 and n_layers ≥ 2, got {self.hidden}, "
                f"{self.n_layers}"
            )
        if not self.lr > 0 or self.entropy_weight < 0:
            raise ValueError(
                f"FalconConfig.lr must be > 0 and entropy_weight ≥ 0, got {self.lr}, "
                f"{self.entropy_weight}"
            )
        if self.update_interval < 1:
            raise ValueError(
                f"FalconConfig.update_interval must be ≥ 1, got {self.update_interval}"
            )
        if not 0.0 <= self.baseline_momentum < 1.0:
            raise ValueError(
                f"FalconConfig.baseline_momentum must be in [0, 1), got {self.baseline_momentum}"
            )
        if not self.init_concentration > MIN_CONCENTRATION:
            raise ValueError(
                f"FalconConfig.init_concentration must be > {MIN_CONCENTRATION}, got "
                f"{self.init_concentration}"
            )


class FalconPolicy(nn.Module):
    r"""Hardness policy π_φ: similarity-row shape → Beta(a, b) → quantile q (FALCON §3).

    Input of an anchor: its similarity row ``S_i·`` within the search space (itself excluded),
    ``S = S_i2t + S_t2i``. The row is **sorted** (this is the paper's row sort: it makes the
    input, hence (a, b), invariant to the order of the candidates), summarised by m uniformly
    spaced quantiles (linear interpolation, levels ``0, 1/(m−1), …, 1``) and row-softmaxed;
    the result is multiplied by m so that its mean is 1 (a constant rescaling for the MLP's
    input scale):

    .. math::
        \hat S_i = m\cdot\mathrm{softmax}\big(\mathrm{quantiles}_m(\mathrm{sort}(S_{i\cdot}))\big),
        \quad (a, b) = \mathrm{softplus}(\mathrm{ResMLP}(\hat S_i)) + 10^{-5},
        \quad q \sim \mathrm{Beta}(a, b)

    ResMLP: ``Linear(m, h)`` → GELU → ``n_layers − 2`` blocks ``x + GELU(Linear(LayerNorm x))``
    → ``Linear(h, 2)``. The last layer starts with weights × 0.01 and bias
    ``softplus⁻¹(init_concentration)``, so a ≈ b and q starts centred on 0.5.

    REINFORCE (FALCON eq. for ∇φ): the batch sampler calls :meth:`record` once per batch it
    builds (the decisions that built it, possibly none); the trainer calls :meth:`reinforce`
    once per trained batch, in order, with ``Δ = L_MLM(θ_k) − L_MLM(θ_{k+1})``. The decisions
    of that batch get advantage ``Δ − b`` (b: moving-average baseline, starting at 0, updated
    ``b ← μ b + (1−μ) Δ`` after computing the advantage). Every ``update_interval`` calls, one
    Adam step on

    .. math::
        \mathcal L_\phi = -\operatorname{mean}_d\,(\Delta_d - b_d)\log\pi_\phi(q_d)
        \; - \; w_H\operatorname{mean}_d H(\mathrm{Beta}(a_d, b_d))

    over the decisions d accumulated since the last step. log π is recomputed at update time
    from the stored inputs (parameters do not change between updates, so it equals the
    sampling-time value). The FIFO of recorded batches keeps rewards aligned with decisions
    when a DataLoader prefetches batches.

    Args:
        config: :class:`FalconConfig`.

    Example:
        >>> policy = FalconPolicy(FalconConfig(m=8, hidden=16))
        >>> rows = torch.rand(5, 40)
        >>> q, log_prob = policy.sample(rows, np.random.default_rng(0))
        >>> q.shape, bool(((q > 0) & (q < 1)).all())
        (torch.Size([5]), True)
    """

    def __init__(self, config: FalconConfig | None = None) -> None:
        super().__init__()
        self.config = config or FalconConfig()
        cfg = self.config
        self.inp = nn.Linear(cfg.m, cfg.hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, cfg.hidden), nn.GELU())
            for _ in range(cfg.n_layers - 2)
        )
        self.out = nn.Linear(cfg.hidden, 2)
        with torch.no_grad():
            self.out.weight.mul_(0.01)
            target = cfg.init_concentration - MIN_CONCENTRATION
            self.out.bias.fill_(target + math.log(-math.expm1(-target)))  # softplus⁻¹
        self.optimizer = torch.optim.Adam(self.parameters(), lr=cfg.lr)
        self.baseline = 0.0
        self.steps = 0
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._buffer: list[tuple[Tensor, Tensor, float]] = []

    def summarize(self, rows: Tensor) -> Tensor:
        """(n, m) policy input of n similarity rows of length L ≥ 2 (see class docstring).

        With ``instance_level=False`` the n summaries are mean-pooled into one (1, m) input.
        """
        if rows.dim() != 2 or rows.shape[1] < 2 or not rows.is_floating_point():
            raise ValueError(
                f"rows must be a floating (n, L) similarity matrix with L ≥ 2 candidates, got "
                f"{rows.dtype} {tuple(rows.shape)}"
            )
        if not bool(torch.isfinite(rows).all()):
            raise ValueError("rows contain NaN or inf; check the embedding store")
        m, length = self.config.m, rows.shape[1]
        rows = rows.detach().to(device=self.out.weight.device, dtype=torch.float32)
        if rows.device.type == "cpu":  # numpy's row sort is ~10× faster than torch's on CPU
            ordered = torch.from_numpy(np.sort(rows.numpy(), axis=1))
        else:
            ordered = rows.sort(dim=1).values
        pos = torch.linspace(0, length - 1, m, device=rows.device)
        lo = pos.floor().long()
        hi = pos.ceil().long()
        frac = pos - lo
        quant = ordered[:, lo] * (1 - frac) + ordered[:, hi] * frac
        feats = m * torch.softmax(quant, dim=1)
        if not self.config.instance_level:
            feats = feats.mean(dim=0, keepdim=True)
        return feats

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Beta parameters (a, b), each (n,), of n summarised rows (n, m)."""
        param = self.out.weight
        h = F.gelu(self.inp(features.to(device=param.device, dtype=param.dtype)))
        for block in self.blocks:
            h = h + block(h)
        ab = F.softplus(self.out(h)) + MIN_CONCENTRATION
        return ab[:, 0], ab[:, 1]

    def distribution(self, features: Tensor) -> Beta:
        """π_φ(· | features) as a ``torch.distributions.Beta``."""
        a, b = self(features)
        return Beta(a, b)

    def sample_features(
        self, features: Tensor, generator: np.random.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample q ~ Beta(a, b) for summarised inputs; return ``(q, log π(q))``.

        Args:
            features: (n, m) output of :meth:`summarize`.
            generator: numpy Generator for a seeded, resumable draw (torch's Beta sampler takes
                no generator); None uses torch's global RNG.

        Returns:
            q (n,) detached in [1e-6, 1 − 1e-6], and log π(q) (n,) with graph to φ.
        """
        dist = self.distribution(features)
        if generator is None:
            q = dist.sample()
        else:
            a = dist.concentration1.detach().double().cpu().numpy()
            b = dist.concentration0.detach().double().cpu().numpy()
            q = torch.as_tensor(generator.beta(a, b), dtype=dist.concentration1.dtype)
        q = q.to(dist.concentration1.device).clamp(Q_CLAMP, 1.0 - Q_CLAMP)
        return q, dist.log_prob(q)

    def sample(
        self, rows: Tensor, generator: np.random.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(q, log π(q))`` for similarity rows: :meth:`summarize` then :meth:`sample_features`.

        Instance level: one q per row (n,); batch level: one q for all rows (1,).
        """
        return self.sample_features(self.summarize(rows), generator)

    def record(self, features: Tensor, q: Tensor) -> None:
        """Queue the decisions (inputs (d, m), quantiles (d,)) that built one batch; d may be 0."""
        if features.dim() != 2 or q.shape != (features.shape[0],):
            raise ValueError(
                f"record needs features (d, m) and q (d,), got {tuple(features.shape)} and "
                f"{tuple(q.shape)}"
            )
        self._pending.append((features.detach().float().cpu(), q.detach().float().cpu()))

    @property
    def pending_batches(self) -> int:
        """Batches recorded but not yet rewarded."""
        return len(self._pending)

    def reinforce(self, reward: float) -> dict[str, float] | None:
        """Reward the oldest recorded batch with Δ; every ``update_interval`` calls, update φ.

        Returns:
            None, or after an update ``{"scheduler_loss", "q_mean", "advantage_mean",
            "entropy"}`` for logging.
        """
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite (MLM loss before − after), got {reward}")
        if not self._pending:
            raise ValueError(
                "reinforce() called with no recorded batch; call it once per batch built by a "
                "HardnessBatchSampler in mode 'falcon' or 'batch_level'"
            )
        features, q = self._pending.pop(0)
        advantage = reward - self.baseline
        momentum = self.config.baseline_momentum
        self.baseline = momentum * self.baseline + (1.0 - momentum) * reward
        if q.numel() > 0:
            self._buffer.append((features, q, advantage))
        self.steps += 1
        if self.steps % self.config.update_interval != 0 or not self._buffer:
            return None
        return self._update()

    def _update(self) -> dict[str, float]:
        device = self.out.weight.device
        features = torch.cat([f for f, _, _ in self._buffer]).to(device)
        q = torch.cat([qq for _, qq, _ in self._buffer]).to(device)
        adv = torch.cat(
            [torch.full((qq.numel(),), a, dtype=torch.float32) for _, qq, a in self._buffer]
        ).to(device)
        self._buffer = []
        dist = self.distribution(features)
        entropy = dist.entropy().mean()
        loss = -(adv * dist.log_prob(q)).mean() - self.config.entropy_weight * entropy
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "scheduler_loss": float(loss.detach()),
            "q_mean": float(q.mean()),
            "advantage_mean": float(adv.mean()),
            "entropy": float(entropy.detach()),
        }

    def get_extra_state(self) -> dict:
        """Optimiser, baseline, step count and queued decisions (saved in ``state_dict()``)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline,
            "steps": self.steps,
            "pending": list(self._pending),
            "buffer": list(self._buffer),
        }

    def set_extra_state(self, state: dict) -> None:
        """Restore what :meth:`get_extra_state` saved."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = float(state["baseline"])
        self.steps = int(state["steps"])
        self._pending = [tuple(p) for p in state["pending"]]
        self._buffer = [tuple(b) for b in state["buffer"]]
