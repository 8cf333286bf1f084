r"""SigLIP: pairwise sigmoid loss.

Reference: Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", §3.1 and Alg. 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardneg.losses.base import ContrastiveLoss
from hardneg.losses.checks import check_number, check_parameter
from hardneg.losses.pairs import ContrastivePairs


class SigLIPLoss(ContrastiveLoss):
    r"""Pairwise sigmoid loss over all (image, caption) pairs.

    .. math::
        \mathcal L = -\frac1B \sum_{i}\sum_{j} \log \sigma\big(y_{ij}\,(t\, s_{ij} + b)\big),
        \qquad y_{ij} = \begin{cases}+1 & \text{ids}_i = \text{ids}_j\\-1 & \text{else}\end{cases}

    with learnable ``t = exp(t')`` (init 10) and bias ``b`` (init −10). Rows are the image
    anchors (each pair counted once), as open_clip's ``SigLipLoss``; under DDP the local images
    are scored against the captions of all ranks. NegCLIP extra captions enter with ``y = −1``.

    Args:
        temperature: initial ``1/t`` (default 0.1, i.e. ``t = 10``).
        bias: initial ``b`` (default −10).
        learn_temperature, normalize, max_logit_scale: see ``ContrastiveLoss``.

    Example:
        >>> import torch
        >>> from hardneg.losses import SigLIPLoss
        >>> SigLIPLoss()(torch.randn(8, 32), torch.randn(8, 32)).item() > 0
        True
    """

    def __init__(
        self,
        temperature: float = 0.1,
        bias: float = -10.0,
        learn_temperature: bool = True,
        normalize: bool = True,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__(temperature, learn_temperature, normalize, max_logit_scale)
        self.logit_bias = nn.Parameter(torch.tensor(check_number("bias", bias)))

    def check_state(self, device: torch.device) -> None:
        """Also refuse a diverged learned bias (NaN/inf ``logit_bias``)."""
        super().check_state(device)
        check_parameter("logit_bias", self.logit_bias, "bias b", device)

    def loss(self, pairs: ContrastivePairs) -> Tensor:
        logits = self.scale().to(pairs.image.dtype) * (
            pairs.image @ pairs.text_candidates.T
        ) + self.logit_bias.to(pairs.image.dtype)
        labels = 2.0 * pairs.image_to_text_positives().as_mask(logits.shape[1]).float() - 1.0
        terms = -F.logsigmoid(labels * logits)
        if pairs.i2t_keep is not None:  # only selected negatives take part
            terms = terms.masked_fill(~pairs.i2t_keep, 0.0)
        return terms.sum() / pairs.image.shape[0]
