"""Encoders behind one interface, the dual encoder and the cross-modal transformer.

- outputs: :class:`TextOutput`, :class:`ImageOutput` (what every tower returns)
- text towers: :class:`MiniLMTextTower` (frozen all-MiniLM-L6-v2), base :class:`TextTower`
- image towers: :class:`ConvPatchEncoder`, :class:`TinyViT` (:class:`ImageTowerConfig`,
  :func:`build_image_tower`)
- :class:`ProjectionHead`, :class:`DualEncoder`
- :class:`CrossModalTransformer` (ITM + MLM heads, exact cross-attention maps)
- adapters: :class:`HFCLIPAdapter` (``hardneg.models.hf_clip``, transformers CLIPModel) and
  :class:`OpenCLIPAdapter` (``hardneg.models.open_clip``; it imports open_clip only when a
  model is built, so open_clip stays optional)
"""

from hardneg.models.crossmodal import (
    CrossModalConfig,
    CrossModalOutput,
    CrossModalTransformer,
    last_layer_attention,
)
from hardneg.models.dual import DualEncoder, DualEncoderOutput
from hardneg.models.heads import ProjectionHead
from hardneg.models.hf_clip import HFCLIPAdapter
from hardneg.models.image import (
    ConvPatchEncoder,
    ImageTowerConfig,
    PatchTokenEncoder,
    TinyViT,
    build_image_tower,
)
from hardneg.models.open_clip import OpenCLIPAdapter
from hardneg.models.outputs import ImageOutput, TextOutput
from hardneg.models.text import HFTextTower, MiniLMTextTower, TextTower

__all__ = [
    "ConvPatchEncoder",
    "CrossModalConfig",
    "CrossModalOutput",
    "CrossModalTransformer",
    "DualEncoder",
    "DualEncoderOutput",
    "HFCLIPAdapter",
    "HFTextTower",
    "ImageOutput",
    "ImageTowerConfig",
    "MiniLMTextTower",
    "OpenCLIPAdapter",
    "PatchTokenEncoder",
    "ProjectionHead",
    "TextOutput",
    "TextTower",
    "TinyViT",
    "build_image_tower",
    "last_layer_attention",
]
