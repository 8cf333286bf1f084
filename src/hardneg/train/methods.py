"""Methods as compositions: each name picks a loss, a miner, cross-modal terms and a batch sampler.

BACL = a re-ranker over a frozen dual encoder trained with BNS picks + CLA (its ``_dual``
variants: BNS + CLA on any contrastive loss); ALBEF = ITC + ITM + MLM on a
fusion model; GRIT-VLP and FALCON = ALBEF + their batch sampler; EGA = a loss. Combinations
need no new code, only a new entry here.
"""

from __future__ import annotations

from typing import Any

from hardneg.losses import LOSSES

__all__ = ["LOSSES", "METHODS", "method_overrides"]

# EGA's default (P̄ renormalised per row); ega_unnormalized is the literal form, an ablation
# that keeps the embeddings collapsed when training from scratch (EGALoss(renormalize=False))
_EGA = {"name": "ega"}
# hardneg's dual-encoder BACL (BNS on the dual encoder's ITC, CLA on a cross-modal head that
# shares no parameter with retrieval): CLA averaged over Ω, as these variants were measured
_CLA = {"crossmodal": {"cla_weight": 0.3, "cla_reduction": "mean"}}
_BACL_DUAL = {"miner": {"name": "bns"}, **_CLA}
# CLA with ΔA detached (the default differentiates it): the ablation behind that default
_CLA_DETACHED = {
    "crossmodal": {"cla_weight": 0.3, "cla_reduction": "mean", "cla_detach_delta": True}
}
# BACL in its paper's setting (arXiv:2511.08399 §3-4): the dual encoder frozen as the shared
# stage left it, a cross-modal transformer over its token states trained to score pairs by a
# listwise contrastive loss over each anchor's positive and the miner's k picks (+ λ·CLA, summed
# over Ω as the paper writes it); retrieval re-ranks the dual encoder's top-k by that score
_FROZEN = {
    "model": {"head": "attention", "crossmodal_input": "heads", "freeze_dual_encoder": True},
    "loss": {"weight": 0.0},
}


def _reranker(selection: str, cla: bool, curriculum: str = "default") -> dict[str, Any]:
    """BACL's re-ranker with the miner's ``selection`` and curriculum, with or without CLA."""
    terms: dict[str, Any] = {"rerank_weight": 1.0}
    if cla:
        terms.update(cla_weight=0.3, cla_reduction="sum")
    miner = {"name": "bns", "selection": selection, "curriculum": curriculum}
    return {**_FROZEN, "miner": miner, "crossmodal": terms}


# FALCON's policy reward is the decrease of the MLM loss, so its MLM term is part of the
# method (a preset that turns the cross-modal terms off keeps it for FALCON)
_FALCON_MLM = {"crossmodal": {"mlm_weight": 0.5}}
# ALBEF's objective (arXiv:2107.07651 §3: L_itc + L_itm + L_mlm, equal weights) on its fusion
# model: the cross-modal transformer reads the token states that ITC trains (the attention
# heads'), ITM's negatives are sampled from the ITC softmax
_ALBEF = {
    "model": {"head": "attention", "crossmodal_input": "heads"},
    "crossmodal": {"itm_weight": 1.0, "itm_negatives": "sampled", "mlm_weight": 1.0},
}

METHODS: dict[str, dict[str, Any]] = {
    "infonce": {},
    "siglip": {"loss": {"name": "siglip"}},
    "hcl": {"loss": {"name": "hcl"}},
    "dcl": {"loss": {"name": "dcl"}},
    "decoupled": {"loss": {"name": "decoupled"}},
    "soft_infonce": {"loss": {"name": "soft_infonce"}},
    "negclip": {"loss": {"name": "negclip"}, "data": {"hard_negative_captions": True}},
    "ega": {"loss": _EGA},
    "ega_unnormalized": {"loss": {"name": "ega", "kwargs": {"renormalize": False}}},
    # LLaVE's hardness weighting (arXiv:2503.04812): α = 9, the value sentence-transformers'
    # MultipleNegativesRankingLoss documents for LLaVE (its own default, 0, disables it)
    "mnrl_hardness": {"loss": {"name": "mnrl_hardness", "kwargs": {"hardness_strength": 9.0}}},
    # the BACL group: the frozen dual encoder (the baseline row, no training) and the
    # re-ranker trained on it with the paper's parts and their controls (same model and budget)
    "frozen": _FROZEN,
    "bacl": _reranker("boundary", cla=True),
    "bacl_uniform": _reranker("uniform", cla=False),
    "bacl_bns_only": _reranker("boundary", cla=False),
    "bacl_cla_only": _reranker("uniform", cla=True),
    "bacl_schedule": _reranker("schedule", cla=True),
    "bacl_aggressive": _reranker("boundary", cla=True, curriculum="aggressive"),
    "bacl_shallow": _reranker("boundary", cla=True, curriculum="shallow"),
    # hardneg's dual-encoder variants (see _BACL_DUAL)
    "bns_dual": {"miner": {"name": "bns"}},
    "cla_dual": _CLA,
    "bacl_dual": _BACL_DUAL,
    "bacl_dual_uniform": {**_BACL_DUAL, "miner": {"name": "bns", "selection": "uniform"}},
    "bacl_dual_weighted": {**_BACL_DUAL, "miner": {"name": "bns", "denominator": "weighted"}},
    "cla_dual_detached": _CLA_DETACHED,
    "bacl_dual_cla_detached": {"miner": {"name": "bns"}, **_CLA_DETACHED},
    "bacl_dual_ega": {**_BACL_DUAL, "loss": _EGA},
    # the fusion group: ALBEF and the methods that are ALBEF models (GRIT-VLP, FALCON), one
    # objective, only the batches differ
    "albef": _ALBEF,
    "grit": {**_ALBEF, "batch_sampler": {"mode": "grit"}},
    "falcon": {**_ALBEF, "batch_sampler": {"mode": "falcon"}},
    "falcon_batch": {**_ALBEF, "batch_sampler": {"mode": "batch_level"}},
    "falcon_fixed_q": {**_ALBEF, "batch_sampler": {"mode": "fixed", "q": 0.5}},
    "falcon_ega": {**_ALBEF, "batch_sampler": {"mode": "falcon"}, "loss": _EGA},
    # |M| ablation (FALCON §4.3): search spaces of 2·B and 32·B items (default 8·B)
    "falcon_space2": {**_ALBEF, "batch_sampler": {"mode": "falcon", "search_space_batches": 2}},
    "falcon_space32": {
        **_ALBEF,
        "batch_sampler": {"mode": "falcon", "search_space_batches": 32},
    },
    # hardneg's dual-encoder variants (ITC on the dual encoder; FALCON keeps its MLM reward
    # term on the cross-modal head over the towers' tokens)
    "grit_dual": {"batch_sampler": {"mode": "grit"}},
    "fixed_q_dual": {"batch_sampler": {"mode": "fixed", "q": 0.5}},
    "progressive": {"batch_sampler": {"mode": "progressive_hardening"}},
    "falcon_dual": {"batch_sampler": {"mode": "falcon"}, **_FALCON_MLM},
    "falcon_batch_dual": {"batch_sampler": {"mode": "batch_level"}, **_FALCON_MLM},
}


def method_overrides(name: str) -> dict[str, Any]:
    """The config sections a method sets (``ValueError`` lists the known methods)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]
