"""The bench's budgets: :class:`BenchPreset`, the :data:`PRESETS` and the resolved config of
one (method, seed) run (:func:`run_config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardneg.bench.arms import parse_arm
from hardneg.train.config import merge
from hardneg.train.methods import method_overrides
from hardneg.train.validate import resolve_config

__all__ = ["ALL_METHODS", "CORE_METHODS", "PRESETS", "BenchPreset", "check_overrides", "run_config"]

CORE_METHODS = [
    "infonce", "siglip", "hcl", "dcl", "soft_infonce", "negclip", "ega",
    "frozen", "bacl", "bacl_uniform", "bacl_dual", "albef", "grit", "falcon", "falcon_ega",
]  # fmt: skip
ALL_METHODS = [
    *CORE_METHODS,
    "decoupled", "bacl_bns_only", "bacl_cla_only", "bacl_schedule", "bacl_aggressive",
    "bacl_shallow", "bns_dual", "cla_dual", "bacl_dual_uniform", "bacl_dual_weighted",
    "bacl_dual_ega", "cla_dual_detached", "bacl_dual_cla_detached",
    "falcon_fixed_q", "falcon_batch", "grit_dual", "fixed_q_dual", "progressive", "falcon_dual",
    "falcon_batch_dual",
    "mnrl_hardness",
]  # fmt: skip


@dataclass
class BenchPreset:
    """A benchmark budget: data size, steps, batch, seeds and the methods it runs (arms:
    a method, or a method at one value of a swept data setting, e.g. ``grit@fn5``; see
    :mod:`hardneg.bench.arms`)."""

    data_preset: str
    steps: int
    batch_size: int
    seeds: int
    methods: list[str] = field(default_factory=lambda: list(CORE_METHODS))
    overrides: dict[str, Any] = field(default_factory=dict)


# The compositional regime (docs/results/compositional_diagnosis.md): one shared InfoNCE
# pre-training stage per data build (cached) teaches the objects (negatives that name a wrong
# digit, affine jitter, and an object-grounded loss so that the tower's tokens say which digit
# and colour sit where); every method then fine-tunes the attention heads (word order and
# binding are representable) on the frozen tower's cached features. Composition is left to the
# methods. Cross-modal terms only where a method is made of them (BACL's CLA; ALBEF, GRIT-VLP
# and FALCON's ITM + MLM over the heads' states), on a 1-layer cross-modal transformer whose
# MLM head scores the corpus's word pieces (CPU budget; heads and cross-modal width 64, see the
# diagnosis, §8). False negatives: 1 % of the ordered pairs of random batches, from 4 scene
# configurations repeated in ≈ 100 train scenes each (every caption stays a full one;
# partial-caption positives stop swap learning, see the diagnosis, §6).
_COMPOSITIONAL = {
    "model": {
        "dropout": 0.0,
        "head": "attention",
        "head_width": 64,
        "freeze_image_tower": True,
        "crossmodal_layers": 1,
        "crossmodal_dim": 64,
        "mlm_vocab": "corpus",
        "mlm_variants": 2,
    },
    "pretrain": {
        "steps": 1200,
        "batch_size": 128,
        "negative_kinds": ["replace_digit"],
        "augment": True,
        "object_loss_weight": 1.0,
        # the fusion group's ALBEF stage: a cross-modal transformer trained from scratch in one
        # run's 600 steps does not yet re-rank better than ITC (docs/benchmark.md)
        "fusion_steps": 1800,
    },
    "optim": {"lr": 3e-3, "warmup_steps": 10},
    "miner": {"k": 8},
    "data": {"false_negative_source": "repeats", "false_negative_percent": 1.0},
}
# 2 % of the ordered in-batch pairs of random batches are false negatives (captions that name
# one object of a scene, true of every scene holding it)
_FALSE_NEGATIVES = {"data": {"false_negative_percent": 2.0}}
_COMPOSITIONAL_RUN = {"checkpoint_every": 100, "log_every": 10, **_COMPOSITIONAL}
PRESETS = {
    # the README's main job (`make bench`, ≤ 15 min on 2 CPU cores): the headline method of
    # each paper and the baselines its claims compare with, 3 seeds
    "compositional": BenchPreset(
        "small", steps=600, batch_size=64, seeds=3,
        methods=["infonce", "negclip", "ega", "frozen", "bacl_uniform", "bacl", "albef", "grit",
                 "falcon"],
        overrides=_COMPOSITIONAL_RUN,
    ),
    # every claim of the claims table (BACL's parts and curricula, FALCON's batch-level
    # variant and search-space sizes, MNRL)
    "compositional-full": BenchPreset(
        "small", steps=600, batch_size=64, seeds=3,
        methods=["infonce", "negclip", "ega", "mnrl_hardness", "frozen", "bacl_uniform",
                 "bacl_bns_only", "bacl_cla_only", "bacl_schedule", "bacl", "bacl_aggressive",
                 "bacl_shallow", "bacl_dual", "bacl_dual_uniform", "bacl_dual_weighted",
                 "albef", "grit", "falcon", "falcon_batch",
                 "falcon_fixed_q", "falcon_space2", "falcon_space32", "grit_dual",
                 "falcon_dual",
                 # FALCON's central figure: the fusion group against the FN rate (1 %: above)
                 "albef@fn0", "grit@fn0", "falcon@fn0", "albef@fn5", "grit@fn5", "falcon@fn5"],
        overrides=_COMPOSITIONAL_RUN,
    ),
    # towers from scratch, 8 methods, one seed: the smoke run (`make bench-quick`)
    "quick": BenchPreset(
        "small", steps=100, batch_size=64, seeds=1,
        methods=["infonce", "siglip", "hcl", "negclip", "ega", "bacl_dual", "albef", "grit",
                 "falcon"],
        overrides={"checkpoint_every": 40, "log_every": 5, "optim": {"lr": 2e-3},
                   "miner": {"k": 8}, "model": {"dropout": 0.0}, **_FALSE_NEGATIVES},
    ),
    "full": BenchPreset(
        "quick", steps=600, batch_size=128, seeds=3, methods=list(ALL_METHODS),
        overrides={"checkpoint_every": 100, "log_every": 10, "optim": {"lr": 2e-3},
                   "model": {"dropout": 0.0}, **_FALSE_NEGATIVES},
    ),
}  # fmt: skip


_PER_RUN_KEYS = {"seed": "--seeds", "out_dir": "--out", "method": "--methods"}


def check_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` if none of them is a key the bench sets per run (else ValueError)."""
    for key, option in _PER_RUN_KEYS.items():
        if key in overrides:
            raise ValueError(
                f"--set {key}=… cannot be applied to a bench (it sets {key} per run); "
                f"use hardneg bench {option} instead"
            )
    return overrides


def run_config(
    preset: BenchPreset,
    method: str,
    seed: int,
    out: Path,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The resolved config of one (arm, seed) of a bench (validated): the preset's values,
    then the method's own (a method's defining term wins over a preset default, e.g. FALCON's
    MLM weight where the preset turns the cross-modal terms off), then the user's
    ``overrides`` (``--set``, which win over both), then the arm's swept setting
    (``grit@fn5``: ``data.false_negative_percent = 5``), the per-run seed and directory
    (``out/<arm>/seed<k>``).

    Raises:
        ValueError: a bad arm name (:func:`~hardneg.bench.arms.parse_arm`), an unknown method,
            an override of a per-run key, or an invalid config.
    """
    arm = parse_arm(method)
    preset_values = merge(
        preset.overrides,
        {
            "steps": preset.steps,
            "batch_size": preset.batch_size,
            "progress": False,
            "data": {"preset": preset.data_preset, "encode_all": True},
        },
    )
    values = merge(
        merge(
            merge(preset_values, method_overrides(arm.method)), check_overrides(overrides or {})
        ),
        merge(arm.overrides(), {"seed": seed, "out_dir": str(out / arm.name / f"seed{seed}")}),
    )
    return resolve_config(arm.method, values).to_dict()
