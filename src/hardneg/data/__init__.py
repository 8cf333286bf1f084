"""hardneg.data: DigitScenes, Karpathy-JSON datasets, the feature cache and data commands.

- :mod:`hardneg.data.digitscenes` — the DigitScenes benchmark (config, splits, cache, Dataset).
- :mod:`hardneg.data.scene_captions` — semantics ids, paraphrases and hard-negative captions.
- :mod:`hardneg.data.scene_render` — scan pools, layout and rasterisation.
- :mod:`hardneg.data.karpathy` — COCO / Flickr30k Karpathy-split JSON loader.
- :mod:`hardneg.data.dataset` — the shared ``ImageCaptionDataset`` interface and helpers.
- :mod:`hardneg.data.cache` — ``FeatureCache`` for frozen towers.
- :mod:`hardneg.data.contact_sheet` / :mod:`hardneg.data.commands` — inspection and CLI hooks.
"""

from hardneg.data.cache import FeatureCache, content_fingerprint, module_fingerprint
from hardneg.data.dataset import (
    FlatCaptions,
    ImageCaptionDataset,
    collate_image_captions,
    flatten_captions,
)
from hardneg.data.digitscenes import (
    PERTURBATIONS,
    PRESETS,
    SPLITS,
    DigitScenesConfig,
    DigitScenesDataset,
    HardNegative,
    SceneSplit,
    generate_digitscenes,
    generate_split,
    load_digitscenes,
)
from hardneg.data.karpathy import KarpathyDataset
from hardneg.data.scene_captions import COLOURS, RELATIONS, describe_semantic_id, semantic_id

__all__ = [
    "COLOURS",
    "PERTURBATIONS",
    "PRESETS",
    "RELATIONS",
    "SPLITS",
    "DigitScenesConfig",
    "DigitScenesDataset",
    "FeatureCache",
    "FlatCaptions",
    "HardNegative",
    "ImageCaptionDataset",
    "KarpathyDataset",
    "SceneSplit",
    "collate_image_captions",
    "content_fingerprint",
    "describe_semantic_id",
    "flatten_captions",
    "generate_digitscenes",
    "generate_split",
    "load_digitscenes",
    "module_fingerprint",
    "semantic_id",
]
