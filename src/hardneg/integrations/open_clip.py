r"""hardneg's losses behind open_clip's ``ClipLoss`` / ``SigLipLoss`` call signature.

open_clip's losses take the temperature from the caller,
``loss(image_features, text_features, logit_scale, logit_bias=None, output_dict=False)``, with
``logit_scale`` already exponentiated (``model.logit_scale.exp()``), while a hardneg loss owns
its temperature: it computes ``self.scale()`` from its ``logit_scale`` = ``log(1/τ)`` (and
SigLIP adds its own ``logit_bias``). :class:`OpenCLIPLossAdapter` keeps the hardneg loss
untouched and runs it with ``torch.func.functional_call``, substituting for the call only
``logit_scale ← log(caller's scale)`` (clamp disabled) and ``logit_bias ← caller's bias``:
the value and the gradients (into the model's ``logit_scale``/``logit_bias`` too) are those of
the hardneg loss at the caller's temperature, and the adapter has no trainable parameter of
its own — exactly like open_clip's losses.

Switching an open_clip training script takes one import::

    from hardneg.integrations.open_clip import HardnegClipLoss as ClipLoss   # EGA by default
    # or any loss: ClipLoss = functools.partial(HardnegClipLoss, "hcl", beta=1.0)

BACL's negative selection is a separate hook (:class:`BoundaryAwareMiner`): call it on the
features, pass its result as ``negatives=`` and the loss scores only the picked negatives::

    miner = BoundaryAwareMiner(BNSConfig(k=8)).to(device)
    out = model(images, texts)                               # open_clip, output_dict=True
    negatives = miner.mine_features(out["image_features"], out["text_features"],
                                     progress=epoch + i / steps_per_epoch, total=epochs)
    losses = loss(**out, negatives=negatives, output_dict=True)

Distributed training: hardneg reads rank and world size from ``torch.distributed`` and always
scores the local anchors against the features of all ranks gathered with gradient (open_clip's
``local_loss=True, gather_with_grad=True``); open_clip's constructor flags are accepted so that
``open_clip.create_loss(args)``-style code works unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from hardneg.losses import (
    LOSSES,
    ContrastiveLoss,
    DecoupledInfoNCELoss,
    InfoNCELoss,
    SigLIPLoss,
)
from hardneg.losses.distributed import world_info
from hardneg.miners import BoundaryAwareMiner, MinedLoss, MinedNegatives

__all__ = [
    "LOSSES",
    "BoundaryAwareMiner",
    "HardnegClipLoss",
    "HardnegSigLipLoss",
    "MinedNegatives",
    "OpenCLIPLossAdapter",
]

#: Losses whose value is unchanged by a shared logit bias (a softmax shift): they accept and
#: drop one. The others (HCL/DCL floors, Soft-InfoNCE weights) are defined without a bias.
SHIFT_INVARIANT: tuple[type[ContrastiveLoss], ...] = (InfoNCELoss, DecoupledInfoNCELoss)

#: Arguments of a hardneg loss that the open_clip model owns instead.
CALLER_OWNED = ("temperature", "learn_temperature", "max_logit_scale", "bias")


def resolve_loss(loss: str | type[ContrastiveLoss]) -> type[ContrastiveLoss]:
    """The loss class of a name in :data:`LOSSES` (or the class itself)."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}")
        return LOSSES[loss]
    if isinstance(loss, type) and issubclass(loss, ContrastiveLoss):
        return loss
    raise ValueError(
        f"loss must be a name in {sorted(LOSSES)} or a ContrastiveLoss subclass, got {loss!r}"
    )


