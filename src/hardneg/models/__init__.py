"""Encoders behind one interface, the dual encoder and the cross-modal transformer.

- outputs: :class:`TextOutput`, :class:`ImageOutput` (what every tower returns)
- text towers: :class:`MiniLMTextTower` (frozen all-MiniLM-L6-v2, ``hardneg.models.minilm``),
  :class:`HFTextTower` (``hardneg.models.hf_text``), base :class:`TextTower`
- image towers: :class:`ConvPatchEncoder`, :class:`TinyViT` (:class:`ImageTowerConfig`,
  :func:`build_image_tower`)
- :class:`ProjectionHead`, :class:`DualEncoder`
- :class:`CrossModalTransformer` (ITM + MLM heads, exact cross-attention maps;
  :class:`CrossModalConfig` in ``hardneg.models.crossmodal_config``, its layers in
  ``hardneg.models.crossmodal_layers``)
- adapters: :class:`HFCLIPAdapter` (``hardneg.models.hf_clip``, transformers CLIPModel) and
  :class:`OpenCLIPAdapter` (``hardneg.models.open_clip``; it imports open_clip only when a
  model is built, so open_clip stays optional)
- model specs (``hardneg train --model``): :class:`ModelSpec`, :func:`parse_model_spec`
  (``hardneg.models.specs``; cheap, builds nothing); :class:`CLIPTowers`,
  :func:`build_clip_towers`, :func:`write_back_logit_scale`, :func:`export_clip`
  (``hardneg.models.clip_towers``); :func:`freeze` (``hardneg.models.freeze``)
"""

from hardneg.models.clip_towers import (
    CLIPTowers,
    build_clip_towers,
    export_clip,
    write_back_logit_scale,
)
from hardneg.models.crossmodal import CrossModalOutput, CrossModalTransformer, last_layer_attention
from hardneg.models.crossmodal_config import CrossModalConfig
from hardneg.models.dual import DualEncoder, DualEncoderOutput
from hardneg.models.freeze import FreezableModule, freeze
from hardneg.models.heads import ProjectionHead
from hardneg.models.hf_clip import HFCLIPAdapter, load_hf_clip
from hardneg.models.hf_text import HFTextTower
from hardneg.models.image import (
    ConvPatchEncoder,
    ImageTowerConfig,
    PatchTokenEncoder,
    TinyViT,
    build_image_tower,
)
from hardneg.models.minilm import MiniLMTextTower
from hardneg.models.open_clip import OpenCLIPAdapter
from hardneg.models.outputs import ImageOutput, TextOutput
from hardneg.models.specs import ModelSpec, parse_model_spec
from hardneg.models.text import TextTower

__all__ = [
    "CLIPTowers",
    "ConvPatchEncoder",
    "CrossModalConfig",
    "CrossModalOutput",
    "CrossModalTransformer",
    "DualEncoder",
    "DualEncoderOutput",
    "FreezableModule",
    "HFCLIPAdapter",
    "HFTextTower",
    "ImageOutput",
    "ImageTowerConfig",
    "MiniLMTextTower",
    "ModelSpec",
    "OpenCLIPAdapter",
    "PatchTokenEncoder",
    "ProjectionHead",
    "TextOutput",
    "TextTower",
    "TinyViT",
    "build_clip_towers",
    "build_image_tower",
    "export_clip",
    "freeze",
    "last_layer_attention",
    "load_hf_clip",
    "parse_model_spec",
    "write_back_logit_scale",
]
