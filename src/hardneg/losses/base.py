"""Base module of the contrastive losses: temperature ownership, validation, DDP gathering.

Each loss is a thin :class:`torch.nn.Module` around pure functions of logits (see the
``*_rows`` functions of each module), following open_clip's split of "get logits" and
"score them". Unlike open_clip, the module owns its learnable temperature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardneg.losses.checks import (
    check_bool,
    check_extra,
    check_ids,
    check_logit_range,
    check_number,
    check_pair,
    check_parameter,
)
from hardneg.losses.distributed import gather_no_grad, gather_with_grad, world_info
from hardneg.losses.pairs import ContrastivePairs, Positives

_LOG_FP32_MAX = math.log(torch.finfo(torch.float32).max)


class ContrastiveLoss(nn.Module):
    """Common interface ``loss(image_emb, text_emb, positive_ids=None, extra_text_emb=None)``.

    Args:
        temperature: initial τ; the module learns ``log(1/τ)`` (open_clip's ``logit_scale``),
            clamped so that ``1/τ ≤ max_logit_scale``.
        learn_temperature: make the temperature a trainable parameter (else a buffer).
        normalize: L2-normalise the inputs (set False for pre-normalised features).
        max_logit_scale: upper clamp of ``1/τ`` (CLIP uses 100; ``math.inf`` disables it).

    Raises:
        ValueError: naming the argument, for a non-finite or non-positive ``temperature`` (or
            one whose ``1/τ`` overflows float32), a NaN or non-positive ``max_logit_scale``, or
            a non-bool flag. At each call, for bad inputs (see :meth:`forward`).
    """

    def __init__(
        self,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        normalize: bool = True,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        temperature = check_number("temperature", temperature, low=0.0, low_open=True)
        max_logit_scale = check_number(
            "max_logit_scale", max_logit_scale, low=0.0, low_open=True, allow_inf=True
        )
        if min(-math.log(temperature), math.log(max_logit_scale)) >= _LOG_FP32_MAX:
            raise ValueError(
                f"temperature={temperature} gives a logit scale 1/τ beyond the float32 range; "
                "use temperature > 1e-38 or a finite max_logit_scale"
            )
        init = torch.tensor(-math.log(temperature))
        if check_bool("learn_temperature", learn_temperature):
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)
        self.normalize = check_bool("normalize", normalize)
        self.max_log_scale = math.log(max_logit_scale)

    def scale(self) -> Tensor:
        """``1/τ`` as a scalar tensor (at least fp32), clamped to ``max_logit_scale``."""
        log_scale = self.logit_scale.to(torch.promote_types(self.logit_scale.dtype, torch.float32))
        return log_scale.clamp(max=self.max_log_scale).exp()

    def prepare(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        positive_ids: Tensor | None = None,
        extra_text_emb: Tensor | None = None,
    ) -> ContrastivePairs:
        """Validate, normalise (in fp32) and gather the inputs of one step."""
        check_pair(image_emb, text_emb)
        ids = check_ids(positive_ids, image_emb.shape[0], image_emb.device)
        extra = check_extra(extra_text_emb, text_emb)
        self.check_state(image_emb.device)
        # logits in at least fp32 (fp16/bf16 inputs are promoted; fp64 stays fp64)
        dtype = torch.promote_types(
            torch.promote_types(image_emb.dtype, text_emb.dtype), torch.float32
        )
        image, text = image_emb.to(dtype), text_emb.to(dtype)
        extra = None if extra is None else extra.to(dtype)
        if self.normalize:
            image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
            extra = None if extra is None else F.normalize(extra, dim=-1)
        else:
            given = {"image_emb": image, "text_emb": text}
            if extra is not None:
                given["extra_text_emb"] = extra
            check_logit_range(self.scale().to(dtype), given)
        rank, world = world_info()
        all_extra = None
        if extra is not None:
            all_extra = gather_with_grad(extra) if world > 1 else extra
        return ContrastivePairs(
            image=image,
            text=text,
            all_image=gather_with_grad(image),
            all_text=gather_with_grad(text),
            extra=all_extra,
            ids=ids,
            all_ids=None if ids is None else gather_no_grad(ids),
            offset=rank * image.shape[0],
            world=world,
        )

    def forward(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        positive_ids: Tensor | None = None,
        extra_text_emb: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss of a batch of ``B`` image-text pairs.

        Args:
            image_emb: (B, d) image embeddings (any float dtype; logits are computed in fp32).
            text_emb: (B, d) caption embeddings; row ``i`` is the caption of image ``i``.
            positive_ids: optional (B,) integer semantic ids: pairs with equal ids are
                positives of each other (several captions of one image, duplicates) and are
                never used as negatives. Without ids only the diagonal is positive.
            extra_text_emb: optional (B, K, d) or (M, d) hard-negative captions (NegCLIP); used
                as extra negatives of the image anchors only.

        Raises:
            ValueError: naming the argument, for non-tensor, non-2-D, non-floating, empty or
                non-finite embeddings, B < 2, inputs on different devices, ids of the wrong
                length or dtype, a diverged ``logit_scale``, or (``normalize=False``)
                embeddings so large that the logits would overflow.
        """
        return self.loss(self.prepare(image_emb, text_emb, positive_ids, extra_text_emb))

    def check_state(self, device: torch.device) -> None:
        """Refuse a diverged learned temperature (NaN/inf ``logit_scale``) before it gives NaN,
        and one on a device the inputs (on ``device``) cannot use (a CPU scalar can)."""
        check_parameter("logit_scale", self.logit_scale, "log(1/τ)", device)

    def loss(self, pairs: ContrastivePairs) -> Tensor:
        raise NotImplementedError


class SymmetricRowLoss(ContrastiveLoss):
    """A loss that scores each anchor row of the logits and averages image→text and text→image.

    Subclasses implement :meth:`row_loss`, a per-anchor loss of a (R, N) logit matrix.
    """

    def row_loss(self, logits: Tensor, positives: Positives, scale: Tensor) -> Tensor:
        raise NotImplementedError

    def loss(self, pairs: ContrastivePairs) -> Tensor:
        scale = self.scale().to(pairs.image.dtype)
        z_i2t, z_t2i = pairs.symmetric_logits(scale)
        i2t = self.row_loss(z_i2t, pairs.image_to_text_positives(), scale)
        t2i = self.row_loss(z_t2i, pairs.text_to_image_positives(), scale)
        return 0.5 * (i2t.mean() + t2i.mean())