class OpenCLIPLossAdapter(torch.nn.Module):
    r"""Any hardneg loss with open_clip's loss call signature and the caller's temperature.

    ``forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False)``
    returns the hardneg loss of the features with logits ``logit_scale · cos`` (``+ logit_bias``
    for SigLIP), i.e. the loss's ``τ = 1/logit_scale``; ``output_dict=True`` returns
    ``{"contrastive_loss": loss}`` as open_clip does.

    Args:
        loss: a name in :data:`LOSSES` (``"infonce"``, ``"ega"``, ``"hcl"``, ...) or a
            :class:`~hardneg.losses.ContrastiveLoss` subclass.
        local_loss, gather_with_grad, cache_labels, dist_impl: open_clip's distributed
            switches, accepted (and unused) so that open_clip's constructor calls work;
            hardneg always uses its exact scheme (local anchors, candidates gathered with
            gradient).
        rank, world_size: checked against ``torch.distributed`` at the first call.
        use_horovod: must be False (hardneg gathers with ``torch.distributed``).
        **loss_kwargs: hyper-parameters of the loss (``alpha=`` for EGA, ``beta=``/``tau_plus=``
            for HCL, ...). Not its temperature or bias: the caller owns them. ``normalize``
            defaults to False, as open_clip's losses (its models return unit features); set
            it True for raw features.

    Example:
        >>> import torch
        >>> loss_fn = OpenCLIPLossAdapter("ega", alpha=1.0)
        >>> img = torch.nn.functional.normalize(torch.randn(8, 32), dim=-1).requires_grad_()
        >>> txt = torch.nn.functional.normalize(torch.randn(8, 32), dim=-1)
        >>> out = loss_fn(img, txt, torch.tensor(14.3), output_dict=True)
        >>> sorted(out)
        ['contrastive_loss']
    """

    def __init__(
        self,
        loss: str | type[ContrastiveLoss],
        *,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        dist_impl: str | None = None,
        **loss_kwargs: Any,
    ) -> None:
        super().__init__()
        loss_cls = resolve_loss(loss)
        owned = sorted(set(loss_kwargs) & set(CALLER_OWNED))
        if owned:
            raise ValueError(
                f"{owned} are set by the caller in open_clip: forward() uses the logit_scale "
                "(and logit_bias) it is given; remove them from the adapter's arguments"
            )
        if use_horovod:
            raise ValueError(
                "use_horovod=True is not supported: hardneg gathers features with "
                "torch.distributed; launch with torchrun"
            )
        # open_clip's losses take the features as they come (its models return unit vectors)
        loss_kwargs.setdefault("normalize", False)
        # caller's scale used verbatim: no clamp (open_clip clamps its own logit_scale)
        inner = loss_cls(learn_temperature=False, max_logit_scale=math.inf, **loss_kwargs)
        self.criterion = MinedLoss(inner).requires_grad_(False)
        self.rank, self.world_size = rank, world_size

    @property
    def loss(self) -> ContrastiveLoss:
        """The wrapped hardneg loss."""
        return self.criterion.loss

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float,
        logit_bias: Tensor | float | None = None,
        output_dict: bool = False,
        *,
        positive_ids: Tensor | None = None,
        extra_text_features: Tensor | None = None,
        negatives: MinedNegatives | None = None,
    ) -> Tensor | dict[str, Tensor]:
        """Loss of a batch at the caller's temperature.

        Args:
            image_features, text_features: (B, d) features (open_clip's are unit vectors).
            logit_scale: the exponentiated scale ``1/τ`` (``model.logit_scale.exp()``).
            logit_bias: the model's logit bias; required by SigLIP, dropped by the
                shift-invariant softmax losses (InfoNCE, NegCLIP, EGA, decoupled), refused by
                HCL/DCL/Soft-InfoNCE (defined without a bias).
            output_dict: return ``{"contrastive_loss": loss}``.
            positive_ids: optional (B,) semantic ids (pairs sharing one are not negatives).
            extra_text_features: optional (B, K, d) or (M, d) hard-negative captions (NegCLIP).
            negatives: a :class:`MinedNegatives` of the same features (BNS hook).
        """
        self._check_world()
        replaced = {"loss.logit_scale": self._log_scale(logit_scale, image_features.device)}
        bias = self._bias(logit_bias, image_features.device)
        if bias is not None:
            replaced["loss.logit_bias"] = bias
        value = functional_call(
            self.criterion,
            replaced,
            (image_features, text_features),
            {
                "positive_ids": positive_ids,
                "extra_text_emb": extra_text_features,
                "negatives": negatives,
            },
        )
        return {"contrastive_loss": value} if output_dict else value

    def _log_scale(self, logit_scale: Tensor | float, device: torch.device) -> Tensor:
        scale = torch.as_tensor(logit_scale, device=device)
        if scale.numel() != 1 or not scale.is_floating_point():
            raise ValueError(
                f"logit_scale must be one float (the exponentiated scale 1/τ, "
                f"model.logit_scale.exp()), got {scale.dtype} of shape {tuple(scale.shape)}"
            )
        if not bool(torch.isfinite(scale).all() & (scale > 0).all()):
            raise ValueError(
                f"logit_scale must be finite and > 0 (pass model.logit_scale.exp(), not the "
                f"log), got {float(scale)}"
            )
        return scale.reshape(()).log()

    def _bias(self, logit_bias: Tensor | float | None, device: torch.device) -> Tensor | None:
        loss = self.criterion.loss
        if isinstance(loss, SigLIPLoss):
            if logit_bias is None:
                raise ValueError(
                    "SigLIP needs the model's logit_bias; create the open_clip model with "
                    "init_logit_bias (SigLIP models have one) and pass it"
                )
            bias = torch.as_tensor(logit_bias, device=device)
            if bias.numel() != 1:
                raise ValueError(f"logit_bias must be one number, got shape {tuple(bias.shape)}")
            return bias.reshape(())
        if logit_bias is not None and not isinstance(loss, SHIFT_INVARIANT):
            raise ValueError(
                f"{type(loss).__name__} is defined without a logit bias and its value would "
                "depend on one; drop logit_bias (create the model without init_logit_bias) or "
                "use a shift-invariant loss (infonce, ega, negclip, decoupled)"
            )
        return None

    def _check_world(self) -> None:
        rank, world = world_info()
        if (self.rank, self.world_size) != (rank, world):
            raise ValueError(
                f"the loss was built for rank {self.rank} of {self.world_size} but "
                f"torch.distributed says rank {rank} of {world}; hardneg reads the world from "
                "torch.distributed: build the loss after init_process_group (or omit rank/world)"
            )


