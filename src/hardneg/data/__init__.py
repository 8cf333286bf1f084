"""hardneg.data: DigitScenes, Karpathy-JSON datasets and real-data sources.

- :mod:`hardneg.data.digitscenes` — the DigitScenes benchmark: generation, rendering, captions,
  cache, Dataset, split tensors, text bank, false negatives and the ``hardneg data`` commands.
- :mod:`hardneg.data.karpathy` — COCO / Flickr30k Karpathy-split JSON loader.
- :mod:`hardneg.data.specs` — ``--data SPEC`` parsing (:func:`parse_data_spec`).
- :mod:`hardneg.data.sources` — data-config checks and :func:`open_source`
  (real data: :mod:`~hardneg.data.csv_source`, :mod:`~hardneg.data.hf_source`).
- :mod:`hardneg.data.perturb` — rule-based NegCLIP-style hard negatives for real captions.
- :mod:`hardneg.data.compositional` — ARO / SugarCrepe-style compositional probe files.
- :mod:`hardneg.data.dataset` — the shared ``ImageCaptionDataset`` interface and helpers.
- :mod:`hardneg.data.fingerprint` — content and module fingerprints (the cache keys).
"""

from hardneg.data.compositional import CompositionalProbes, load_compositional
from hardneg.data.csv_source import CSVImageCaptions
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
from hardneg.data.digitscenes.semantics import (
    COLOURS,
    RELATIONS,
    describe_semantic_id,
    semantic_id,
)
from hardneg.data.fingerprint import content_fingerprint, module_fingerprint
from hardneg.data.hf_source import HFImageCaptions
from hardneg.data.karpathy import KarpathyDataset
from hardneg.data.perturb import Perturbation, perturbations
from hardneg.data.sources import check_data_config, open_source
from hardneg.data.specs import DataSpec, default_eval_spec, parse_data_spec

__all__ = [
    "COLOURS",
    "PERTURBATIONS",
    "PRESETS",
    "RELATIONS",
    "SPLITS",
    "CSVImageCaptions",
    "CompositionalProbes",
    "DataSpec",
    "DigitScenesConfig",
    "DigitScenesDataset",
    "FlatCaptions",
    "HFImageCaptions",
    "HardNegative",
    "ImageCaptionDataset",
    "KarpathyDataset",
    "Perturbation",
    "SceneSplit",
    "check_data_config",
    "collate_image_captions",
    "content_fingerprint",
    "default_eval_spec",
    "describe_semantic_id",
    "flatten_captions",
    "generate_digitscenes",
    "generate_split",
    "load_compositional",
    "load_digitscenes",
    "module_fingerprint",
    "open_source",
    "parse_data_spec",
    "perturbations",
    "semantic_id",
]
