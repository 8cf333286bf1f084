r"""EGA: Explicit Gradient Amplifier for hard negatives.

Reference: Li, Liu & Xue 2025, "Improve Multi-Modal Embedding Learning via Explicit Hard
Negative Gradient Amplifying", arXiv:2506.02020, §3 (gradient analysis of InfoNCE and the
amplifier). No training code is public; this follows the paper's description as pinned down in
hardneg's METHODS.md: the loss *value* is InfoNCE, and in the backward pass each negative's
probability gradient ``P̃_in`` becomes ``P̃_in (1 + α h_in)`` with the detached relative
similarity hardness ``h_in = min(1, exp((s_in − s⁺_i)/τ_h))``.
"""

from __future__ import annotations

from hardneg.losses.checks import check_bool, check_number
from hardneg.losses.infonce import InfoNCELoss


class EGALoss(InfoNCELoss):
    r"""InfoNCE value with hard-negative gradients amplified by ``1 + α·h``.

    .. math::
        \frac{\partial \mathcal L}{\partial z_{in}} = \tilde P_{in}\,(1 + \alpha\,h_{in}),\qquad
        h_{in} = \min\!\Big(1,\; e^{(s_{in} - s^+_i)/\tau_h}\Big)=\min\!\Big(1,
        \frac{p_{in}}{p^+_i}\Big)\ \text{when } \tau_h=\tau

    Negatives at or above the positive's similarity get ``(1+α)×`` the InfoNCE gradient, easy
    negatives almost none extra; positive gradients are unchanged. Equivalent to the gradient
    of the surrogate ``ℓ(z + sg(α h)·(z − sg(z)))`` restricted to negatives.

    Args:
        alpha: amplification α ≥ 0 (default 1; α=0 is InfoNCE).
        hardness_temperature: τ_h; None (default) uses the loss temperature τ. A fixed τ_h
            while τ is learned means the ratio τ/τ_h follows τ.
        temperature, learn_temperature, normalize, max_logit_scale, aggregate, chunk_size:
            as :class:`~hardneg.losses.InfoNCELoss` (EGA also runs blockwise).
        renormalize: renormalise the amplified probabilities ``P̄`` over each row, so the
            gradient is ``P̄ − I`` with ``P̄`` a distribution (rows of the logit gradient sum to
            0 as in InfoNCE). Default False is the METHODS.md definition, whose rows sum to
            ``α Σ_n p_in h_in > 0``: a net push of every logit down, which from a randomly
            initialised (near-collapsed) model — all ``h ≈ 1`` — can keep the embeddings
            collapsed (seen on DigitScenes: R@1 ≈ chance). Use True when training from scratch.

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
        renormalize: bool = False,
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
