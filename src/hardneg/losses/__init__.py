"""Contrastive objectives with one interface: ``loss(image_emb, text_emb, positive_ids=None,
extra_text_emb=None) -> scalar``.

- :class:`InfoNCELoss` (CLIP), :class:`NegCLIPLoss` (extra hard-negative captions)
- :class:`SigLIPLoss` (pairwise sigmoid)
- :class:`HCLLoss`, :class:`DCLLoss`, :class:`DecoupledInfoNCELoss`
- :class:`SoftInfoNCELoss`
- :class:`EGALoss` (explicit gradient amplifier for hard negatives)
- :class:`HardnessWeightedInfoNCELoss` (LLaVE's detached similarity bonus on negative logits)

All are DDP-aware (local anchors vs. features gathered with gradient from every rank). Bad
arguments and inputs raise a one-line ``ValueError`` naming the argument. Double backward
(``create_graph=True``, e.g. a gradient penalty) works on every plain path; EGA's amplified
gradient (``alpha > 0``) and the blockwise ``chunk_size`` path raise a ``RuntimeError`` for it.
"""

from hardneg.losses.base import ContrastiveLoss, SymmetricRowLoss
from hardneg.losses.cla import ContrastiveLocalAttentionLoss, contrastive_local_attention_loss
from hardneg.losses.debiased import DCLLoss, DecoupledInfoNCELoss, HCLLoss
from hardneg.losses.ega import EGALoss
from hardneg.losses.hardness import HardnessWeightedInfoNCELoss
from hardneg.losses.infonce import InfoNCELoss, NegCLIPLoss
from hardneg.losses.siglip import SigLIPLoss
from hardneg.losses.soft_infonce import SoftInfoNCELoss

#: Every loss by the name configs, the CLI and the integrations use.
LOSSES: dict[str, type[ContrastiveLoss]] = {
    "infonce": InfoNCELoss,
    "negclip": NegCLIPLoss,
    "siglip": SigLIPLoss,
    "hcl": HCLLoss,
    "dcl": DCLLoss,
    "decoupled": DecoupledInfoNCELoss,
    "soft_infonce": SoftInfoNCELoss,
    "ega": EGALoss,
    "mnrl_hardness": HardnessWeightedInfoNCELoss,
}

__all__ = [
    "LOSSES",
    "ContrastiveLocalAttentionLoss",
    "ContrastiveLoss",
    "DCLLoss",
    "DecoupledInfoNCELoss",
    "EGALoss",
    "HCLLoss",
    "HardnessWeightedInfoNCELoss",
    "InfoNCELoss",
    "NegCLIPLoss",
    "SigLIPLoss",
    "SoftInfoNCELoss",
    "SymmetricRowLoss",
    "contrastive_local_attention_loss",
]
