"""Evaluation metrics (README, "Results").

- :func:`chunked_topk`, :func:`retrieval_metrics`: exact chunked search; I→T / T→I R@K and mAP
  with multiple positives, never materialising an N×M matrix; :func:`retrieval_items`: the
  per-query outcomes under an exact relevance relation; :func:`rerank_items`: the same with
  each query's top-k re-ordered by a cross-modal pair score (ALBEF's ITM re-ranking).
- :func:`compositional_accuracy`: ARO/SugarCrepe-style true-vs-hard-negative caption accuracy
  per perturbation kind (:func:`compositional_trials`: per trial).
- :func:`attention_error_localisation` (AEL; :func:`attention_error_hits` per pair) with
  :func:`box_to_patch_mask` and :func:`word_span_to_token_mask` to build its masks.
- :func:`false_negative_rate`, :func:`false_negative_counts`, :func:`batch_false_negative_rate`:
  share of sampler-selected negatives that share the anchor's semantic id.
"""

from hardneg.eval.compositional import compositional_accuracy, compositional_trials
from hardneg.eval.false_negatives import (
    batch_false_negative_rate,
    false_negative_counts,
    false_negative_rate,
)
from hardneg.eval.localisation import (
    attention_error_hits,
    attention_error_localisation,
    box_to_patch_mask,
    word_span_to_token_mask,
)
from hardneg.eval.rerank import rerank_items
from hardneg.eval.retrieval import retrieval_items, retrieval_metrics
from hardneg.eval.topk import chunked_topk

__all__ = [
    "attention_error_hits",
    "attention_error_localisation",
    "batch_false_negative_rate",
    "box_to_patch_mask",
    "chunked_topk",
    "compositional_accuracy",
    "compositional_trials",
    "false_negative_counts",
    "false_negative_rate",
    "rerank_items",
    "retrieval_items",
    "retrieval_metrics",
    "word_span_to_token_mask",
]