class HardnegClipLoss(OpenCLIPLossAdapter):
    """Drop-in for open_clip's ``ClipLoss``: a hardneg loss, EGA by default.

    EGA keeps ClipLoss's value and amplifies hard-negative gradients; ``loss="infonce"``
    reproduces ClipLoss (parity-tested to 1e-6, values and gradients).

    Args:
        loss: name in :data:`LOSSES` or a loss class (default ``"ega"``).
        **kwargs: see :class:`OpenCLIPLossAdapter` (open_clip's constructor flags, loss
            hyper-parameters).

    Example:
        >>> from hardneg.integrations.open_clip import HardnegClipLoss as ClipLoss
        >>> loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True)
    """

    def __init__(self, loss: str | type[ContrastiveLoss] = "ega", **kwargs: Any) -> None:
        super().__init__(loss, **kwargs)


class HardnegSigLipLoss(OpenCLIPLossAdapter):
    """Drop-in for open_clip's ``SigLipLoss`` (hardneg's SigLIP at the model's scale and bias).

    Args:
        loss: name in :data:`LOSSES` or a loss class (default ``"siglip"``).
        **kwargs: see :class:`OpenCLIPLossAdapter`.

    Example:
        >>> import torch
        >>> from hardneg.integrations.open_clip import HardnegSigLipLoss as SigLipLoss
        >>> loss_fn = SigLipLoss(rank=0, world_size=1)
        >>> scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
        >>> loss_fn(torch.randn(4, 8), torch.randn(4, 8), scale, bias).dim()
        0
    """

    def __init__(self, loss: str | type[ContrastiveLoss] = "siglip", **kwargs: Any) -> None:
        super().__init__(loss, **kwargs)
