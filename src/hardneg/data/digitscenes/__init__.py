"""DigitScenes: a compositional image–caption benchmark built from real handwritten digit scans.

See the README's DigitScenes paragraph. Each scene holds 2–3 tinted digit scans in a row or
a column; annotations give digits, colours, boxes, the relation and a semantics id (equal iff
the canonical description is equal, so equal-id scenes are each other's false negatives), 5
paraphrased captions, one partial caption per object ("a red 3", true of every scene holding
that object: the benchmark's false negatives) and up to 5 hard negatives with their mismatch
word span and box.

Modules, one job each:

- :mod:`~hardneg.data.digitscenes.config` — :class:`DigitScenesConfig`, :data:`PRESETS`,
  :data:`SPLITS`.
- :mod:`~hardneg.data.digitscenes.semantics` — colours, relations and semantics ids.
- :mod:`~hardneg.data.digitscenes.captions` — paraphrased, partial and hard-negative captions.
- :mod:`~hardneg.data.digitscenes.render` — scan pools, layout and rasterisation.
- :mod:`~hardneg.data.digitscenes.generate` — a split generated in memory.
- :mod:`~hardneg.data.digitscenes.scenes` — :class:`SceneSplit` and :class:`DigitScenesDataset`.
- :mod:`~hardneg.data.digitscenes.store` — the on-disk cache (:func:`load_digitscenes`).
- :mod:`~hardneg.data.digitscenes.textbank` — frozen-text-tower features of every caption.
- :mod:`~hardneg.data.digitscenes.tensors` — a split as in-memory tensors of text-bank rows.
- :mod:`~hardneg.data.digitscenes.draws` — per-step draws of captions and hard negatives.
- :mod:`~hardneg.data.digitscenes.false_negatives` — false-negative rates and the builds
  that reach a configured rate.
- :mod:`~hardneg.data.digitscenes.contact_sheet` / :mod:`~hardneg.data.digitscenes.commands`
  — inspection and the ``hardneg data`` sub-commands.

The package re-exports the build, generation and cache API below; the tensor, text-bank and
draw modules (which need the model towers) are imported from their own modules.
"""

from hardneg.data.digitscenes.captions import PERTURBATIONS, HardNegative
from hardneg.data.digitscenes.config import PRESETS, SPLITS, DigitScenesConfig
from hardneg.data.digitscenes.generate import generate_digitscenes, generate_split
from hardneg.data.digitscenes.scenes import DigitScenesDataset, SceneSplit
from hardneg.data.digitscenes.store import (
    default_cache_dir,
    load_digitscenes,
    read_split,
    split_path,
)

__all__ = [
    "PERTURBATIONS",
    "PRESETS",
    "SPLITS",
    "DigitScenesConfig",
    "DigitScenesDataset",
    "HardNegative",
    "SceneSplit",
    "default_cache_dir",
    "generate_digitscenes",
    "generate_split",
    "load_digitscenes",
    "read_split",
    "split_path",
]
