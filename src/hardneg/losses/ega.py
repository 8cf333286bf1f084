r"""EGA: Explicit Gradient Amplifier for hard negatives.

Reference: Li, Liu & Xue 2025, "Improve Multi-Modal Embedding Learning via Explicit Hard
Negative Gradient Amplifying", arXiv:2506.02020, §3 (gradient analysis of InfoNCE and the
amplifier): the loss *value* is InfoNCE, and in the backward pass the probabilities of the
negatives are reweighted by the detached relative similarity hardness
``h_in = min(1, exp((s_in − s⁺_i)/τ_h))`` so that the logit gradient becomes ``P̄ − I``.
The authors' public repository (github.com/QQ-MM/QQMM-embed) holds no amplifier code (its
contrastive loss is plain cross-entropy), so this follows the paper's description; the
renormalised ``P̄`` is the reading under which ``P̄ − I`` is a prediction-minus-target signal.
"""

from __future__ import annotations

from hardneg.losses.checks import check_bool, check_number
from hardneg.losses.infonce import InfoNCELoss


class EGALoss(InfoNCELoss):
    r"""InfoNCE value; in the backward pass hard negatives are reweighted by ``1 + α·h``.

    Default (``renormalize=True``): the gradient is that of the weighted cross-entropy

    .. math::
        \tilde\ell_i = -\log\frac{e^{z^+_i}}{e^{z^+_i} + \sum_{n} \mathrm{sg}(1 + \alpha h_{in})
        \,e^{z_{in}}},\qquad h_{in} = \min\!\Big(1,\; e^{(s_{in} - s^+_i)/\tau_h}\Big)
        =\min\!\Big(1, \frac{p_{in}}{p^+_i}\Big)\ \text{when } \tau_h=\tau,

    i.e. ``∂ℓ/∂z = P̄ − target`` with ``P̄_in = p_in (1+α h_in)/c_i`` and
    ``c_i = 1 + α Σ_n p_in h_in`` (``p`` the InfoNCE softmax of row ``i``, ``z⁺`` the log-mean
    of its positives). Each row of ``∂ℓ/∂z`` sums to 0, so a collapsed batch gets no gradient.
    Relative to InfoNCE a negative's gradient is multiplied by ``(1+α h_in)/c_i``: its weight
    ``1+α h_in`` is between 1× (easy, ``h→0``) and ``(1+α)×`` (at or above the positive,
    ``h=1``), divided by the row's renormalisation ``c_i ∈ [1, 1+α]``. The hardest negative
    of a row always gains (> 1×), easy ones can get less than InfoNCE's gradient, and the
    positive's pull grows from ``1 − p⁺`` to ``1 − p⁺/c_i``.

    Args:
        alpha: amplification α ≥ 0 (default 1; α=0 is InfoNCE).
        hardness_temperature: τ_h; None (default) uses the loss temperature τ. A fixed τ_h
            while τ is learned means the ratio τ/τ_h follows τ.
        temperature, learn_temperature, normalize, max_logit_scale, aggregate, chunk_size:
            as :class:`~hardneg.losses.InfoNCELoss` (EGA also runs blockwise).
        renormalize: True (default) renormalises ``P̄`` per row as above. False is the literal
            form ``∂ℓ/∂z_in = p_in (1+α h_in)`` (hard negatives get exactly ``(1+α)×``,
            positives unchanged), the gradient of ``ℓ(z + sg(α h)·(z − sg(z)))`` on negatives.
            Its rows sum to ``α Σ_n p_in h_in > 0``: a net push of every image away from every
            text, which is unstable from scratch (a near-collapsed model has all ``h ≈ 1``; it
            stays collapsed). Kept as an ablation (method ``ega_unnormalized``).

    Example:
        >>> import torch
        >>> from hardneg.losses import EGALoss
        >>> img = torch.randn(8, 32, requires_grad=True)
        >>> EGALoss(alpha=1.0)(img, torch.randn(8, 32)).backward()
    """

    def __init__(
        self,
        alpha: float = 1.0,
        hardness_temperature: float | None = None,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        normalize: bool = True,
        max_logit_scale: float = 100.0,
        aggregate: str = "mean",
        chunk_size: int | None = None,
        renormalize: bool = True,
    ) -> None:
        super().__init__(
            temperature, learn_temperature, normalize, max_logit_scale, aggregate, chunk_size
        )
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.renormalize = check_bool("renormalize", renormalize)
        self.hardness_temperature = (
            None
            if hardness_temperature is None
            else check_number("hardness_temperature", hardness_temperature, low=0, low_open=True)
        )

    @property
    def hardness_ratio(self) -> float:  # type: ignore[override]
        """``τ/τ_h``: logits ``z = s/τ`` times this give ``s/τ_h``."""
        if self.hardness_temperature is None:
            return 1.0
        return float(1.0 / (self.scale().item() * self.hardness_temperature))
